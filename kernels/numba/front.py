"""numba-cpu for models with a token-wise front end (SPEC 2.5: embedding, input MLP).

The front end acts on every token on its own (no token sees another), so it runs on all B*T tokens
at once: its matmuls as BLAS calls on (B*T, width) matrices and the GELU as a parallel Numba loop
(its tanh from one exp, kept for the backward); the blocks then run on the task kernel
(kernels.numba.cpu) as a model without a front end whose tokens are the front end's output H. The per-task kernel does the
same arithmetic token by token with scalar loops; on the sine model (E = 40, F = 160) the MLP is
nine tenths of the step there, here a few BLAS calls.

Shape legend: B tasks, T tokens, M = B*T token rows, D_in token width (after a concatenated
encoding), E embedding width (= D, the model width), F input-MLP width.
    X = tokens [concat encoding]            (M, D_in)
    E0 = X W_emb                            (M, E)     or X without an embedding
    h = E0 W1 + b1; g = gelu(h)             (M, F)
    H = E0 + g W2 + b2 [+ added encoding]   (B, T, D)  the blocks' input
Backward in reverse, as refimpl.model.front_backward: dE0 = dH + (gelu'(h) * (dH W2^T)) W1^T.
"""
import dataclasses

import numpy as np
from numba import njit, prange

from refimpl import layers

from kernels.numba.layout import build_constants
from kernels.numba.ops import C_GELU_A, C_GELU_C, C_HALF, C_ONE, G_HALF, G_ONE, gelu_consts, gelu_tanh

GELU_PIECE = 4096  # elements per parallel piece of the GELU loops


def supports(cfg):
    """Models whose front end has an embedding or an input MLP (what this module speeds up)."""
    return cfg.embed_dim > 0 or cfg.input_mlp


def block_config(cfg):
    """The same blocks as a model without a front end: tokens are the front end's output H."""
    return dataclasses.replace(cfg, token_dim=cfg.model_dim, embed_dim=0, input_mlp=False, pos_enc="none")


def is_front_param(name):
    return name.startswith("embed.") or name.startswith("input_mlp.")


@njit(cache=True, parallel=True, error_model="numpy")
def gelu_kernel(h, g, t, cst):
    """g = gelu(h) and t = tanh(c (h + a h^3)) (kept for the backward), flat arrays, in pieces:
    kernels.numba.ops.gelu_fwd's formula and tanh (ops.gelu_tanh)."""
    n = h.size
    k = gelu_consts(cst)
    for p in prange((n + GELU_PIECE - 1) // GELU_PIECE):
        for i in range(p * GELU_PIECE, min(n, (p + 1) * GELU_PIECE)):
            x = h[i]
            ti = gelu_tanh(x, k)
            t[i] = ti
            g[i] = k[G_HALF] * x * (k[G_ONE] + ti)


@njit(cache=True, parallel=True)
def gelu_backward_kernel(dg, h, t, out, cst):
    """out = dg * gelu'(h) with the forward's t, flat arrays (out may alias dg):
    kernels.numba.ops.gelu_bwd's arithmetic without recomputing the tanh."""
    n = h.size
    a3 = cst[C_GELU_A] + cst[C_GELU_A] + cst[C_GELU_A]  # 3 a in the data's dtype
    for p in prange((n + GELU_PIECE - 1) // GELU_PIECE):
        for i in range(p * GELU_PIECE, min(n, (p + 1) * GELU_PIECE)):
            x = h[i]
            ti = t[i]
            du = cst[C_GELU_C] * (cst[C_ONE] + a3 * (x * x))
            out[i] = dg[i] * (cst[C_HALF] * (cst[C_ONE] + ti) + cst[C_HALF] * x * (cst[C_ONE] - ti * ti) * du)


def front_forward(params, tokens, cfg):
    """tokens (B, T, D_in) -> (H (B, T, D), cache) for cfg's front end (supports(cfg))."""
    B, T, _ = tokens.shape
    dtype = tokens.dtype
    X = tokens
    if cfg.pos_enc == "concat":
        X, _ = layers.posenc_concat_forward(X, cfg.pos_enc_size)  # (B, T, P + D_in)
    X = np.ascontiguousarray(X).reshape(B * T, -1)  # (M, D_in)
    cache = {"shape": tokens.shape, "dtype": dtype, "X": X, "cst": build_constants(cfg, dtype, B)}
    E0 = X @ params["embed.W"] if cfg.embed_dim else X  # (M, E)
    H = E0
    if cfg.input_mlp:
        h = E0 @ params["input_mlp.W1"] + params["input_mlp.b1"]  # (M, F)
        g, t = np.empty_like(h), np.empty_like(h)
        gelu_kernel(h.reshape(-1), g.reshape(-1), t.reshape(-1), cache["cst"])
        H = E0 + (g @ params["input_mlp.W2"] + params["input_mlp.b2"])  # (M, E)
        cache.update(E0=E0, h=h, g=g, t=t)
    H = H.reshape(B, T, -1)  # (B, T, D)
    if cfg.pos_enc == "add":
        H, _ = layers.posenc_add_forward(H)
    return np.ascontiguousarray(H), cache


def front_backward(dH, params, cache, cfg, weights=True):
    """dH (B, T, D) -> (dtokens (B, T, D_in), {front parameter: gradient}); weights=False skips
    the parameter gradients (an input gradient only, for the evaluation metrics)."""
    B, T, D_in = cache["shape"]
    d = np.ascontiguousarray(dH).reshape(B * T, -1)  # (M, D); the added encoding passes dH through
    grads = {}
    dE0 = d
    if cfg.input_mlp:
        dg = d @ params["input_mlp.W2"].T  # (M, F)
        gelu_backward_kernel(dg.reshape(-1), cache["h"].reshape(-1), cache["t"].reshape(-1), dg.reshape(-1),
                             cache["cst"])  # dh
        if weights:
            grads["input_mlp.W2"] = cache["g"].T @ d  # (F, E)
            grads["input_mlp.b2"] = d.sum(axis=0)
            grads["input_mlp.W1"] = cache["E0"].T @ dg  # (E, F)
            grads["input_mlp.b1"] = dg.sum(axis=0)
        dE0 = d + dg @ params["input_mlp.W1"].T  # (M, E): the residual and the MLP branch
    dX = dE0
    if cfg.embed_dim:
        if weights:
            grads["embed.W"] = cache["X"].T @ dE0  # (D_in', E)
        dX = dE0 @ params["embed.W"].T  # (M, D_in')
    dX = dX.reshape(B, T, -1)
    if cfg.pos_enc == "concat":
        dX = dX[..., cfg.pos_enc_size:]
    return np.ascontiguousarray(dX), grads
