"""Adam with bias correction and global-norm gradient clipping (SPEC 3), hand-written.

    g <- g * min(1, c / ||g||_2)          the norm over ALL parameters together (c = 0: off)
    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
The state is a plain dict {"t": int, "m": {name: array}, "v": {name: array}}; nothing is mutated.
"""
import numpy as np

from .config import AdamConfig
from .validate import check_array


def adam_init(params):
    return {"t": 0,
            "m": {k: np.zeros_like(v) for k, v in params.items()},
            "v": {k: np.zeros_like(v) for k, v in params.items()}}


def global_norm(grads):
    """sqrt(sum of g^2) over all gradients, in float64. Where the plain sum of squares overflows but
    every gradient is finite (entries above ~1e154), the norm is taken of g / max|g| and scaled back,
    so that clipping still applies instead of an inf norm zeroing the update."""
    with np.errstate(over="ignore"):  # an overflow is handled below
        norm = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))
    return norm if np.isfinite(norm) else scaled_norm(list(grads.values()))


def scaled_norm(arrays):
    """The 2-norm of all entries of `arrays` without overflow: max|g| * ||g / max|g|||; NaN or inf
    when an entry is (the divergence checks name it)."""
    big = max(float(np.max(np.abs(np.asarray(a, dtype=np.float64)), initial=0.0)) for a in arrays)
    if not np.isfinite(big) or big == 0.0:
        return big
    return big * float(np.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64) / big)))
                                    for a in arrays)))


def clip_by_global_norm(grads, max_norm):
    """(clipped grads, the norm before clipping). max_norm = 0 turns clipping off."""
    norm = global_norm(grads)
    if max_norm > 0 and norm > max_norm:
        factor = max_norm / norm
        grads = {k: g * g.dtype.type(factor) for k, g in grads.items()}
    return grads, norm


def adam_update(params, grads, state, cfg: AdamConfig):
    """One step: returns (new params, new state, gradient norm before clipping)."""
    if set(grads) != set(params):
        raise ValueError(f"grads: names {sorted(set(grads) ^ set(params))} do not match params")
    for k, g in grads.items():
        check_array(f"grads[{k!r}]", g, shape=params[k].shape)
    grads, norm = clip_by_global_norm(grads, cfg.grad_clip)
    t = state["t"] + 1
    bc1 = 1.0 - cfg.b1**t  # bias corrections
    bc2 = 1.0 - cfg.b2**t
    new_params, m_new, v_new = {}, {}, {}
    for k, p in params.items():
        g = grads[k]
        m = cfg.b1 * state["m"][k] + (1.0 - cfg.b1) * g
        v = cfg.b2 * state["v"][k] + (1.0 - cfg.b2) * (g * g)
        step = (m / p.dtype.type(bc1)) / (np.sqrt(v / p.dtype.type(bc2)) + p.dtype.type(cfg.eps))
        new_params[k] = p - p.dtype.type(cfg.lr) * step
        m_new[k], v_new[k] = m, v
    return new_params, {"t": t, "m": m_new, "v": v_new}, norm
