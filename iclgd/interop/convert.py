"""Importers and exporters of parameters: the public notebooks' Haiku trees, a PyTorch state_dict,
and our own names (refimpl/params.py). Every map is a renaming plus, for torch, a transpose.
The maps cover the LSA transformer (refimpl/params.py); a file of the GPT-2 model's parameters
(refimpl/gpt2.py) is refused by name (check_not_gpt2).

Haiku (the public code's `Transformer` module, maps stored (in, out) like ours; ROOT is the
top module, "transformer" in the notebooks, inferred when the tree has one):
    weight-tied                                   deep (layer l)
    ROOT/multi_head_attention/query/w  W_q        ROOT/layer_{l}/query/w     layer{l}.attn.W_q
    .../key/w, .../value/w, .../linear/w          W_k, W_v, W_p likewise
    ROOT/l_norm/layer_norm/{scale,offset}  ln1    ROOT/norm_{l}/{scale,offset}  ln1 (l >= 1 in
                                                  the public code)
    ROOT/l_norm_1/layer_norm/{scale,offset}  ln2  ROOT/layer_norm{,_1,..}/...  ln2 of layer 0, 1, ..
    ROOT/mlp/linear/{w,b}  mlp.W1, b1             ROOT/mlp{,_1,..}/linear/{w,b}   of layer 0, 1, ..
    ROOT/mlp/linear_1/{w,b}  mlp.W2, b2           ROOT/mlp{,_1,..}/linear_1/{w,b}
    ROOT/emb/w  embed.W;  ROOT/input_mlp/linear/{w,b}  input_mlp.W1, b1;  .../linear_1  W2, b2
Biases the oracle's model does not have (attention `b`, `emb/b`: the public option use_bias_p) are
accepted only when zero. MLP biases, absent when the public model ran without them, read as zero.
A tree may be nested at any depth or flat with '/'-joined keys, in a pickle or an .npz. Pickles
are read by a restricted unpickler (containers and NumPy arrays only, safe_pickle.py) unless
trust_pickle=True.

PyTorch: the state_dict of a module with these attribute names (torch.nn.Linear stores (out, in),
so every weight is transposed; LayerNorm's weight/bias are our scale/offset; p = 0 when tied):
    embed.weight (E, D_in')                          nn.Linear(D_in', E, bias=False)
    input_mlp.fc1.{weight,bias}, input_mlp.fc2.*     nn.Linear(E, 4E), nn.Linear(4E, E)
    blocks.{p}.ln1.{weight,bias}                     nn.LayerNorm(D, eps=1e-5)
    blocks.{p}.attn.{q_proj,k_proj,v_proj}.weight    nn.Linear(D, H*K, bias=False)
    blocks.{p}.attn.o_proj.weight                    nn.Linear(H*K, D, bias=False)
    blocks.{p}.ln2.{weight,bias}, blocks.{p}.mlp.fc1.*, blocks.{p}.mlp.fc2.*
"""
import os
import pickle

import numpy as np

from refimpl.atomic import atomic_save
from refimpl.config import ModelConfig
from refimpl.params import check_params, num_param_sets, param_shapes
from iclgd.interop.npz_headers import read_npz_headers
from iclgd.interop.safe_pickle import load_pickle

ATTN_HAIKU = {"query": "W_q", "key": "W_k", "value": "W_v", "linear": "W_p"}
ATTN_TORCH = {"q_proj": "W_q", "k_proj": "W_k", "v_proj": "W_v", "o_proj": "W_p"}


def _numbered(base, i):
    """Haiku's unique names: base, base_1, base_2, ..."""
    return base if i == 0 else f"{base}_{i}"


def _mlp_entries(src, dst, weight="w", bias="b", layers=("linear", "linear_1")):
    return [(f"{src}/{layers[0]}/{weight}", f"{dst}.W1"), (f"{src}/{layers[0]}/{bias}", f"{dst}.b1"),
            (f"{src}/{layers[1]}/{weight}", f"{dst}.W2"), (f"{src}/{layers[1]}/{bias}", f"{dst}.b2")]


def haiku_names(cfg: ModelConfig):
    """{Haiku path under ROOT: our name} for every parameter of cfg."""
    if cfg.pos_enc == "concat":
        raise ValueError("config.pos_enc: 'concat' has no Haiku counterpart here (the public code "
                         "appends the encoding after the embedding, the oracle puts it in front of "
                         "the token); expected 'none' or 'add'")
    shapes, out = param_shapes(cfg), {}
    if "embed.W" in shapes:
        out["emb/w"] = "embed.W"
    if cfg.input_mlp:
        out.update(dict(_mlp_entries("input_mlp", "input_mlp")))
    for p in range(num_param_sets(cfg)):
        ours = f"layer{p}"
        attn = "multi_head_attention" if cfg.weight_tied else f"layer_{p}"
        out.update({f"{attn}/{h}/w": f"{ours}.attn.{n}" for h, n in ATTN_HAIKU.items()})
        ln1 = "l_norm/layer_norm" if cfg.weight_tied else f"norm_{p}"
        ln2 = "l_norm_1/layer_norm" if cfg.weight_tied else _numbered("layer_norm", p)
        mlp = "mlp" if cfg.weight_tied else _numbered("mlp", p)
        for path, ln in ((ln1, "ln1"), (ln2, "ln2")):
            out.update({f"{path}/{leaf}": f"{ours}.{ln}.{leaf}" for leaf in ("scale", "offset")})
        out.update(dict(_mlp_entries(mlp, f"{ours}.mlp")))
    return {h: n for h, n in out.items() if n in shapes}


def _haiku_zero_biases(cfg):
    """Haiku paths of biases the oracle's model lacks: accepted only when zero."""
    out = ["emb/b"] if cfg.embed_dim else []
    for p in range(num_param_sets(cfg)):
        attn = "multi_head_attention" if cfg.weight_tied else f"layer_{p}"
        out += [f"{attn}/{h}/b" for h in ATTN_HAIKU]
    return out


def torch_names(cfg: ModelConfig):
    """{state_dict key: (our name, transposed)} for every parameter of cfg."""
    shapes, out = param_shapes(cfg), {}
    out["embed.weight"] = ("embed.W", True)
    for key, ours in _mlp_entries("input_mlp", "input_mlp", "weight", "bias", ("fc1", "fc2")):
        out[key.replace("/", ".")] = (ours, ours.rsplit(".", 1)[1].startswith("W"))
    for p in range(num_param_sets(cfg)):
        b, ours = f"blocks.{p}", f"layer{p}"
        out.update({f"{b}.attn.{t}.weight": (f"{ours}.attn.{n}", True) for t, n in ATTN_TORCH.items()})
        for ln in ("ln1", "ln2"):
            out[f"{b}.{ln}.weight"] = (f"{ours}.{ln}.scale", False)
            out[f"{b}.{ln}.bias"] = (f"{ours}.{ln}.offset", False)
        for key, n in _mlp_entries(f"{b}/mlp", f"{ours}.mlp", "weight", "bias", ("fc1", "fc2")):
            out[key.replace("/", ".")] = (n, n.rsplit(".", 1)[1].startswith("W"))
    return {k: v for k, v in out.items() if v[0] in shapes}


GPT2_NAMES = ("read_in.W", "pos")  # two of the GPT-2 model's parameter names (refimpl/gpt2.py)


def check_not_gpt2(keys, label):
    """A one-line error for a file of the GPT-2 model's parameters (refimpl/gpt2.py: read_in.*,
    pos, block<l>.*), as our .npz, an exchange file (params/<name>) or a tree: the maps here
    cover the LSA transformer of refimpl/params.py only."""
    names = {k.removeprefix("params/") for k in keys}
    if all(n in names for n in GPT2_NAMES):
        raise ValueError(f"{label}: holds the GPT-2 model's parameters (read_in.W, pos, block<l>.*: "
                         f"refimpl/gpt2.py), which iclgd convert does not map: it converts the LSA "
                         f"transformer's parameters (refimpl/params.py) only. GPT-2 files of ours "
                         f"already carry the oracle's names; an exchange file goes to iclgd crosscheck")


# ----------------------------------------------------------------------------------------------
def _to_numpy(name, value):
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.dtype.type not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected float32 or float64 values, got dtype {value.dtype}")
    return value


def flatten_tree(tree, prefix=""):
    """A nested mapping (any depth) or a flat one -> {'/'-joined path: array}."""
    if not hasattr(tree, "items"):
        raise ValueError(f"tree: expected a mapping of parameters, got {type(tree).__name__}")
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if hasattr(value, "items"):
            out.update(flatten_tree(value, path))
        else:
            out[path] = value
    return out


def _check_shape(source, value, shape):
    if value.shape != tuple(shape):
        raise ValueError(f"{source}: expected shape {tuple(shape)} for this config, got {value.shape}")


def from_haiku(tree, cfg: ModelConfig, root=None):
    """The public code's Haiku parameters -> our flat named parameters (checked for cfg)."""
    flat = flatten_tree(tree)
    if root is None:
        roots = sorted({k.split("/", 1)[0] for k in flat})
        if len(roots) != 1:
            raise ValueError(f"root: the tree has top modules {roots}; pass root= to pick one")
        root = roots[0]
    outside = [k for k in flat if not k.startswith(root + "/")]
    if outside:
        raise ValueError(f"tree: key(s) {outside} are not under root {root!r}")
    rel = {k[len(root) + 1:]: v for k, v in flat.items()}
    names, shapes = haiku_names(cfg), param_shapes(cfg)
    zero_biases = _haiku_zero_biases(cfg)
    unknown = [f"{root}/{k}" for k in rel if k not in names and k not in zero_biases]
    if unknown:
        raise ValueError(f"tree: unknown parameter name(s) {unknown} for this config; expected "
                         f"{[f'{root}/{h}' for h in names]}")
    params, missing = {}, []
    for path, ours in names.items():
        if path not in rel:
            if ours.rsplit(".", 1)[1] in ("b1", "b2") and not ours.startswith("input_mlp"):
                continue  # the public MLP without biases (use_bias_p=False): zeros, set below
            missing.append(f"{root}/{path}")
            continue
        value = _to_numpy(f"{root}/{path}", rel[path])
        _check_shape(f"{root}/{path}", value, shapes[ours])
        params[ours] = value
    if missing:
        raise ValueError(f"tree: missing {missing} for this config")
    dtype = next(iter(params.values())).dtype
    for ours in names.values():
        params.setdefault(ours, np.zeros(shapes[ours], dtype))
    for path in zero_biases:
        if path in rel and np.any(_to_numpy(f"{root}/{path}", rel[path]) != 0):
            raise ValueError(f"{root}/{path}: expected zeros (the oracle's attention and embedding "
                             f"have no bias, SPEC 2.1), got a nonzero bias")
    return check_params({n: params[n] for n in shapes}, cfg)


def to_haiku(params, cfg: ModelConfig, root="transformer"):
    """Our parameters -> Haiku's {module path: {leaf: array}} under `root`."""
    check_params(params, cfg)
    tree = {}
    for path, ours in haiku_names(cfg).items():
        module, leaf = path.rsplit("/", 1)
        tree.setdefault(f"{root}/{module}", {})[leaf] = np.array(params[ours])
    return tree


def from_torch_state_dict(state_dict, cfg: ModelConfig):
    """A state_dict of the module described above (tensors or arrays) -> our parameters."""
    names, shapes = torch_names(cfg), param_shapes(cfg)
    unknown = [k for k in state_dict if k not in names]
    if unknown:
        raise ValueError(f"state_dict: unknown key(s) {unknown} for this config; expected {list(names)}")
    missing = [k for k in names if k not in state_dict]
    if missing:
        raise ValueError(f"state_dict: missing {missing} for this config")
    params = {}
    for key, (ours, transposed) in names.items():
        value = _to_numpy(key, state_dict[key])
        want = shapes[ours][::-1] if transposed else shapes[ours]
        _check_shape(f"state_dict[{key!r}]", value, want)
        params[ours] = np.ascontiguousarray(value.T if transposed else value)
    return check_params({n: params[n] for n in shapes}, cfg)


def to_torch_state_dict(params, cfg: ModelConfig):
    """Our parameters -> {state_dict key: numpy array} (wrap with torch.from_numpy to load)."""
    check_params(params, cfg)
    return {key: np.ascontiguousarray(params[ours].T if transposed else params[ours])
            for key, (ours, transposed) in torch_names(cfg).items()}


# ----------------------------------------------------------------------------------------------
def load_tree(path, trust_pickle=False):
    """A parameter tree from an .npz (flat '/'-joined keys) or a pickle (any nesting).

    A pickle is read by a restricted unpickler that admits only containers and NumPy arrays and
    refuses any other global (a pickle can run code when loaded, safe_pickle.py);
    trust_pickle=True reads it with plain pickle, for a file you trust.
    """
    label = f"IN {path}"
    if str(path).endswith(".npz"):
        read_npz_headers(path, label)  # a clean error for a non-archive; no object arrays
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if not os.path.isfile(path):
        raise ValueError(f"{label}: " + ("is a directory, expected a file" if os.path.isdir(path)
                                         else "no such file"))
    tree = load_pickle(path, trust=trust_pickle, label=label)
    if not hasattr(tree, "items"):
        raise ValueError(f"{label}: expected a pickled dict of parameters, got {type(tree).__name__}")
    return tree


def npz_name(path):
    """The name numpy.savez writes to: '.npz' appended to a name without it."""
    return str(path) if str(path).endswith(".npz") else f"{path}.npz"


def save_tree(path, tree):
    """Write a tree as an .npz with flat '/'-joined keys, atomically ('.npz' appended to a name
    without it, as numpy.savez does); returns the path written."""
    arrays = {k: _to_numpy(k, v) for k, v in flatten_tree(tree).items()}
    return atomic_save(npz_name(path), lambda f: np.savez(f, **arrays))


def save_pickle(path, tree):
    """Write a tree as a pickle, atomically; returns the path written."""
    return atomic_save(path, lambda f: pickle.dump(tree, f))
