"""Adam with global-norm clipping for the Numba backends (numba-cpu and numba-cuda), written once.

Mirrors refimpl.optim.adam_update: with c = clip_factor (max_norm / ||g|| when ||g|| > max_norm > 0,
else exactly 1) and bias corrections bias1 = 1 - b1^t, bias2 = 1 - b2^t,
    g <- c g;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr (m / bias1) / (sqrt(v / bias2) + eps)
The scalars are `AdamHyper` in the parameters' dtype (float32 data is updated in float32), built by
`adam_hyper`; `adam_element` updates one entry and is called from an `@njit` loop (numba-cpu) and
from a `@cuda.jit` kernel (numba-cuda, where it compiles as a device function).
"""
import math
from typing import NamedTuple

import numpy as np
from numba import njit


class AdamHyper(NamedTuple):
    """The Adam scalars of step t, each a scalar of the parameters' dtype."""
    b1: float
    one_minus_b1: float
    b2: float
    one_minus_b2: float
    bias1: float  # 1 - b1^t
    bias2: float  # 1 - b2^t
    eps: float
    lr: float
    clip_factor: float  # gradients are multiplied by it (1 when not clipping: g * 1 = g)


def clip_factor(adam_cfg, norm):
    """max_norm / norm when clipping applies (grad_clip > 0 and norm > grad_clip), else 1.0."""
    c = adam_cfg.grad_clip
    return c / norm if (c > 0 and norm > c) else 1.0


def adam_hyper(adam_cfg, t, dtype, factor=1.0):
    """AdamHyper of step t (t >= 1) in `dtype`, computed in float64 as refimpl.optim does, then
    rounded once; `factor` is the clipping factor (numba-cuda computes it on the device instead)."""
    cast = np.dtype(dtype).type
    b1, b2 = adam_cfg.b1, adam_cfg.b2
    return AdamHyper(*(cast(x) for x in (b1, 1.0 - b1, b2, 1.0 - b2, 1.0 - b1**t, 1.0 - b2**t,
                                          adam_cfg.eps, adam_cfg.lr, factor)))


@njit(cache=True)
def adam_element(p, m, v, i, g_i, h):
    """Adam on entry i of the flat vectors p, m, v, given the already clipped gradient g_i."""
    m[i] = h.b1 * m[i] + h.one_minus_b1 * g_i
    v[i] = h.b2 * v[i] + h.one_minus_b2 * (g_i * g_i)
    step = (m[i] / h.bias1) / (math.sqrt(v[i] / h.bias2) + h.eps)
    p[i] = p[i] - h.lr * step


@njit(cache=True)
def adam_kernel(p, g, m, v, h):
    """Clipping (g * h.clip_factor) and Adam in place on flat vectors (numba-cpu)."""
    for i in range(p.shape[0]):
        adam_element(p, m, v, i, g[i] * h.clip_factor, h)
