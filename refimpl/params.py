"""Parameters: one flat, named mapping derived from the config (STYLE habit 4).

Names (p = parameter set: always 0 for a weight-tied model, the layer index for a deep one):
    embed.W                         (D_in', E)    linear embedding, no bias     [embed_dim > 0]
    input_mlp.{W1,b1,W2,b2}         E -> 4E -> E  residual input MLP            [input_mlp]
    layer{p}.ln1.{scale,offset}     (D,)          LayerNorm before attention    [where used]
    layer{p}.attn.{W_q,W_k,W_v}     (D, nh*K)     nh = num_heads heads of key size K
    layer{p}.attn.W_p               (nh*K, D)
    layer{p}.ln2.{scale,offset}     (D,)          LayerNorm before the MLP      [mlp and layernorm]
    layer{p}.mlp.{W1,b1,W2,b2}      D -> wD -> D                                [mlp]
D_in' = token_dim (+ pos_enc_size when concatenated); D = model width. Weights are (in, out).
"""
import functools
import math

import numpy as np

from .config import ModelConfig
from .validate import check_array

TRUNC_STD_CORRECTION = 0.87962566103423978  # std of a unit normal truncated at +-2


def num_param_sets(cfg):
    return 1 if cfg.weight_tied else cfg.num_layers


def param_shapes(cfg: ModelConfig):
    """Ordered {name: shape}: the single source of every parameter's name and shape (a new dict;
    the layout is worked out once per config)."""
    return dict(_param_shapes(cfg))


@functools.lru_cache(maxsize=64)
def _param_shapes(cfg: ModelConfig):
    shapes = {}
    E, D, nhK = cfg.embed_dim, cfg.model_dim, cfg.num_heads * cfg.key_size
    if E:
        shapes["embed.W"] = (cfg.front_dim, E)
    if cfg.input_mlp:
        F = cfg.mlp_widening * E
        shapes.update({"input_mlp.W1": (E, F), "input_mlp.b1": (F,),
                       "input_mlp.W2": (F, E), "input_mlp.b2": (E,)})
    for p in range(num_param_sets(cfg)):
        users = range(cfg.num_layers) if cfg.weight_tied else [p]
        if any(cfg.layer_has_ln(l) for l in users):
            shapes[f"layer{p}.ln1.scale"] = (D,)
            shapes[f"layer{p}.ln1.offset"] = (D,)
        shapes[f"layer{p}.attn.W_q"] = (D, nhK)
        shapes[f"layer{p}.attn.W_k"] = (D, nhK)
        shapes[f"layer{p}.attn.W_v"] = (D, nhK)
        shapes[f"layer{p}.attn.W_p"] = (nhK, D)
        if cfg.mlp:
            F = cfg.mlp_widening * D
            if cfg.layernorm:
                shapes[f"layer{p}.ln2.scale"] = (D,)
                shapes[f"layer{p}.ln2.offset"] = (D,)
            shapes.update({f"layer{p}.mlp.W1": (D, F), f"layer{p}.mlp.b1": (F,),
                           f"layer{p}.mlp.W2": (F, D), f"layer{p}.mlp.b2": (D,)})
    return shapes


def param_offsets(cfg: ModelConfig):
    """{name: (offset, shape)} of each parameter in one flat vector (param_shapes order), and the
    vector's length: the packed layout of the fast backends (a new dict each call)."""
    out, total = _param_offsets(cfg)
    return dict(out), total


@functools.lru_cache(maxsize=64)
def _param_offsets(cfg: ModelConfig):
    out, o = {}, 0
    for name, shape in _param_shapes(cfg).items():
        out[name] = (o, shape)
        o += math.prod(shape)
    return out, o


def truncated_normal(rng, shape, std, dtype=np.float64):
    """Normal(0, std^2) truncated at +-2 std, by resampling the draws outside (Haiku's law)."""
    z = rng.standard_normal(shape)
    out = np.abs(z) > 2.0
    while out.any():
        z[out] = rng.standard_normal(int(out.sum()))
        out = np.abs(z) > 2.0
    return (z * std).astype(dtype)


def fan_in_std(fan_in, scale):
    """Haiku VarianceScaling(scale, 'fan_in', 'truncated_normal'): sqrt(scale/fan_in)/0.8796..."""
    return np.sqrt(scale / fan_in) / TRUNC_STD_CORRECTION


def init_params(cfg: ModelConfig, rng: np.random.Generator, dtype=np.float64):
    """Weights: fan-in truncated normal, scale init_scale / L (SPEC 3); biases 0; LN scale 1.
    A GPT2Config gets refimpl.gpt2.init_params (GPT-2's initialisation)."""
    from .gpt2 import GPT2Config, init_params as gpt2_init_params
    if isinstance(cfg, GPT2Config):
        return gpt2_init_params(cfg, rng, dtype)
    scale = cfg.init_scale / cfg.num_layers
    params = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[1]
        if leaf in ("b1", "b2", "offset"):
            params[name] = np.zeros(shape, dtype)
        elif leaf == "scale":
            params[name] = np.ones(shape, dtype)
        else:
            params[name] = truncated_normal(rng, shape, fan_in_std(shape[0], scale), dtype)
    return params


def check_params(params, cfg: ModelConfig, finite=True):
    """Every expected name present with its shape, no unknown names, finite, one dtype
    (finite=False leaves the NaN/inf scan to the caller)."""
    return check_named_arrays(params, param_shapes(cfg), finite)


def check_named_arrays(params, shapes, finite=True):
    """params against {name: shape}: every name present with its shape, no unknown names, finite,
    one dtype (the check of every model's parameters: this module's and refimpl.gpt2's)."""
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a dict of arrays, got {type(params).__name__}")
    missing = [n for n in shapes if n not in params]
    unknown = [n for n in params if n not in shapes]
    if missing:
        raise ValueError(f"params: missing {missing} for this config; expected {list(shapes)}")
    if unknown:
        raise ValueError(f"params: unknown name(s) {unknown} for this config; expected {list(shapes)}")
    dtypes = set()
    for name, shape in shapes.items():
        check_array(f"params[{name!r}]", params[name], shape=shape, finite=finite)
        dtypes.add(params[name].dtype)
    if len(dtypes) > 1:
        raise ValueError(f"params: mixed dtypes {sorted(map(str, dtypes))}")
    return params


def params_under(params, prefix):
    """The parameters under `prefix.` with the prefix stripped: {"W_q": ...} from "layer0.attn"."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def params_astype(params, dtype):
    return {k: np.asarray(v, dtype=dtype) for k, v in params.items()}


def flatten(params, names=None):
    """Concatenate parameters (in `names` order, default the dict's order) into one vector."""
    names = list(params) if names is None else names
    return np.concatenate([params[n].ravel() for n in names])


def unflatten(vector, like):
    out, i = {}, 0
    for name, value in like.items():
        out[name] = vector[i:i + value.size].reshape(value.shape).astype(value.dtype)
        i += value.size
    if i != vector.size:
        raise ValueError(f"vector: expected {i} entries, got {vector.size}")
    return out


def save_params(path, params, cfg: ModelConfig | None = None):
    """Write parameters (and the config as JSON under '__config__') to an .npz file, atomically:
    a reader sees the old file or the whole new one; a failed write leaves the old file as it was
    and no temporary file.
    As numpy.savez, '.npz' is appended to a name without it; returns the path written."""
    import json
    from .atomic import atomic_save
    from .config import config_to_dict
    extra = {"__config__": np.array(json.dumps(config_to_dict(cfg)))} if cfg is not None else {}
    path = str(path) if str(path).endswith(".npz") else f"{path}.npz"
    return atomic_save(path, lambda f: np.savez(f, **params, **extra))


def load_params(path):
    """Read (params, cfg or None) written by save_params, from exactly `path` (no suffix added)."""
    import json
    from .config import config_from_dict
    with np.load(path, allow_pickle=False) as data:
        params = {k: data[k] for k in data.files if k != "__config__"}
        cfg = (config_from_dict(ModelConfig, json.loads(str(data["__config__"])), "__config__")
               if "__config__" in data.files else None)
    if cfg is not None:
        check_params(params, cfg)
    return params, cfg
