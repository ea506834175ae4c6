"""The packed parameter vector of the fast backends: one pack and one unpack for every backend.

The order is refimpl.params.param_shapes(cfg) (the order of refimpl.params.flatten), with the
offsets of refimpl.params.param_offsets, so packing is a concatenation and unpacking a split into
views. `xp` is the array module of the arrays (numpy or cupy); unpack works on any array with
slicing and reshape (NumPy, CuPy, Numba device arrays).
    P   number of parameters (the vector's length)
"""
import math

import numpy as np

from refimpl.params import param_offsets

__all__ = ["pack", "unpack", "pack_like", "unpack_like", "param_offsets"]


def pack(params, cfg, xp=np):
    """{name: array} -> vector (P,) in param_shapes order, in the first parameter's dtype."""
    offs, _ = param_offsets(cfg)
    return pack_like(params, offs, xp)


def unpack(vector, cfg):
    """vector (P,) -> {name: view of `vector`} in param_shapes order."""
    offs, total = param_offsets(cfg)
    if tuple(vector.shape) != (total,):
        raise ValueError(f"vector: expected shape ({total},) for this config, got {tuple(vector.shape)}")
    return {n: vector[o:o + math.prod(s)].reshape(s) for n, (o, s) in offs.items()}


def pack_like(arrays, like, xp=np, dtype=None):
    """{name: array} -> one new vector, in the order of the names of `like` (a dict or sequence),
    in `dtype` (default: the dtype of the first of them)."""
    names = list(like)
    dtype = arrays[names[0]].dtype if dtype is None else dtype
    return xp.concatenate([xp.ravel(arrays[n]) for n in names]).astype(dtype, copy=False)


def unpack_like(vector, like):
    """vector -> {name: view of `vector`} with the names and shapes of `like` (in its order)."""
    out, i = {}, 0
    for name, a in like.items():
        out[name] = vector[i:i + a.size].reshape(a.shape)
        i += a.size
    return out
