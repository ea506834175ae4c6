"""Configurations: frozen dataclasses, the paper's value in a comment on each field.

`ModelConfig` describes the transformer of SPEC 2 and `AdamConfig` the optimiser of SPEC 3.
`apply_overrides` takes ``key=value`` strings (dotted for nested configs) and rejects unknown keys
with the list of valid ones.
"""
import dataclasses
import json
import types
import typing
from dataclasses import dataclass

from .fieldcheck import check_fields

ATTENTION_KINDS = ("linear", "softmax")
LN_PLACEMENTS = ("public", "pre")
POS_ENCODINGS = ("none", "add", "concat")


@dataclass(frozen=True)
class ModelConfig:
    token_dim: int = 11  # D_in: width of an input token; d + 1 = 11 for linear regression
    num_layers: int = 1  # L: blocks (deep) or applications of one block (weight-tied)
    weight_tied: bool = False  # one block's parameters applied L times ("recurrent" in the paper)
    num_heads: int = 1  # attention heads per layer (nh in the shape legends)
    key_size: int = 11  # K (= value size); D for LSA, 20 for the copy layer, 40 for sine
    attention: str = "linear"  # "linear" (LSA, SPEC 2.1) or "softmax" (SPEC 2.2) in every layer
    first_layer_softmax: bool = False  # softmax in layer 0, `attention` after (copy experiment)
    causal: bool = False  # causal mask in softmax layers (token t sees keys <= t)
    include_query: bool = False  # the query (last) token is a key and value too; paper: False
    layernorm: bool = False  # LayerNorm (eps 1e-5, learned scale/offset) before attention / MLP
    ln_placement: str = "public"  # "public": tied -> every application, deep -> not before layer 0;
    #                               "pre": before every attention and MLP (standard pre-LN)
    mlp: bool = False  # H <- H + lambda * MLP(LN(H)) after attention; MLP is D -> 4D -> D, GELU
    mlp_widening: int = 4  # hidden width of the MLP as a multiple of the model width
    dampening: float = 1.0  # lambda in H <- H + lambda * Attn(LN(H)); 0.75 in figure 1
    y_update: bool = False  # only the last column of H receives the attention update
    token_clip: float = 0.0  # clip H to [-c, c] after attention; 0 = off; 10 when L > 3
    embed_dim: int = 0  # E: linear embedding without bias D_in -> E; 0 = none (40 for sine)
    input_mlp: bool = False  # residual MLP E -> 4E -> E after the embedding (sine model)
    pos_enc: str = "none"  # sinusoidal positional encoding: "none", "add" or "concat"
    pos_enc_size: int = 10  # P: width of a concatenated encoding (10 in the copy experiment)
    init_scale: float = 0.002  # fan-in truncated normal with scale init_scale / L (0.02 for copy)

    def __post_init__(self):
        check_model_config(self)

    @property
    def front_dim(self):
        """Width after the optional concatenated positional encoding."""
        return self.token_dim + (self.pos_enc_size if self.pos_enc == "concat" else 0)

    @property
    def model_dim(self):
        """D: width of the residual stream the blocks act on."""
        return self.embed_dim if self.embed_dim else self.front_dim

    def layer_attention(self, layer):
        return "softmax" if (layer == 0 and self.first_layer_softmax) else self.attention

    def layer_has_ln(self, layer):
        """LayerNorm before the attention of layer (application) `layer`, SPEC 2.3."""
        if not self.layernorm:
            return False
        if self.ln_placement == "pre" or self.weight_tied:
            return True
        return layer > 0  # public code, deep model: no LN before layer 0

    def param_layer(self, layer):
        """Index of the parameter set used by application `layer`."""
        return 0 if self.weight_tied else layer


def check_model_config(cfg):
    def bad(field, want):
        raise ValueError(f"ModelConfig.{field}: expected {want}, got {getattr(cfg, field)!r}")

    check_fields(cfg, "ModelConfig")  # strict types: the JSON string "false" is no bool

    for field in ("token_dim", "num_layers", "num_heads", "key_size", "mlp_widening"):
        v = getattr(cfg, field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            bad(field, "an integer >= 1")
    for field in ("embed_dim", "pos_enc_size"):
        v = getattr(cfg, field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            bad(field, "an integer >= 0")
    if cfg.attention not in ATTENTION_KINDS:
        bad("attention", f"one of {ATTENTION_KINDS}")
    if cfg.ln_placement not in LN_PLACEMENTS:
        bad("ln_placement", f"one of {LN_PLACEMENTS}")
    if cfg.pos_enc not in POS_ENCODINGS:
        bad("pos_enc", f"one of {POS_ENCODINGS}")
    if cfg.pos_enc == "concat" and cfg.pos_enc_size < 1:
        bad("pos_enc_size", "an integer >= 1 with pos_enc='concat'")
    if cfg.input_mlp and not cfg.embed_dim:
        bad("input_mlp", "False unless embed_dim > 0 (the input MLP acts on the embedding)")
    if not cfg.token_clip >= 0:
        bad("token_clip", "a number >= 0 (0 = off)")
    if not cfg.init_scale > 0:
        bad("init_scale", "a number > 0")
    if not (cfg.dampening == cfg.dampening and abs(cfg.dampening) != float("inf")):
        bad("dampening", "a finite number")


@dataclass(frozen=True)
class AdamConfig:
    lr: float = 1e-3  # 1e-3 if L <= 3 else 5e-4 (linear regression)
    b1: float = 0.9
    b2: float = 0.98  # 0.999 for the GD++ scalars
    eps: float = 1e-8
    grad_clip: float = 0.001  # global-norm clip c: 0.001 if L <= 2 else 10; 0 = off

    def __post_init__(self):
        check_fields(self, "adam", ADAM_RULES)


# b1 = 1 or b2 = 1 would make Adam's bias correction 1 - b^t zero
ADAM_RULES = {"lr": "> 0", "b1": "[0, 1)", "b2": "[0, 1)", "eps": "> 0", "grad_clip": ">= 0"}
# the most numbers a batch or the evaluation set may hold: 2^27 float64 = 1 GiB of tokens
MAX_TOKEN_NUMBERS = 2**27


@dataclass(frozen=True)
class TaskConfig:
    input_dim: int = 10  # d (paper: 10)
    num_context: int = 10  # N (paper: 10)
    input_range: float = 1.0  # r: x ~ U(-r/2, r/2), public code (paper text: U(-1, 1))
    weight_scale: float = 1.0  # s: w ~ N(0, s^2 I)
    distractors: int = 0  # context labels replaced by N(0, 1) draws in training and evaluation
    eval_tasks: int = 10000  # size of the fixed evaluation set (paper: 10 000)
    eval_seed: int = 2023  # seed of the evaluation set's Generator (independent of training seeds)

    def __post_init__(self):
        check_fields(self, "task", TASK_RULES)
        if self.distractors > self.num_context:
            raise ValueError(f"task.distractors: expected an integer in [0, num_context = "
                             f"{self.num_context}], got {self.distractors}")
        check_token_numbers("task.eval_tasks", self.eval_tasks, self)


TASK_RULES = {"input_dim": ">= 1", "num_context": ">= 1", "input_range": "> 0", "weight_scale": "> 0",
              "distractors": ">= 0", "eval_tasks": ">= 1", "eval_seed": ">= 0"}


def check_token_numbers(key, tasks, task):
    """`tasks` tasks of `task`'s shape hold at most MAX_TOKEN_NUMBERS numbers (else MemoryError
    far away): tasks * (N + 1) * (d + 1) <= 2^27."""
    per_task = (task.num_context + 1) * (task.input_dim + 1)
    if tasks * per_task > MAX_TOKEN_NUMBERS:
        raise ValueError(f"{key}: expected an integer <= {MAX_TOKEN_NUMBERS // per_task} (at most "
                         f"{MAX_TOKEN_NUMBERS} token numbers of {per_task} per task), got {tasks}")


# ----------------------------------------------------------------------------------------------
def _optional_scalar(declared):
    """X for a field declared Optional[X] (X | None) with X a bool, int, float or str; else None."""
    args = typing.get_args(declared)
    if typing.get_origin(declared) in (typing.Union, types.UnionType) and len(args) == 2 \
            and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        if inner in (bool, int, float, str):
            return inner
    return None


def _parse_value(text, current, key, declared=None):
    """`text` as the field's type: that of its current value, or X for a field declared Optional[X]
    (then "null" / "none" is None and anything else an X, whatever the current value)."""
    inner = _optional_scalar(declared)
    if inner is not None:
        if text.strip().lower() in ("null", "none"):
            return None
        return _parse_value(text, inner(), key)  # inner(): False, 0, 0.0 or "", typed like X
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean (true/false), got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {text!r}") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)) or current is None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{key}: expected a JSON value, got {text!r}") from None
        return tuple(value) if isinstance(value, list) else value
    raise ValueError(f"{key}: cannot override a field of type {type(current).__name__}")


def valid_keys(config, prefix=""):
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += valid_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def apply_overrides(config, overrides):
    """Return a copy of `config` with ``{"a.b": "value"}`` (or ``["a.b=value"]``) applied."""
    if not isinstance(overrides, dict):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r}: expected key=value")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v.strip()
        overrides = pairs
    return _apply_group(config, [(key, key.split("."), text) for key, text in overrides.items()])


def _apply_group(config, items):
    """Apply [(full key, remaining parts, text)] to `config` with ONE dataclasses.replace per
    section, so that a config's checks see all its overrides together, in any order."""
    names = [f.name for f in dataclasses.fields(config)]
    changes, nested = {}, {}
    for full_key, parts, text in items:
        done = full_key.split(".")[:len(full_key.split(".")) - len(parts)]  # the sections already entered
        prefix = "".join(p + "." for p in done)
        if parts[0] not in names:
            raise ValueError(f"unknown config key {full_key!r}; valid keys: {', '.join(valid_keys(config, prefix))}")
        current = getattr(config, parts[0])
        if dataclasses.is_dataclass(current):
            if len(parts) == 1:
                raise ValueError(f"config key {full_key!r} names a section; valid keys: "
                                 f"{', '.join(valid_keys(current, full_key + '.'))}")
            nested.setdefault(parts[0], []).append((full_key, parts[1:], text))
            continue
        if len(parts) > 1:
            raise ValueError(f"unknown config key {full_key!r}; valid keys: {', '.join(valid_keys(config, prefix))}")
        declared = typing.get_type_hints(type(config)).get(parts[0])
        changes[parts[0]] = text if not isinstance(text, str) else _parse_value(text, current, full_key, declared)
    for name, sub in nested.items():
        changes[name] = _apply_group(getattr(config, name), sub)
    return dataclasses.replace(config, **changes) if changes else config


def config_to_dict(config):
    return dataclasses.asdict(config)


def config_from_dict(cls, data, name="config"):
    """Build `cls` from a dict, rejecting unknown keys (nested dataclasses by their field type)."""
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        ftype = fields[k].type
        if isinstance(ftype, type) and dataclasses.is_dataclass(ftype):
            v = config_from_dict(ftype, v, f"{name}.{k}")
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)
