"""The exchange format: one .npz that another implementation writes and `iclgd crosscheck` reads.

Shape legend: B tasks (prompts), T tokens, D_in token width, L layers (applications), n = T / 2
pairs (gpt2).
Keys (every array float32 or float64 unless said; nothing else is allowed in the file):
    format_version              int scalar            FORMAT_VERSION (2); 1 is read too (below)
    model                       str scalar            "lsa" or "gpt2" (exchange_models.py)
    config                      str scalar            JSON object with EVERY field of the model's
                                                      config: ModelConfig (lsa), GPT2Config (gpt2)
    params/<name>               shape of param_shapes(cfg)[name], for every name: refimpl/params.py
                                (lsa), refimpl/gpt2.py (gpt2)
    tokens                      lsa (B, T, D_in)      the model's input
                                gpt2 (B, T, D_in)     x_i at 2i, [y_i, 0, ..., 0] at 2i + 1; T even,
                                                      2 <= T <= 2 num_pairs (D_in = input_dim)
    targets                     lsa (B,), gpt2 (B, n) y of the loss
  optional: the other implementation's results, at least one of them. Model "lsa":
    predictions                 (B,)                  y_hat = readouts[-1]
    readouts                    (L, B)                -H_l[:, -1, -1] after every layer l
    loss                        scalar                mean_b 0.5 (y_hat_b - y_b)^2
    grads/<name>                as params/<name>      d loss / d param; all names or none
    input_grads                 (B, T, D_in)          d loss / d tokens
    prediction_grads            (B, T, D_in)          d y_hat_b / d tokens_b (the sensitivity, SPEC 5)
  model "gpt2":
    predictions                 (B, n)                y_hat_bi, read out at x position 2i
    loss                        scalar                mean_{b,i} (y_hat_bi - y_bi)^2 (no 1/2)
    grads/<name>                as params/<name>      d loss / d param; all names or none; grads/pos
                                                      is (2 num_pairs, E), zero in rows >= T
    input_grads                 (B, T, D_in)          d loss / d tokens
The oracle recomputes everything in float64 from params, tokens and targets.
Format version 1 is version 2 without `model`: a version-1 file holds an LSA model and reads as
before (a `model` key in it is refused). save_exchange writes version 2 unless asked for 1.

Limits, checked before any array is read (from the archive's member list and each .npy header,
see npz_headers.py), so that a small file cannot declare its way to gigabytes or hours:
    MAX_MEMBERS      arrays in the file
    MAX_NUMBERS      numbers declared by one array
    MAX_BYTES        bytes declared by all arrays together
    MAX_CONFIG_CHARS characters of the config JSON (MAX_MODEL_CHARS: of the model name)
then, from the config and the declared tokens (B, T, D_in), before the oracle runs:
    MAX_LAYERS       config num_layers
    MAX_ACTIVATIONS  num_layers * B * T * (W + num_heads * T), about the numbers the forward pass
                     keeps for the backward (W = the widest of the token width, the model width,
                     num_heads * key_size and the MLP hidden widths; for gpt2 of input_dim,
                     embed_dim and mlp_widening * embed_dim)
    MAX_WORK         MAX_ACTIVATIONS' count times W, a bound on the multiply-adds of one pass
Object, structured and void dtypes are refused from the header (an object array is a pickle).
"""
import json
import zipfile
import zlib

import numpy as np

from refimpl.atomic import atomic_save
from refimpl.config import config_from_dict, config_to_dict
from refimpl.validate import check_array
from iclgd.interop.exchange_models import GRAD_PREFIX, LSA, MODELS, model_of
from iclgd.interop.npz_headers import declared_numbers, read_npz_headers

FORMAT_VERSION = 2  # what save_exchange writes
VERSIONS = (1, 2)  # what load_exchange reads
MAX_MEMBERS = 4096
MAX_NUMBERS = 2**24  # 16,777,216: 128 MiB of float64
MAX_BYTES = 2**30  # 1 GiB
MAX_CONFIG_CHARS = 2**16
MAX_MODEL_CHARS = 64
MAX_LAYERS = 1024
MAX_ACTIVATIONS = 2**26  # 67,108,864: about 4 GB of the oracle's memory, a minute of its time
MAX_WORK = 2**34  # 17,179,869,184 multiply-adds
WHERE = "in iclgd/interop/exchange.py"
PARAM_PREFIX = "params/"
REQUIRED = ("format_version", "config", "tokens", "targets")  # every version; 2 adds "model"


def required(version):
    """The keys a file of this format version must hold."""
    return REQUIRED + (("model",) if version >= 2 else ())


def config_from_json(text, model=LSA):
    """The model's config from the file's JSON, which must name every field (no silent defaults)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config: expected a JSON object, got invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a JSON object, got {type(data).__name__}")
    cls = model.config_class
    missing = [f for f in config_to_dict(cls()) if f not in data]
    if missing:
        raise ValueError(f"config: missing field(s) {missing}; the exchange format needs every "
                         f"{cls.__name__} field, so that no default is assumed silently")
    return config_from_dict(cls, data, "config")


def oracle_results(cfg, params, tokens, targets):
    """Every result of the format for cfg's model, computed by the float64 oracle."""
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    tokens = np.asarray(tokens, dtype=np.float64)  # (B, T, D_in)
    targets = np.asarray(targets, dtype=np.float64)  # (B,) or (B, n)
    return model_of(cfg).oracle_results(cfg, params, tokens, targets)


def save_exchange(path, cfg, params, tokens, targets, results=None, format_version=FORMAT_VERSION):
    """Write a file of the format, atomically; `results` maps result names (and 'grads/<name>')
    to arrays. The model ("lsa" or "gpt2") follows from cfg's class; format_version=1 writes the
    older layout (an LSA model, no `model` key). As numpy.savez, '.npz' is appended to a name
    without it; returns the path written."""
    model = model_of(cfg)
    if isinstance(format_version, bool) or format_version not in VERSIONS:
        raise ValueError(f"format_version: expected one of {list(VERSIONS)}, got {format_version!r}")
    if format_version == 1 and model is not LSA:
        raise ValueError(f"format_version: 1 holds LSA models only; model {model.name!r} needs 2")
    model.check_params({k: np.asarray(v) for k, v in params.items()}, cfg)
    arrays = {
        "format_version": np.array(format_version),
        "config": np.array(json.dumps(config_to_dict(cfg))),
        "tokens": np.asarray(tokens),
        "targets": np.asarray(targets),
    }
    if format_version >= 2:
        arrays["model"] = np.array(model.name)
    arrays.update({PARAM_PREFIX + n: np.asarray(v) for n, v in params.items()})
    for name, value in (results or {}).items():
        if name not in model.results and not name.startswith(GRAD_PREFIX):
            raise ValueError(f"results: unknown name {name!r} for model {model.name!r}; valid: "
                             f"{list(model.results)} and '{GRAD_PREFIX}<parameter name>'")
        arrays[name] = np.asarray(value)
    path = str(path) if str(path).endswith(".npz") else f"{path}.npz"
    return atomic_save(path, lambda f: np.savez(f, **arrays))


def export_oracle(path, cfg, params, tokens, targets, format_version=FORMAT_VERSION):
    """Write a file of the format whose results are the oracle's own (a reference to compare with)."""
    return save_exchange(path, cfg, params, tokens, targets,
                         oracle_results(cfg, params, tokens, targets), format_version)


def _scalar(data, key):
    value = data[key]
    if value.shape != ():
        raise ValueError(f"{key}: expected a scalar, got shape {value.shape}")
    return value[()]


def _read(data, key):
    try:
        return data[key]
    except ValueError as e:  # a member shorter than its header declares
        raise ValueError(f"{key}: cannot read the array ({' '.join(str(e).split())})") from None


def check_declared_sizes(headers):
    """The limits on what the file declares (the module docstring), from its headers alone."""
    total = 0
    for key, (dtype, shape) in headers.items():
        numbers = declared_numbers(shape)
        if numbers > MAX_NUMBERS:
            raise ValueError(f"{key}: {numbers} numbers declared, the limit is {MAX_NUMBERS} "
                             f"(MAX_NUMBERS {WHERE})")
        total += numbers * dtype.itemsize
    if total > MAX_BYTES:
        raise ValueError(f"arrays: {total} bytes declared in all, the limit is {MAX_BYTES} "
                         f"(MAX_BYTES {WHERE})")
    for key in ("format_version", "config", "model"):
        if key in headers and headers[key][1] != ():
            raise ValueError(f"{key}: expected a scalar, got shape {headers[key][1]}")
    if "format_version" in headers and headers["format_version"][0].kind not in "iu":
        raise ValueError(f"format_version: expected an integer, got dtype {headers['format_version'][0]}")
    for key, limit, name in (("config", MAX_CONFIG_CHARS, "MAX_CONFIG_CHARS"),
                             ("model", MAX_MODEL_CHARS, "MAX_MODEL_CHARS")):
        if key not in headers:
            continue
        dtype = headers[key][0]
        if dtype.kind != "U":
            raise ValueError(f"{key}: expected a {'JSON ' if key == 'config' else ''}string, "
                             f"got dtype {dtype}")
        if dtype.itemsize // 4 > limit:
            raise ValueError(f"{key}: {dtype.itemsize // 4} characters declared, the limit is "
                             f"{limit} ({name} {WHERE})")


def check_oracle_cost(cfg, tokens_shape):
    """The limits on the oracle's work for this config and the declared tokens (B, T, D_in)."""
    if cfg.num_layers > MAX_LAYERS:
        raise ValueError(f"config.num_layers: {cfg.num_layers}, the limit is {MAX_LAYERS} "
                         f"(MAX_LAYERS {WHERE})")
    if len(tokens_shape) != 3:
        raise ValueError(f"tokens: expected 3 dimensions, got shape {tokens_shape}")
    B, T, _ = tokens_shape
    activations, work, widths = model_of(cfg).oracle_cost(cfg, B, T)
    what = f"for num_layers {cfg.num_layers}, B {B}, T {T} and {widths}"
    if activations > MAX_ACTIVATIONS:
        raise ValueError(f"config, tokens: the oracle would keep {activations} numbers {what}, the "
                         f"limit is {MAX_ACTIVATIONS} (MAX_ACTIVATIONS {WHERE})")
    if work > MAX_WORK:
        raise ValueError(f"config, tokens: the oracle would do {work} multiply-adds {what}, the "
                         f"limit is {MAX_WORK} (MAX_WORK {WHERE})")


def load_exchange(path):
    """Read and validate a file: {"model", "format_version", "cfg", "params", "tokens", "targets",
    "results"}; "model" is the name of exchange_models.py ("lsa" for a version-1 file).

    Every problem raises ValueError naming the key and what was expected; nothing is skipped.
    Names, dtypes, declared sizes and the oracle's cost are checked before any array is read.
    """
    label = f"FILE {path}"
    headers = read_npz_headers(path, label, MAX_MEMBERS)
    check_declared_sizes(headers)
    missing = [k for k in REQUIRED if k not in headers]
    if missing:
        raise ValueError(f"{label}: missing key(s) {missing}; required: "
                         f"{list(required(FORMAT_VERSION))} ('model' from format version 2)")
    try:
        with np.load(path, allow_pickle=False) as data:
            version = int(_scalar(data, "format_version"))
            if version not in VERSIONS:
                raise ValueError(f"format_version: expected one of {list(VERSIONS)}, got {version}")
            model = _model(data, headers, version)
            cfg = config_from_json(str(_scalar(data, "config")), model)
            check_oracle_cost(cfg, headers["tokens"][1])
            _check_names(model, cfg, headers, version)
            arrays = {k: _read(data, k) for k in headers if k not in ("format_version", "config", "model")}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{label}: not a readable .npz archive ({type(e).__name__}: "
                         f"{' '.join(str(e).split())})") from None
    return {"model": model.name, "format_version": version, **_validate(model, cfg, arrays)}


def _model(data, headers, version):
    """The file's ExchangeModel: named by `model` from version 2; an LSA model in version 1."""
    if version == 1:
        if "model" in headers:
            raise ValueError("model: not a key of format version 1, whose files hold LSA models; "
                             "a file that names its model has format_version 2")
        return LSA
    if "model" not in headers:
        raise ValueError(f"missing key(s) ['model']; format version {version} requires "
                         f"{list(required(version))}")
    name = str(_scalar(data, "model"))
    if name not in MODELS:
        raise ValueError(f"model: expected one of {list(MODELS)}, got {name!r}")
    return MODELS[name]


def _check_names(model, cfg, keys, version):
    """Every key known, every parameter present, gradients all or none: from the names alone."""
    shapes = model.param_shapes(cfg)
    unknown = [k for k in keys if k not in required(version) and k not in model.results
               and not k.startswith((PARAM_PREFIX, GRAD_PREFIX))]
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; valid for model {model.name!r} in format "
                         f"version {version}: {list(required(version))}, {list(model.results)}, "
                         f"'{PARAM_PREFIX}<name>', '{GRAD_PREFIX}<name>'")
    for prefix in (PARAM_PREFIX, GRAD_PREFIX):
        group = [k[len(prefix):] for k in keys if k.startswith(prefix)]
        if prefix == GRAD_PREFIX and not group:
            continue
        missing = [prefix + n for n in shapes if n not in group]
        extra = [prefix + n for n in group if n not in shapes]
        if extra:
            raise ValueError(f"unknown parameter name(s) {extra} for this config; "
                             f"expected {[prefix + n for n in shapes]}")
        if missing:
            raise ValueError(f"missing {missing}; expected {[prefix + n for n in shapes]}"
                             + (" (parameter gradients: all or none)" if prefix == GRAD_PREFIX else ""))


def _check_shape(model, key, value, shape):
    """check_array, with what the key's shape means (model.shape_notes) in a wrong shape's error."""
    note = (model.shape_notes or {}).get(key)
    if note and getattr(value, "shape", shape) != tuple(shape):
        raise ValueError(f"{key}: expected shape {tuple(shape)} ({note}), got {value.shape}")
    return check_array(key, value, shape=shape)


def _validate(model, cfg, arrays):
    shapes = model.param_shapes(cfg)
    params = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    grads = {k[len(GRAD_PREFIX):]: v for k, v in arrays.items() if k.startswith(GRAD_PREFIX)}
    for prefix, group in ((PARAM_PREFIX, params), (GRAD_PREFIX, grads)):
        for n, shape in shapes.items():
            if n in group:
                _check_shape(model, prefix + n, group[n], shape)
    tokens = model.check_tokens(arrays["tokens"], cfg)  # (B, T, D_in)
    B, T, D = tokens.shape
    if B < 1:
        raise ValueError(f"tokens: expected at least one task, got shape {tokens.shape}")
    targets = check_array("targets", arrays["targets"], shape=model.targets_shape(B, T))
    results = {}
    for name, shape_of in model.results.items():
        if name in arrays:
            results[name] = _check_shape(model, name, arrays[name], shape_of(B, T, D, cfg))
    results.update({GRAD_PREFIX + n: grads[n] for n in shapes if n in grads})
    if not results:
        raise ValueError(f"nothing to compare: the file holds none of {list(model.results)} or "
                         f"'{GRAD_PREFIX}<name>'; a file without results cannot pass")
    return {"cfg": cfg, "params": params, "tokens": tokens, "targets": targets, "results": results}
