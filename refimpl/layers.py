"""Dense layers of the oracle: linear, LayerNorm, GELU, the MLP, positional encoding, token clipping.

Every operation is a pair of pure functions:
    op_forward(x, params...) -> (out, cache)
    op_backward(dout, cache) -> (dx, {param name: gradient})
Every backward checks its dout like a forward input: exactly the forward output's shape and dtype,
finite (refimpl.validate.check_upstream).
Shape legend: B tasks, T tokens, D width (in), F width (out). Inputs may carry any number of
leading axes; the maps act on the last axis. All arithmetic stays in the inputs' dtype.
"""
import math

import numpy as np

from .validate import array_module, check_array, check_same_dtype, check_upstream

LN_EPS = 1e-5  # SPEC 2.3: LayerNorm eps
GELU_C = math.sqrt(2.0 / math.pi)  # tanh approximation constant (a Python float: keeps float32 float32)


def _sum_leading(x):
    """Sum over every axis but the last: the reduction of a weight gradient over tasks and tokens."""
    return x.reshape(-1, x.shape[-1]).sum(axis=0)


# ----------------------------------------------------------------------------------------------
# linear: y = x W (+ b)
def linear_forward(x, W, b=None):
    check_array("W", W, ndim=2)
    check_array("x", x)
    if x.ndim < 1 or x.shape[-1] != W.shape[0]:
        raise ValueError(f"x: expected last axis of size {W.shape[0]} (rows of W), got shape {x.shape}")
    if b is not None:
        check_array("b", b, shape=(W.shape[1],))
        check_same_dtype(x=x, W=W, b=b)
    else:
        check_same_dtype(x=x, W=W)
    out = x @ W  # (..., F)
    if b is not None:
        out = out + b
    return out, (x, W, b is not None)


def linear_backward(dout, cache):
    x, W, has_bias = cache
    check_upstream("dout", dout, x.shape[:-1] + W.shape[1:], x.dtype)  # out: (..., F)
    dx = dout @ W.T  # (..., D)
    x2 = x.reshape(-1, x.shape[-1])  # (M, D)
    d2 = dout.reshape(-1, dout.shape[-1])  # (M, F)
    grads = {"W": x2.T @ d2}  # (D, F)
    if has_bias:
        grads["b"] = d2.sum(axis=0)  # (F,)
    return dx, grads


# ----------------------------------------------------------------------------------------------
# LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * scale + offset
def layernorm_forward(x, scale, offset):
    check_array("x", x)
    check_array("scale", scale, shape=(x.shape[-1],))
    check_array("offset", offset, shape=(x.shape[-1],))
    check_same_dtype(x=x, scale=scale, offset=offset)
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., D)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1)
    rstd = 1.0 / np.sqrt(var + LN_EPS)  # (..., 1)
    xhat = xc * rstd  # (..., D)
    out = xhat * scale + offset  # (..., D)
    return out, (xhat, rstd, scale)


def layernorm_backward(dout, cache):
    xhat, rstd, scale = cache
    check_upstream("dout", dout, xhat.shape, xhat.dtype)  # out: (..., D)
    grads = {"scale": _sum_leading(dout * xhat), "offset": _sum_leading(dout)}
    dxhat = dout * scale  # (..., D)
    # d/dx of (x - mean) * rstd: the mean and the variance both depend on every x of the row
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))  # (..., D)
    return dx, grads


# ----------------------------------------------------------------------------------------------
# GELU, tanh approximation: 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
def gelu_forward(x):
    check_array("x", x)
    u = GELU_C * (x + 0.044715 * x**3)
    t = np.tanh(u)
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dout, cache):
    x, t = cache
    check_upstream("dout", dout, x.shape, x.dtype)
    du_dx = GELU_C * (1.0 + 3 * 0.044715 * x**2)
    dgelu = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx
    return dout * dgelu, {}


# ----------------------------------------------------------------------------------------------
# MLP: Linear(D -> F, bias) -> GELU -> Linear(F -> D, bias); SPEC 2.3 uses F = 4D
def mlp_forward(x, W1, b1, W2, b2):
    h, c1 = linear_forward(x, W1, b1)  # (..., F)
    a, cg = gelu_forward(h)  # (..., F)
    out, c2 = linear_forward(a, W2, b2)  # (..., D)
    return out, (c1, cg, c2)


def mlp_backward(dout, cache):
    c1, cg, c2 = cache  # dout is checked by linear_backward: the second linear's output is the MLP's
    da, g2 = linear_backward(dout, c2)
    dh, _ = gelu_backward(da, cg)
    dx, g1 = linear_backward(dh, c1)
    return dx, {"W1": g1["W"], "b1": g1["b"], "W2": g2["W"], "b2": g2["b"]}


# ----------------------------------------------------------------------------------------------
# sinusoidal positional encoding (a constant: it has no parameters and no gradient)
def sinusoidal_encoding(num_tokens, size, dtype=np.float64):
    """(T, P) table: column 2i is sin(t / 10000^(2i/P)), column 2i+1 is cos(t / 10000^(2i/P))."""
    t = np.arange(num_tokens, dtype=np.float64)[:, None]  # (T, 1)
    i = np.arange(size) // 2  # (P,)
    angle = t / np.power(10000.0, 2.0 * i / size)  # (T, P)
    return np.where(np.arange(size) % 2 == 0, np.sin(angle), np.cos(angle)).astype(dtype)


def posenc_concat_forward(x, size):
    """Put the (T, P) encoding IN FRONT of every token: (B, T, D) -> (B, T, P + D).

    The encoding goes first so that the last coordinate (the read-out, SPEC 2.6) stays the label.
    """
    check_array("x", x, ndim=3)
    B, T, _ = x.shape
    pe = array_module(x).asarray(sinusoidal_encoding(T, size, x.dtype))  # (T, P)
    pe = np.broadcast_to(pe, (B, T, size))  # (B, T, P)
    out = np.concatenate([pe, x], axis=-1)  # (B, T, P + D)
    return out, (size, out.shape, out.dtype)


def posenc_concat_backward(dout, cache):
    size, shape, dtype = cache
    check_upstream("dout", dout, shape, dtype)  # (B, T, P + D)
    return dout[..., size:], {}


def posenc_add_forward(x):
    check_array("x", x, ndim=3)
    out = x + array_module(x).asarray(sinusoidal_encoding(x.shape[1], x.shape[2], x.dtype))  # (B, T, D)
    return out, (out.shape, out.dtype)


def posenc_add_backward(dout, cache):
    shape, dtype = cache
    check_upstream("dout", dout, shape, dtype)  # (B, T, D)
    return dout, {}


# ----------------------------------------------------------------------------------------------
# token clipping: H <- clip(H, -c, c); the gradient passes only where the value was inside
def clip_forward(x, c):
    """Cache: (inside (..., D) bool, the output's dtype). x may hold inf: clipping bounds it."""
    check_array("x", x, finite=False)
    if not c > 0:
        raise ValueError(f"c: expected a clipping bound > 0, got {c!r}")
    inside = np.abs(x) <= c
    out = np.clip(x, -c, c)
    return out, (inside, out.dtype)


def clip_backward(dout, cache):
    inside, dtype = cache
    check_upstream("dout", dout, inside.shape, dtype)
    return dout * inside, {}
