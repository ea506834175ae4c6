"""numba-cpu fast path for one-block models: the training loss and its parameter gradients from the
query row alone, with the tasks side by side in SIMD lanes as in kernels.numba.lsa.

Which models (`supports(cfg)`): one block (num_layers 1) of softmax or linear attention, any heads and
key size, with or without the MLP and its LayerNorm, token clipping, dampening, `y_update` and
`include_query`; no LayerNorm before the attention (the public placement of a deep model), no
embedding, input MLP or positional encoding; causal masking changes nothing for the query, the last
token. kernels.numba.cpu asks kernels.numba.lsa first, so linear-attention models (with an MLP too)
train there; figure 12's softmax layers and benchmark case (c) train here. kernels.numba.cpu uses it for loss_and_grads and train_step, and
its per-task kernels for everything else (evaluation included).

The algebra. The read-out is the query's label after the block, so of every token only the query
row x_q (D,) is needed after the attention; keys and values enter only through the scores and the
weighted sum, and both reduce to products with shared weights (row-vector convention, C = X[:S]):
    q = x_q W_q,  score_s = x_s . (W_k^h q^h)  [/ sqrt(K), softmax over s],  P^h (S,)
    o^h = sum_s P^h_s v^h_s = (P^h C) W_v^h,   out = x_q + lam (o W_p)  [label column: y_update]
so a head costs O(S D + D K) per task instead of the (S D K) of its keys and values. The MLP (with
LN2 when layernorm) acts on that one row and only its label column reaches the read-out. The
backward is the same rank-one algebra: with do = W_p datt and dscore the softmax's backward,
    dW_v^h += (P^h C)^T do^h,  dP^h_s = x_s . (W_v^h do^h),  dW_k^h += (dscore^h C)^T q^h,
    dq^h = (dscore^h C) W_k^h,  dW_q += x_q^T dq,  dW_p += o^T datt.
These are the oracle's numbers (refimpl.loss.loss_and_grads) in another association: float64 agrees
to rounding (tests/kernels/test_numba_query_block.py).

Layout and determinism as kernels.numba.lsa: groups of NL tasks (8 in float64, 16 in float32),
chunks of groups fixed by B alone, lanes summed in lane order into each chunk's rows and the rows
summed in chunk order, so the bits never depend on the thread count.
Kernel: kernels.numba.query_block_kernels.query_block_kernel (prange over chunks).
"""
import math

import numpy as np
from numba import set_parallel_chunksize

from kernels.numba.layout import build_constants, cached_plan
from kernels.numba.lsa_lanes import lane_count, slp_vectorizer
from kernels.numba.query_block_kernels import num_rows, query_block_kernel

MAX_CHUNKS = 16  # gradient rows; a function of B only


def supports(cfg):
    """True for the one-block models of the module docstring."""
    return (cfg.num_layers == 1 and not cfg.layer_has_ln(0) and cfg.embed_dim == 0 and not cfg.input_mlp
            and cfg.pos_enc == "none" and (cfg.mlp or cfg.layer_attention(0) == "softmax"))


class _Plan:
    """Workspace for one (cfg, T, B, dtype), built once and reused."""

    def __init__(self, cfg, T, B, dtype):
        D, H, K = cfg.model_dim, cfg.num_heads, cfg.key_size
        HK = H * K
        F = cfg.mlp_widening * D if cfg.mlp else 1
        S = T if cfg.include_query else T - 1
        NL = lane_count(dtype)
        groups = -(-B // NL)
        self.gpc = max(1, -(-groups // MAX_CHUNKS))  # groups per chunk
        nch = -(-groups // self.gpc)
        NW = max(D, HK, F, S, 6)
        e = lambda *shape: np.empty((nch,) + shape, dtype)  # noqa: E731
        self.Xs, self.Vs = e(T, D, NL), e(num_rows(H), NW, NL)
        self.lanes = (e(D, HK, NL), e(D, HK, NL), e(D, HK, NL), e(HK, D, NL), e(D, F, NL), e(5, NW, NL))
        self.rows = (e(D, HK), e(D, HK), e(D, HK), e(HK, D), e(D, F), e(5, NW))
        self.SQ = e()
        self.S, self.F = S, F
        self.cst = build_constants(cfg, dtype, B)
        one = lambda *shape: np.ones(shape, dtype)  # noqa: E731
        self.no_ln, self.no_mlp = (one(D), one(D)), (one(D, 1), one(1), one(1, D), one(D))

    def buffers(self):
        return (self.Xs, self.Vs) + self.lanes + self.rows + (self.SQ,)


_PLANS = {}


def plan(cfg, T, B, dtype):
    return cached_plan(_PLANS, _Plan, cfg, T, B, dtype, limit=8)


def loss_and_grads(params, tok, y, cfg):
    """(loss, per-layer losses (1,), {name: gradient}) as refimpl.loss.loss_and_grads, for models
    with supports(cfg); tok (B, T, D) and y (B,) contiguous, already checked by the caller."""
    B, T, _ = tok.shape
    dtype = tok.dtype
    pl = plan(cfg, T, B, dtype)
    c = lambda name: np.ascontiguousarray(params[name], dtype=dtype)  # noqa: E731
    att = [c(f"layer0.attn.{n}") for n in ("W_q", "W_k", "W_v", "W_p")]
    ln = cfg.mlp and cfg.layernorm
    norm = (c("layer0.ln2.scale"), c("layer0.ln2.offset")) if ln else pl.no_ln
    mlp = tuple(c(f"layer0.mlp.{n}") for n in ("W1", "b1", "W2", "b2")) if cfg.mlp else pl.no_mlp
    softmax = cfg.layer_attention(0) == "softmax"
    t = dtype.type
    old = set_parallel_chunksize(1)  # chunks handed out one at a time (a dynamic schedule)
    try:
        with slp_vectorizer():  # read when the kernel is compiled (a call without a cache entry)
            query_block_kernel(tok, y, pl.S, cfg.num_heads, *att, *norm, *mlp, softmax,
                               t(math.sqrt(cfg.key_size)), t(cfg.dampening), cfg.y_update, t(cfg.token_clip),
                               cfg.mlp, ln, t(cfg.model_dim), t(1.0 / B), pl.cst, pl.gpc, *pl.buffers())
    finally:
        set_parallel_chunksize(old)
    RQ, RK, RV, RP, R1, RVEC = (r.sum(axis=0) for r in pl.rows)  # chunk order: deterministic
    D, F = cfg.model_dim, pl.F
    grads = {"layer0.attn.W_q": RQ, "layer0.attn.W_k": RK, "layer0.attn.W_v": RV, "layer0.attn.W_p": RP}
    if cfg.mlp:
        W2, b2 = np.zeros((F, D), dtype), np.zeros(D, dtype)
        W2[:, D - 1], b2[D - 1] = RVEC[1, :F], RVEC[4, 0]  # only the label column reaches the read-out
        grads.update({"layer0.mlp.W1": R1, "layer0.mlp.b1": np.ascontiguousarray(RVEC[0, :F]),
                      "layer0.mlp.W2": W2, "layer0.mlp.b2": b2})
    if ln:
        grads["layer0.ln2.scale"] = np.ascontiguousarray(RVEC[2, :D])
        grads["layer0.ln2.offset"] = np.ascontiguousarray(RVEC[3, :D])
    loss = (0.5 * pl.SQ.sum() / B).astype(dtype)
    return loss, np.array([loss], dtype), grads


def fill_buffers(cfg, num_tokens, batch, dtype, value):
    """Poison every persistent buffer (a test fills them with NaN: nothing may be read unwritten)."""
    for a in plan(cfg, num_tokens, batch, dtype).buffers():
        a[...] = value
