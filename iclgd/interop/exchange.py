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
"""
import json

import numpy as np

from refimpl.config import ModelConfig, config_from_dict, config_to_dict
from refimpl.model import model_backward, model_forward, prediction_input_gradient
from refimpl.params import check_params, param_shapes
from refimpl.validate import check_array

FORMAT_VERSION = 1
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
    """Write a file of the format. `results` maps result names (and 'grads/<name>') to arrays."""
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
    np.savez(path, **arrays)


def export_oracle(path, cfg: ModelConfig, params, tokens, targets):
    """Write a file of the format whose results are the oracle's own (a reference to compare with)."""
    save_exchange(path, cfg, params, tokens, targets, oracle_results(cfg, params, tokens, targets))


def _scalar(data, key):
    value = data[key]
    if value.shape != ():
        raise ValueError(f"{key}: expected a scalar, got shape {value.shape}")
    return value[()]


def load_exchange(path):
    """Read and validate a file: {"cfg", "params", "tokens", "targets", "results"}.

    Every problem raises ValueError naming the key and what was expected; nothing is skipped.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"FILE {path}: expected an .npz file of the exchange format ({e})") from None
    with data:
        keys = list(data.files)
        missing = [k for k in REQUIRED if k not in keys]
        if missing:
            raise ValueError(f"FILE {path}: missing key(s) {missing}; required: {list(REQUIRED)}")
        version = _scalar(data, "format_version")
        if not np.issubdtype(np.asarray(version).dtype, np.integer) or int(version) != FORMAT_VERSION:
            raise ValueError(f"format_version: expected {FORMAT_VERSION}, got {version!r}")
        config_text = _scalar(data, "config")
        if not isinstance(config_text, str):
            raise ValueError(f"config: expected a JSON string, got dtype {data['config'].dtype}")
        cfg = config_from_json(config_text)
        arrays = {k: data[k] for k in keys if k not in ("format_version", "config")}
    return _validate(cfg, arrays)


def _validate(cfg, arrays):
    shapes = param_shapes(cfg)
    params = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    grads = {k[len(GRAD_PREFIX):]: v for k, v in arrays.items() if k.startswith(GRAD_PREFIX)}
    unknown = [k for k in arrays if k not in ("tokens", "targets") and k not in RESULTS
               and not k.startswith((PARAM_PREFIX, GRAD_PREFIX))]
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; valid: {list(REQUIRED)}, {list(RESULTS)}, "
                         f"'{PARAM_PREFIX}<name>', '{GRAD_PREFIX}<name>'")
    for prefix, group in ((PARAM_PREFIX, params), (GRAD_PREFIX, grads)):
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
        for n, shape in shapes.items():
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
