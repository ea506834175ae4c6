"""The exchange format: one .npz that another implementation writes and `iclgd crosscheck` reads.

Shape legend: B tasks, T tokens, D_in token width, L layers (applications).
Keys (every array float32 or float64 unless said; nothing else is allowed in the file):
    format_version              int scalar            FORMAT_VERSION
    config                      str scalar            JSON object with EVERY ModelConfig field
    params/<name>               shape of param_shapes(cfg)[name], for every name (refimpl/params.py)
    tokens                      (B, T, D_in)          the model's input
    targets                     (B,)                  y of the loss
  optional: the other implementation's results, at least one of them:
    predictions                 (B,)                  y_hat = readouts[-1]
    readouts                    (L, B)                -H_l[:, -1, -1] after every layer l
    loss                        scalar                mean_b 0.5 (y_hat_b - y_b)^2
    grads/<name>                as params/<name>      d loss / d param; all names or none
    input_grads                 (B, T, D_in)          d loss / d tokens
    prediction_grads            (B, T, D_in)          d y_hat_b / d tokens_b (the sensitivity, SPEC 5)
The oracle recomputes everything in float64 from params, tokens and targets.

Limits, checked before any array is read (from the archive's member list and each .npy header,
see npz_headers.py), so that a small file cannot declare its way to gigabytes or hours:
    MAX_MEMBERS      arrays in the file
    MAX_NUMBERS      numbers declared by one array
    MAX_BYTES        bytes declared by all arrays together
    MAX_CONFIG_CHARS characters of the config JSON
then, from the config and the declared tokens (B, T, D_in), before the oracle runs:
    MAX_LAYERS       config num_layers
    MAX_ACTIVATIONS  num_layers * B * T * (W + num_heads * T), about the numbers the forward pass
                     keeps for the backward (W = the widest of the token width, the model width,
                     num_heads * key_size and the MLP hidden widths)
    MAX_WORK         MAX_ACTIVATIONS' count times W, a bound on the multiply-adds of one pass
Object, structured and void dtypes are refused from the header (an object array is a pickle).
"""
import json
import zipfile
import zlib

import numpy as np

from refimpl.atomic import atomic_save
from refimpl.config import ModelConfig, config_from_dict, config_to_dict
from refimpl.model import model_backward, model_forward, prediction_input_gradient
from refimpl.params import check_params, param_shapes
from refimpl.validate import check_array
from iclgd.interop.npz_headers import declared_numbers, read_npz_headers

FORMAT_VERSION = 1
MAX_MEMBERS = 4096
MAX_NUMBERS = 2**24  # 16,777,216: 128 MiB of float64
MAX_BYTES = 2**30  # 1 GiB
MAX_CONFIG_CHARS = 2**16
MAX_LAYERS = 1024
MAX_ACTIVATIONS = 2**26  # 67,108,864: about 4 GB of the oracle's memory, a minute of its time
MAX_WORK = 2**34  # 17,179,869,184 multiply-adds
WHERE = "in iclgd/interop/exchange.py"
PARAM_PREFIX = "params/"
GRAD_PREFIX = "grads/"
REQUIRED = ("format_version", "config", "tokens", "targets")
# result name -> shape as a function of (B, T, D_in, L)
RESULTS = {
    "predictions": lambda B, T, D, L: (B,),
    "readouts": lambda B, T, D, L: (L, B),
    "loss": lambda B, T, D, L: (),
    "input_grads": lambda B, T, D, L: (B, T, D),
    "prediction_grads": lambda B, T, D, L: (B, T, D),
}


def config_from_json(text):
    """ModelConfig from the file's JSON, which must name every field (no silent defaults)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config: expected a JSON object, got invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a JSON object, got {type(data).__name__}")
    missing = [f for f in config_to_dict(ModelConfig()) if f not in data]
    if missing:
        raise ValueError(f"config: missing field(s) {missing}; the exchange format needs every "
                         f"ModelConfig field, so that no default is assumed silently")
    return config_from_dict(ModelConfig, data, "config")


def oracle_results(cfg: ModelConfig, params, tokens, targets):
    """Every result of the format, computed by the float64 oracle."""
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    tokens = np.asarray(tokens, dtype=np.float64)  # (B, T, D_in)
    targets = np.asarray(targets, dtype=np.float64)  # (B,)
    readouts, cache = model_forward(params, tokens, cfg)  # (L, B)
    check_array("targets", targets, shape=(tokens.shape[0],))
    r = readouts[-1] - targets  # (B,)
    dread = np.zeros_like(readouts)  # (L, B)
    dread[-1] = r / r.shape[0]  # d loss / d y_hat
    dtokens, grads = model_backward(dread, cache)
    out = {
        "predictions": readouts[-1].copy(),
        "readouts": readouts,
        "loss": np.float64(0.5 * np.mean(r * r)),
        "input_grads": dtokens,
        "prediction_grads": prediction_input_gradient(params, tokens, cfg),
    }
    out.update({GRAD_PREFIX + n: g for n, g in grads.items()})
    return out


def save_exchange(path, cfg: ModelConfig, params, tokens, targets, results=None):
    """Write a file of the format, atomically; `results` maps result names (and 'grads/<name>')
    to arrays. As numpy.savez, '.npz' is appended to a name without it; returns the path written."""
    check_params({k: np.asarray(v) for k, v in params.items()}, cfg)
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "config": np.array(json.dumps(config_to_dict(cfg))),
        "tokens": np.asarray(tokens),
        "targets": np.asarray(targets),
    }
    arrays.update({PARAM_PREFIX + n: np.asarray(v) for n, v in params.items()})
    for name, value in (results or {}).items():
        if name not in RESULTS and not name.startswith(GRAD_PREFIX):
            raise ValueError(f"results: unknown name {name!r}; valid: {list(RESULTS)} and "
                             f"'{GRAD_PREFIX}<parameter name>'")
        arrays[name] = np.asarray(value)
    path = str(path) if str(path).endswith(".npz") else f"{path}.npz"
    return atomic_save(path, lambda f: np.savez(f, **arrays))


def export_oracle(path, cfg: ModelConfig, params, tokens, targets):
    """Write a file of the format whose results are the oracle's own (a reference to compare with)."""
    return save_exchange(path, cfg, params, tokens, targets,
                         oracle_results(cfg, params, tokens, targets))


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
    for key in ("format_version", "config"):
        if key in headers and headers[key][1] != ():
            raise ValueError(f"{key}: expected a scalar, got shape {headers[key][1]}")
    if "config" in headers:
        dtype = headers["config"][0]
        if dtype.kind != "U":
            raise ValueError(f"config: expected a JSON string, got dtype {dtype}")
        if dtype.itemsize // 4 > MAX_CONFIG_CHARS:
            raise ValueError(f"config: {dtype.itemsize // 4} characters declared, the limit is "
                             f"{MAX_CONFIG_CHARS} (MAX_CONFIG_CHARS {WHERE})")


def oracle_cost(cfg: ModelConfig, B, T):
    """(activations, work) of the oracle on B tasks of T tokens: see the module docstring."""
    widths = [cfg.front_dim, cfg.model_dim, cfg.num_heads * cfg.key_size]
    if cfg.mlp:
        widths.append(cfg.mlp_widening * cfg.model_dim)
    if cfg.input_mlp:
        widths.append(cfg.mlp_widening * cfg.embed_dim)
    W = max(widths)
    activations = cfg.num_layers * B * T * (W + cfg.num_heads * T)
    return activations, activations * W


def check_oracle_cost(cfg: ModelConfig, tokens_shape):
    """The limits on the oracle's work for this config and the declared tokens (B, T, D_in)."""
    if cfg.num_layers > MAX_LAYERS:
        raise ValueError(f"config.num_layers: {cfg.num_layers}, the limit is {MAX_LAYERS} "
                         f"(MAX_LAYERS {WHERE})")
    if len(tokens_shape) != 3:
        raise ValueError(f"tokens: expected 3 dimensions, got shape {tokens_shape}")
    B, T, _ = tokens_shape
    activations, work = oracle_cost(cfg, B, T)
    what = f"for num_layers {cfg.num_layers}, B {B}, T {T} and this config's widths"
    if activations > MAX_ACTIVATIONS:
        raise ValueError(f"config, tokens: the oracle would keep {activations} numbers {what}, the "
                         f"limit is {MAX_ACTIVATIONS} (MAX_ACTIVATIONS {WHERE})")
    if work > MAX_WORK:
        raise ValueError(f"config, tokens: the oracle would do {work} multiply-adds {what}, the "
                         f"limit is {MAX_WORK} (MAX_WORK {WHERE})")


def load_exchange(path):
    """Read and validate a file: {"cfg", "params", "tokens", "targets", "results"}.

    Every problem raises ValueError naming the key and what was expected; nothing is skipped.
    Names, dtypes, declared sizes and the oracle's cost are checked before any array is read.
    """
    label = f"FILE {path}"
    headers = read_npz_headers(path, label, MAX_MEMBERS)
    check_declared_sizes(headers)
    missing = [k for k in REQUIRED if k not in headers]
    if missing:
        raise ValueError(f"{label}: missing key(s) {missing}; required: {list(REQUIRED)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            version = _scalar(data, "format_version")
            if not np.issubdtype(version.dtype, np.integer) or int(version) != FORMAT_VERSION:
                raise ValueError(f"format_version: expected {FORMAT_VERSION}, got {version!r}")
            cfg = config_from_json(str(_scalar(data, "config")))
            check_oracle_cost(cfg, headers["tokens"][1])
            _check_names(cfg, headers)
            arrays = {k: _read(data, k) for k in headers if k not in ("format_version", "config")}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{label}: not a readable .npz archive ({type(e).__name__}: "
                         f"{' '.join(str(e).split())})") from None
    return _validate(cfg, arrays)


def _check_names(cfg, keys):
    """Every key known, every parameter present, gradients all or none: from the names alone."""
    shapes = param_shapes(cfg)
    unknown = [k for k in keys if k not in REQUIRED and k not in RESULTS
               and not k.startswith((PARAM_PREFIX, GRAD_PREFIX))]
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; valid: {list(REQUIRED)}, {list(RESULTS)}, "
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


def _validate(cfg, arrays):
    shapes = param_shapes(cfg)
    params = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    grads = {k[len(GRAD_PREFIX):]: v for k, v in arrays.items() if k.startswith(GRAD_PREFIX)}
    for prefix, group in ((PARAM_PREFIX, params), (GRAD_PREFIX, grads)):
        for n, shape in shapes.items():
            if n in group:
                check_array(prefix + n, group[n], shape=shape)
    tokens = check_array("tokens", arrays["tokens"], ndim=3)
    B, T, D = tokens.shape
    if D != cfg.token_dim:
        raise ValueError(f"tokens: expected token width config.token_dim = {cfg.token_dim}, "
                         f"got shape {tokens.shape}")
    targets = check_array("targets", arrays["targets"], shape=(B,))
    results = {}
    for name, shape_of in RESULTS.items():
        if name in arrays:
            results[name] = check_array(name, arrays[name], shape=shape_of(B, T, D, cfg.num_layers))
    results.update({GRAD_PREFIX + n: grads[n] for n in shapes if n in grads})
    if not results:
        raise ValueError(f"nothing to compare: the file holds none of {list(RESULTS)} or "
                         f"'{GRAD_PREFIX}<name>'; a file without results cannot pass")
    return {"cfg": cfg, "params": params, "tokens": tokens, "targets": targets, "results": results}
