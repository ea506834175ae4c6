"""numba-cpu fast path for linear-self-attention models: the training loss and its parameter
gradients computed in parameter space, with eight tasks (sixteen in float32) side by side in every
SIMD operation, and the evaluation's read-outs and query gradient from the same kernel.

Which models (`supports(cfg)`): linear attention in every layer, with or without an MLP after it
(fig8's models), no LayerNorm, embedding, input MLP or positional encoding; any depth, weight
tying, number of heads, key size, dampening, `y_update`, token clipping and `include_query`. It
mirrors refimpl.loss.loss_and_grads for them (float64: to rounding; float32 computed in float32);
kernels.numba.cpu uses it for loss_and_grads, train_step and evaluation, and its general per-task
kernels for everything else. The MLP runs on the same lane products (kernels.numba.lsa_mlp): on
every token of a deep layer, and on the query row alone in the last application.

Shape legend: T tokens, D token width, S key tokens (T - 1, or T with include_query), H heads,
K key size, L applications, Lp parameter sets (1 when weight-tied, else L), NL tasks per group.

The algebra (row-vector convention of refimpl.attention; X (T, D) one task's tokens, C = X[:S]):
    Out = sum_h (X W_q^h)(C W_k^h)^T (C W_v^h) W_p^h = sum_h X W_KQ^h A W_PV^h
    W_KQ^h = W_q^h W_k^h^T, W_PV^h = W_v^h W_p^h   (D, D), shared by all tasks, made on the host
    A = C^T C                                      (D, D) per task, symmetric: S D (D+1)/2 products
This is the associativity of linear attention taken all the way to the weights: a layer costs
3 T D^2 + S D^2 / 2 multiply-adds per task (U = X W_KQ, V = U A, Out = V W_PV). The last application
only has to produce the query's label coordinate: u = W_KQ^h^T q, v = A u, out = v . W_PV^h[:, -1].
Backward of a layer, per head, from dOut (the gradient of the attention output):
    dV = dOut W_PV^T   dW_PV += V^T dOut   dU = dV A   dA += U^T dV
    dW_KQ += X^T dU    dX += dU W_KQ^T
    dX[:S] += C (dA + dA^T)                           (skipped for the first application)
and on the host dW_q = dW_KQ W_k, dW_k = dW_KQ^T W_q, dW_v = dW_PV W_p^T, dW_p = W_v^T dW_PV.

Layout: tasks are taken in groups of NL (8 in float64, 16 in float32), stored innermost ((T, D, NL)
per group). The products (kernels.numba.lsa_products) keep the NL lanes in lane tuples of NL scalars,
which LLVM's SLP vectoriser turns into packed instructions (a tuple is 64 bytes in either dtype: one
AVX-512 register or two AVX2 registers, so float32 does twice the tasks per instruction). Numba
compiles with that vectoriser off (NUMBA_SLP_VECTORIZE=0), so `loss_and_grads` turns it on while
the kernel is compiled: about 2x on the deep model. A last, partial group is padded with zero tokens
and zero loss gradient, which contribute nothing.

Kernel (`@njit(cache=True, parallel=True)`): kernels.numba.lsa_kernels.lsa_kernel, prange over
chunks of groups. Determinism: each chunk adds its tasks' gradients per lane in task order, sums
its lanes in lane order into its own row, and rows are summed in chunk order; chunks depend on B
(and the dtype's NL) alone, so every run gives the same bits whatever the thread count.
"""
import numpy as np
from numba import set_parallel_chunksize

from kernels.numba.layout import build_constants, cached_plan
from kernels.numba.lsa_kernels import lsa_kernel
from kernels.numba.lsa_lanes import lane_count, slp_vectorizer

MAX_CHUNKS = 64  # gradient rows; a function of B only
MLP_CHUNKS = 16  # with an MLP (its lane accumulators are zeroed and summed once per chunk)
TRAIN, READOUTS_AND_QUERY_GRADIENT, READOUTS = 0, 1, 2  # lsa_kernel's modes (its `evaluate`)


def supports(cfg):
    """True when every application is a linear self-attention, with or without an MLP (see the
    module docstring)."""
    return (cfg.attention == "linear" and not cfg.first_layer_softmax and not cfg.layernorm
            and cfg.embed_dim == 0 and not cfg.input_mlp and cfg.pos_enc == "none")


# ------------------------------------------------------------------------------------ host side

class _Plan:
    """Workspace for one (cfg, T, B, dtype), built once and reused."""

    def __init__(self, cfg, T, B, dtype):
        D, H, L = cfg.model_dim, cfg.num_heads, cfg.num_layers
        Lp = 1 if cfg.weight_tied else L
        NL = lane_count(dtype)  # tasks per SIMD group
        groups = -(-B // NL)
        self.gpc = max(1, -(-groups // (MLP_CHUNKS if cfg.mlp else MAX_CHUNKS)))  # groups per chunk
        nch = -(-groups // self.gpc)
        e = lambda *shape: np.empty((nch,) + shape, dtype)  # noqa: E731
        self.Xs = e(L + 1, T, D, NL)
        self.Zs = e(L, T, D, NL) if L > 1 else None  # None: compiled without the deep layers
        self.As = e(L, D, D, NL)
        self.Us, self.Vs = e(L, H, T, D, NL), e(L, H, T, D, NL)
        self.tmp, self.dA, self.small = e(4, T, D, NL), e(D, D, NL), e(3, max(D, 4), NL)
        self.dW_KQ_lanes, self.dW_PV_lanes = e(Lp, H, D, D, NL), e(Lp, H, D, D, NL)
        self.dW_KQ_rows, self.dW_PV_rows = e(Lp, H, D, D), e(Lp, H, D, D)
        self.SQ = e(L)
        self.no_rd, self.no_dq = np.empty((L, 1), dtype), np.empty((1, D), dtype)  # training: unused
        self.players = np.array([cfg.param_layer(l) for l in range(L)], np.int64)
        self.cst = build_constants(cfg, dtype, B)
        if cfg.mlp:
            F = cfg.mlp_widening * D
            self.HIDs = e(L, T, F, NL)
            self.mws = (e(L, T, F, NL), e(L, T, D, NL), e(T, F, NL), e(T, F, NL), e(T, D, NL), e(3, D, NL),
                        e(Lp, D, F, NL), e(Lp, 1, F, NL), e(Lp, F, D, NL), e(Lp, 1, D, NL),
                        e(Lp, D, F), e(Lp, 1, F), e(Lp, F, D), e(Lp, 1, D))
        else:  # Numba drops the MLP's code (HIDs None); the tuple's arrays are never touched
            self.HIDs, self.mws = None, tuple(np.empty((1,) * k, dtype) for k in (5, 5, 4, 4, 4, 4, 5, 5, 5, 5,
                                                                                      4, 4, 4, 4))

    def buffers(self):
        return (self.Xs, self.Zs, self.As, self.Us, self.Vs, self.tmp, self.dA, self.small,
                self.dW_KQ_lanes, self.dW_PV_lanes, self.dW_KQ_rows, self.dW_PV_rows, self.SQ)

    def mlp_buffers(self):
        return (self.HIDs,) + self.mws if self.HIDs is not None else ()


_PLANS = {}


def plan(cfg, T, B, dtype):
    return cached_plan(_PLANS, _Plan, cfg, T, B, dtype, limit=8)


def _heads(W, H, axis):
    """W (D, H*K) -> (H, D, K) for axis 1; W_p (H*K, D) -> (H, K, D) for axis 0."""
    if axis == 1:
        D, HK = W.shape
        return W.reshape(D, H, HK // H).transpose(1, 0, 2)
    HK, D = W.shape
    return W.reshape(H, HK // H, D)


def parameter_space(params, cfg):
    """(W_KQ, W_PV) (Lp, H, D, D) with W_KQ^h = W_q^h W_k^h^T and W_PV^h = W_v^h W_p^h, and the
    per-head views (W_q^h, W_k^h, W_v^h, W_p^h) of every parameter set."""
    H = cfg.num_heads
    Lp = 1 if cfg.weight_tied else cfg.num_layers
    views = []
    for p in range(Lp):
        pre = f"layer{p}.attn."
        views.append((_heads(params[pre + "W_q"], H, 1), _heads(params[pre + "W_k"], H, 1),
                      _heads(params[pre + "W_v"], H, 1), _heads(params[pre + "W_p"], H, 0)))
    W_KQ = np.stack([q @ k.transpose(0, 2, 1) for q, k, _, _ in views])  # (Lp, H, D, D)
    W_PV = np.stack([v @ o for _, _, v, o in views])  # (Lp, H, D, D)
    return W_KQ, W_PV, views


def mlp_weights(params, cfg, dtype):
    """(W1 (Lp, D, F), b1 (Lp, F), W2 (Lp, F, D), b2 (Lp, D), W1^T, W2^T) of every parameter set,
    or a tuple of placeholders without an MLP."""
    if not cfg.mlp:
        return tuple(np.empty((1,) * k, dtype) for k in (3, 2, 3, 2, 3, 3))
    Lp = 1 if cfg.weight_tied else cfg.num_layers
    st = lambda n: np.ascontiguousarray(np.stack([params[f"layer{p}.mlp.{n}"] for p in range(Lp)]))  # noqa: E731
    W1, W2 = st("W1"), st("W2")
    return (W1, st("b1"), W2, st("b2"), np.ascontiguousarray(W1.transpose(0, 2, 1)),
            np.ascontiguousarray(W2.transpose(0, 2, 1)))


def _run(params, tok, y, cfg, evaluate, RD, DQ):
    """lsa_kernel on the tasks tok (B, T, D); returns the plan and the per-head views."""
    B, T, _ = tok.shape
    dtype = tok.dtype
    pl = plan(cfg, T, B, dtype)
    W_KQ, W_PV, views = parameter_space(params, cfg)
    S = T if cfg.include_query else T - 1
    transposed = lambda a: np.ascontiguousarray(a.transpose(0, 1, 3, 2))  # noqa: E731
    old = set_parallel_chunksize(1)  # chunks handed out one at a time (a dynamic schedule)
    try:
        with slp_vectorizer():  # read when the kernel is compiled (a call without a cache entry)
            lsa_kernel(tok, y, np.ascontiguousarray(W_KQ), np.ascontiguousarray(W_PV),
                       transposed(W_PV), transposed(W_KQ), pl.players, S, dtype.type(cfg.dampening),
                       cfg.y_update, dtype.type(cfg.token_clip), dtype.type(1.0 / B), pl.gpc,
                       *pl.buffers(), evaluate, RD, DQ, pl.HIDs, mlp_weights(params, cfg, dtype), pl.mws,
                       pl.cst)
    finally:
        set_parallel_chunksize(old)
    return pl, views


def readouts_and_query_gradient(params, tok, cfg):
    """(readouts (L, B), d (final read-out) / d (query token) (B, D)) for models with
    supports(cfg): what refimpl.model_forward and the backward of the final read-out give (the
    query row of refimpl.model.prediction_input_gradient), from the training kernel itself."""
    B, T, D = tok.shape
    RD = np.full((cfg.num_layers, B), np.nan, tok.dtype)  # (L, B)
    DQ = np.full((B, D), np.nan, tok.dtype)  # (B, D)
    _run(params, tok, np.zeros(B, tok.dtype), cfg, READOUTS_AND_QUERY_GRADIENT, RD, DQ)
    return RD, DQ


def readouts(params, tok, cfg):
    """Every application's read-out (L, B), as refimpl.model_forward gives them, for models with
    supports(cfg): the training kernel's forward alone (what a loss evaluation needs)."""
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, tok.dtype)
    RD = np.full((cfg.num_layers, B), np.nan, tok.dtype)  # (L, B)
    _run(params, tok, np.zeros(B, tok.dtype), cfg, READOUTS, RD, pl.no_dq)
    return RD


def loss_and_grads(params, tok, y, cfg):
    """(loss, per-layer losses (L,), {name: gradient}) as refimpl.loss.loss_and_grads, for models
    with supports(cfg); tok (B, T, D) and y (B,) contiguous, already checked by the caller."""
    B = tok.shape[0]
    dtype = tok.dtype
    pl0 = plan(cfg, tok.shape[1], B, dtype)
    pl, views = _run(params, tok, y, cfg, TRAIN, pl0.no_rd, pl0.no_dq)
    dW_KQ = pl.dW_KQ_rows.sum(axis=0)  # (Lp, H, D, D), chunk order: deterministic
    dW_PV = pl.dW_PV_rows.sum(axis=0)  # (Lp, H, D, D)
    grads = {}
    for p, (q, k, v, o) in enumerate(views):
        pre = f"layer{p}.attn."
        H, D, K = q.shape
        grads[pre + "W_q"] = (dW_KQ[p] @ k).transpose(1, 0, 2).reshape(D, H * K)  # dW_KQ^h W_k^h
        grads[pre + "W_k"] = (dW_KQ[p].transpose(0, 2, 1) @ q).transpose(1, 0, 2).reshape(D, H * K)
        grads[pre + "W_v"] = (dW_PV[p] @ o.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(D, H * K)
        grads[pre + "W_p"] = (v.transpose(0, 2, 1) @ dW_PV[p]).reshape(H * K, D)  # W_v^h^T dW_PV^h
    if cfg.mlp:
        W1, b1, W2, b2 = (r.sum(axis=0) for r in pl.mws[10:])  # (Lp, ...) chunk order
        for p in range(len(views)):
            pre = f"layer{p}.mlp."
            grads.update({pre + "W1": W1[p], pre + "b1": b1[p, 0], pre + "W2": W2[p], pre + "b2": b2[p, 0]})
    per_layer = (0.5 * pl.SQ.sum(axis=0) / B).astype(dtype)  # (L,)
    return per_layer[-1], per_layer, grads


def fill_buffers(cfg, num_tokens, batch, dtype, value):
    """Poison every persistent buffer (a test fills them with NaN: nothing may be read unwritten)."""
    pl = plan(cfg, num_tokens, batch, dtype)
    for a in pl.buffers() + pl.mlp_buffers():
        if a is not None:
            a[...] = value
