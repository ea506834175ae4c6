"""numba-cpu's GPT-2 model (refimpl.gpt2, SPEC 2.7) on the host: the steps of gpt2_forward and
gpt2_backward in the oracle's order, each a kernel of kernels/numba/gpt2.py on all B*T tokens at
once, on buffers kept per (config, T, B, dtype). kernels.numba.cpu dispatches here on a GPT2Config.

Shape legend: B prompts, n = T/2 read-outs per prompt, T tokens, d token width, M = B*T token rows,
R = B*n read-out rows, E model width, nh heads, F MLP width, L blocks, P parameters.
    H = tokens W_in + b_in + pos[:T]                                  (M, E)  the residual stream
    per block l: a_in = LN1(H); qkv = a_in [W_q W_k W_v] + [b_q b_k b_v] (M, 3E); o = heads(qkv)
                 H += o W_p + b_p; m_in = LN2(H); h = m_in W1 + b1; g = gelu(h) (M, F); H += g W2 + b2
    Hx = H at the x positions (R, E); Hf = LN_f(Hx); pred = Hf w_out + b_out (R, 1) -> (B, n)
The three attention input products are one product with [W_q W_k W_v] (E, 3E), concatenated per call.
Only the x positions are read out, so the final LayerNorm runs on those rows alone (its backward
gives 0 on the others, as the oracle's does). Backward: the same steps in reverse; every parameter
gradient is written into one vector (P,) in refimpl.gpt2.param_shapes order, the layout
kernels.numba.cpu's Adam updates in place.

The products call the BLAS that Numba uses (SciPy's) from several threads at once, one row block
each: `blas_one_thread` sets that BLAS to one thread on first use (a BLAS that spreads every call
over all cores, called from every core, runs many times slower). Where it cannot be set, the
products' blocks run on one Numba thread and the BLAS threads itself.
"""
import contextlib
import ctypes
import functools
import math

import numba
import numpy as np

from refimpl import gpt2 as oracle
from refimpl.layers import GELU_C, LN_EPS
from refimpl.validate import check_array, check_same_dtype, check_upstream

from kernels.numba import front
from kernels.numba.gpt2 import (KERNELS, attention_backward_kernel, attention_forward_kernel,
                                layernorm_backward_kernel, layernorm_forward_kernel, linear_backward_kernel,
                                linear_forward_kernel)
from kernels.numba.layout import cached_plan
from kernels.numba.ops import C_GELU_A, C_GELU_C, C_HALF, C_LN_EPS, C_NEG_INF, C_ONE, C_SQRT_K, NUM_CONSTS

ROW_BLOCK = 128  # rows per block of the row-parallel work (products, LayerNorm)
MAX_CHUNKS = 4  # row chunks of a weight gradient's sum; their partial sums are added in chunk order
CHUNK_ROWS = 64  # fewest rows per chunk
ALL_KERNELS = KERNELS + (front.gelu_kernel, front.gelu_backward_kernel)


def blocks(rows):
    return max(1, -(-rows // ROW_BLOCK))


def chunks(rows):
    """A function of the row count alone (the sums' order, hence the bits, never depend on threads)."""
    return max(1, min(MAX_CHUNKS, rows // CHUNK_ROWS))


# ------------------------------------------------------------------------------ BLAS threads
_BLAS = {}


def blas_one_thread():
    """Set the BLAS behind Numba's np.dot (the library SciPy's cython_blas calls) to one thread, once;
    True when done (an OpenBLAS, MKL or BLIS thread setter was found)."""
    if "pinned" not in _BLAS:
        _BLAS["pinned"] = False
        try:
            from scipy.linalg import cython_blas
            lib = ctypes.CDLL(cython_blas.__file__)  # its symbol scope includes the BLAS it links
            for setter in ("scipy_openblas_set_num_threads", "openblas_set_num_threads",
                           "scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                           "MKL_Set_Num_Threads", "bli_thread_set_num_threads"):
                if hasattr(lib, setter):
                    getattr(lib, setter)(1)
                    _BLAS["pinned"] = True
                    break
        except (ImportError, OSError):
            pass
    return _BLAS["pinned"]


@contextlib.contextmanager
def _dynamic_schedule():
    """prange iterations handed out one at a time: a descheduled thread holds up one block, not half."""
    old = numba.set_parallel_chunksize(1)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(old)


def _products(kernel, *args):
    """Run a kernel that calls the BLAS: in parallel when the BLAS is single-threaded, else on one thread."""
    if _BLAS.get("pinned"):
        return kernel(*args)
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(old)


# ------------------------------------------------------------------------------ parameters
@functools.lru_cache(maxsize=32)
def _offsets(cfg):
    out, o = {}, 0
    for name, shape in oracle.param_shapes(cfg).items():
        out[name] = (o, shape)
        o += math.prod(shape)
    return out, o


def num_params(cfg):
    return _offsets(cfg)[1]


def pack(arrays, cfg, dtype):
    """{name: array} -> a new vector (P,) in param_shapes order."""
    return np.concatenate([np.ravel(arrays[n]) for n in _offsets(cfg)[0]]).astype(dtype, copy=False)


def unpack(vector, cfg):
    """vector (P,) -> {name: view of it} in param_shapes order."""
    return {n: vector[o:o + math.prod(s)].reshape(s) for n, (o, s) in _offsets(cfg)[0].items()}


def constants(cfg, dtype):
    """kernels.numba.ops' constants vector in `dtype` (float32 kernels stay float32)."""
    c = np.zeros(NUM_CONSTS)
    c[C_ONE], c[C_HALF], c[C_LN_EPS], c[C_GELU_C], c[C_GELU_A] = 1.0, 0.5, LN_EPS, GELU_C, 0.044715
    c[C_SQRT_K], c[C_NEG_INF] = np.sqrt(cfg.head_size), -np.inf
    return c.astype(dtype)


# ------------------------------------------------------------------------------ buffers
class Activations:
    """What the backward reads, written by the forward: per block (L, ...), then the read-out's."""

    def __init__(self, cfg, T, B, dtype):
        L, E, F, nh = cfg.num_layers, cfg.embed_dim, cfg.mlp_widening * cfg.embed_dim, cfg.num_heads
        M, R = B * T, B * T // 2
        self.H = np.empty((M, E), dtype)  # (M, E) the residual stream
        self.a_in = np.empty((L, M, E), dtype)  # LN1 output
        self.xh1 = np.empty((L, M, E), dtype)  # LN1 xhat
        self.r1 = np.empty((L, M), dtype)  # LN1 rstd
        self.qkv = np.empty((L, M, 3 * E), dtype)
        self.P = np.empty((L, B, nh, T, T), dtype)  # attention probabilities
        self.o = np.empty((L, M, E), dtype)  # heads' output, before W_p
        self.m_in = np.empty((L, M, E), dtype)  # LN2 output
        self.xh2 = np.empty((L, M, E), dtype)
        self.r2 = np.empty((L, M), dtype)
        self.h = np.empty((L, M, F), dtype)  # MLP pre-activation
        self.t = np.empty((L, M, F), dtype)  # tanh of the GELU
        self.g = np.empty((L, M, F), dtype)  # GELU output
        self.Hx = np.empty((R, E), dtype)  # H at the x positions
        self.Hf = np.empty((R, E), dtype)  # LN_f output
        self.xhf = np.empty((R, E), dtype)
        self.rf = np.empty(R, dtype)
        self.pred = np.empty((R, 1), dtype)

    def arrays(self):
        return list(vars(self).values())


class _Plan:
    """Scratch, the training step's activations and the gradient vector for one (cfg, T, B, dtype)."""

    def __init__(self, cfg, T, B, dtype):
        blas_one_thread()
        L, E, F, d, nh = cfg.num_layers, cfg.embed_dim, cfg.mlp_widening * cfg.embed_dim, cfg.input_dim, cfg.num_heads
        M, R = B * T, B * T // 2
        self.B, self.T, self.dtype = B, T, np.dtype(dtype)
        self.nblk, self.nch, self.nblk_x, self.nch_x = blocks(M), chunks(M), blocks(R), chunks(R)
        self.cst = constants(cfg, dtype)
        self.acts = Activations(cfg, T, B, dtype)
        self.S = np.empty((M, E), dtype)  # a residual branch's product before it is added
        self.Wqkv = np.empty((L, E, 3 * E), dtype)  # [W_q W_k W_v] per block
        self.bqkv = np.empty((L, 3 * E), dtype)
        self.dH = np.empty((M, E), dtype)  # (M, E) gradient of the residual stream
        self.dE = np.empty((M, E), dtype)  # (M, E) a branch's input gradient
        self.dF = np.empty((M, F), dtype)  # (M, F) MLP hidden gradient
        self.dQKV = np.empty((M, 3 * E), dtype)
        self.dHf = np.empty((R, E), dtype)
        self.dHx = np.empty((R, E), dtype)
        self.dpred = np.empty((R, 1), dtype)
        threads = numba.config.NUMBA_NUM_THREADS  # attention scratch: one head's (T, K) arrays per thread
        self.Ws = np.empty((threads, 7, T, E // nh), dtype)
        self.Wr = np.empty((threads, T), dtype)
        nc = max(self.nch, self.nch_x)
        self.part = np.empty(nc * max(E * F, 3 * E * E, d * E), dtype)  # weight-gradient partials
        self.partb = np.empty(nc * max(F, 3 * E), dtype)  # bias-gradient partials
        self.Pg = np.empty((self.nch, 2, E), dtype)  # LayerNorm partials
        self.Pgx = np.empty((self.nch_x, 2, E), dtype)
        self.dWqkv = np.empty((E, 3 * E), dtype)
        self.dbqkv = np.empty(3 * E, dtype)
        self.grad = np.empty(num_params(cfg), dtype)  # (P,) every gradient, param_shapes order
        self.grads = unpack(self.grad, cfg)
        self.no_dx = np.empty((1, 1), dtype)  # dX and W^T placeholders of a backward without input
        self.no_wt = np.empty((2, 2), dtype, order="F")  # gradient (W^T of the layout the others have)
        self.empty = np.empty(0, dtype)

    def partials(self, nch, D, N):
        return self.part[:nch * D * N].reshape(nch, D, N), self.partb[:nch * N].reshape(nch, N)

    def arrays(self):
        """Every buffer (the constants vector aside)."""
        return [a for k, a in vars(self).items() if isinstance(a, np.ndarray) and k != "cst"] + self.acts.arrays()


_PLANS = {}


def plan(cfg, T, B, dtype):
    return cached_plan(_PLANS, _Plan, cfg, T, B, dtype, limit=4)


# ------------------------------------------------------------------------------ forward / backward
def _forward(prm, tok, cfg, pl, acts):
    """tokens (B, T, d) -> pred (R, 1) in acts; refimpl.gpt2.gpt2_forward's steps."""
    B, T, d = tok.shape
    E, nblk, cst = cfg.embed_dim, pl.nblk, pl.cst
    H = acts.H
    _products(linear_forward_kernel, tok.reshape(B * T, d), prm["read_in.W"], prm["read_in.b"], H, pl.S, 0, nblk)
    H.reshape(B, T, E)[...] += prm["pos"][:T]  # (B, T, E)
    for l in range(cfg.num_layers):
        p = f"block{l}."
        for i, w in enumerate("qkv"):
            pl.Wqkv[l, :, i * E:(i + 1) * E] = prm[f"{p}attn.W_{w}"]
            pl.bqkv[l, i * E:(i + 1) * E] = prm[f"{p}attn.b_{w}"]
        layernorm_forward_kernel(H, prm[p + "ln1.scale"], prm[p + "ln1.offset"], acts.a_in[l], acts.xh1[l],
                                 acts.r1[l], nblk, cst)
        _products(linear_forward_kernel, acts.a_in[l], pl.Wqkv[l], pl.bqkv[l], acts.qkv[l], pl.S, 0, nblk)
        attention_forward_kernel(acts.qkv[l], acts.P[l], acts.o[l], pl.Ws, cst)
        _products(linear_forward_kernel, acts.o[l], prm[p + "attn.W_p"], prm[p + "attn.b_p"], H, pl.S, 1, nblk)
        layernorm_forward_kernel(H, prm[p + "ln2.scale"], prm[p + "ln2.offset"], acts.m_in[l], acts.xh2[l],
                                 acts.r2[l], nblk, cst)
        _products(linear_forward_kernel, acts.m_in[l], prm[p + "mlp.W1"], prm[p + "mlp.b1"], acts.h[l], pl.S, 0, nblk)
        front.gelu_kernel(acts.h[l].reshape(-1), acts.g[l].reshape(-1), acts.t[l].reshape(-1), cst)
        _products(linear_forward_kernel, acts.g[l], prm[p + "mlp.W2"], prm[p + "mlp.b2"], H, pl.S, 1, nblk)
    np.copyto(acts.Hx.reshape(B, T // 2, E), H.reshape(B, T, E)[:, 0::2])
    layernorm_forward_kernel(acts.Hx, prm["ln_f.scale"], prm["ln_f.offset"], acts.Hf, acts.xhf, acts.rf,
                             pl.nblk_x, cst)
    _products(linear_forward_kernel, acts.Hf, prm["read_out.W"], prm["read_out.b"], acts.pred, pl.S, 0, pl.nblk_x)


def _backward(dpred, prm, tok, cfg, pl, acts, dtok):
    """dpred (R, 1) -> every gradient into pl.grad and, when dtok (B, T, d) is given, the input
    gradient into it; refimpl.gpt2.gpt2_backward's steps."""
    B, T, d = tok.shape
    E, F, nblk, nch, cst, g = cfg.embed_dim, cfg.mlp_widening * cfg.embed_dim, pl.nblk, pl.nch, pl.cst, pl.grads
    np.multiply(dpred, prm["read_out.W"].T, out=pl.dHf)  # (R, E) = dpred w_out^T (a product of one term)
    part, partb = pl.partials(pl.nch_x, E, 1)
    _products(linear_backward_kernel, acts.Hf, pl.no_wt, dpred, pl.no_dx, part, g["read_out.W"], partb,
              g["read_out.b"], 0)
    layernorm_backward_kernel(pl.dHf, acts.xhf, acts.rf, prm["ln_f.scale"], pl.dHx, 0, pl.Pgx, g["ln_f.scale"],
                              g["ln_f.offset"], cst)
    dH, dH3 = pl.dH, pl.dH.reshape(B, T, E)
    dH3[:, 0::2] = pl.dHx.reshape(B, T // 2, E)  # only the x positions are read out
    dH3[:, 1::2] = 0
    for l in reversed(range(cfg.num_layers)):
        p = f"block{l}."
        # MLP branch: dH -> dg -> dh -> dm_in, then LN2 adds its input gradient to dH
        part, partb = pl.partials(nch, F, E)
        _products(linear_backward_kernel, acts.g[l], prm[p + "mlp.W2"].T, dH, pl.dF, part, g[p + "mlp.W2"], partb,
                  g[p + "mlp.b2"], nblk)
        front.gelu_backward_kernel(pl.dF.reshape(-1), acts.h[l].reshape(-1), acts.t[l].reshape(-1),
                                   pl.dF.reshape(-1), cst)
        part, partb = pl.partials(nch, E, F)
        _products(linear_backward_kernel, acts.m_in[l], prm[p + "mlp.W1"].T, pl.dF, pl.dE, part, g[p + "mlp.W1"],
                  partb, g[p + "mlp.b1"], nblk)
        layernorm_backward_kernel(pl.dE, acts.xh2[l], acts.r2[l], prm[p + "ln2.scale"], dH, 1, pl.Pg,
                                  g[p + "ln2.scale"], g[p + "ln2.offset"], cst)
        # attention branch: dH -> do -> d[q k v] -> da_in, then LN1 adds its input gradient to dH
        part, partb = pl.partials(nch, E, E)
        _products(linear_backward_kernel, acts.o[l], prm[p + "attn.W_p"].T, dH, pl.dE, part, g[p + "attn.W_p"],
                  partb, g[p + "attn.b_p"], nblk)
        attention_backward_kernel(pl.dE, acts.qkv[l], acts.P[l], pl.dQKV, pl.Ws, pl.Wr, cst)
        part, partb = pl.partials(nch, E, 3 * E)
        _products(linear_backward_kernel, acts.a_in[l], pl.Wqkv[l].T, pl.dQKV, pl.dE, part, pl.dWqkv, partb,
                  pl.dbqkv, nblk)  # da_in = dq W_q^T + dk W_k^T + dv W_v^T in one product
        for i, w in enumerate("qkv"):
            g[f"{p}attn.W_{w}"][...] = pl.dWqkv[:, i * E:(i + 1) * E]
            g[f"{p}attn.b_{w}"][...] = pl.dbqkv[i * E:(i + 1) * E]
        layernorm_backward_kernel(pl.dE, acts.xh1[l], acts.r1[l], prm[p + "ln1.scale"], dH, 1, pl.Pg,
                                  g[p + "ln1.scale"], g[p + "ln1.offset"], cst)
    np.sum(dH3, axis=0, out=g["pos"][:T])  # (T, E): pos[:T] is added to every prompt
    g["pos"][T:] = 0  # positions a shorter prompt does not reach
    part, partb = pl.partials(nch, d, E)
    dX = pl.no_dx if dtok is None else dtok.reshape(B * T, d)
    _products(linear_backward_kernel, tok.reshape(B * T, d), prm["read_in.W"].T, dH, dX, part, g["read_in.W"],
              partb, g["read_in.b"], 0 if dtok is None else nblk)


# ------------------------------------------------------------------------------ the backend's functions
def check_inputs(params, tokens, cfg):
    """(contiguous params, contiguous tokens) after refimpl.gpt2's checks."""
    oracle.check_tokens(tokens, cfg)
    oracle.check_params(params, cfg)
    check_same_dtype(tokens=tokens, params=params["pos"])
    if tokens.dtype not in (np.float32, np.float64):
        raise ValueError(f"tokens: expected dtype float32 or float64, got {tokens.dtype}")
    return {k: np.ascontiguousarray(v) for k, v in params.items()}, np.ascontiguousarray(tokens)


def check_targets(y, tok):
    check_array("y", y, shape=(tok.shape[0], tok.shape[1] // 2))
    check_same_dtype(tokens=tok, y=y)
    return np.ascontiguousarray(y)


def model_forward(params, tokens, cfg):
    """tokens (B, T, d) -> (predictions (B, n), cache); the cache owns its activations."""
    prm, tok = check_inputs(params, tokens, cfg)
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, tok.dtype)
    acts = Activations(cfg, T, B, tok.dtype)
    with _dynamic_schedule():
        _forward(prm, tok, cfg, pl, acts)
    cache = {"gpt2": cfg, "params": prm, "tokens": tok, "acts": acts}
    return acts.pred.reshape(B, T // 2).copy(), cache


def model_backward(dpred, cache, input_grad=True):
    """dpred (B, n) -> (dtokens (B, T, d) or None, {name: gradient}) with the full (2n, E) pos."""
    cfg, prm, tok = cache["gpt2"], cache["params"], cache["tokens"]
    B, T, _ = tok.shape
    check_upstream("dpred", dpred, (B, T // 2), tok.dtype)
    pl = plan(cfg, T, B, tok.dtype)
    dtok = np.full(tok.shape, np.nan, tok.dtype) if input_grad else None  # (B, T, d)
    with _dynamic_schedule():
        _backward(np.ascontiguousarray(dpred).reshape(-1, 1), prm, tok, cfg, pl, cache["acts"], dtok)
    return dtok, unpack(pl.grad.copy(), cfg)


def predict(params, tokens, cfg):
    """Predictions (B, n), on the plan's buffers (nothing kept)."""
    prm, tok = check_inputs(params, tokens, cfg)
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, tok.dtype)
    with _dynamic_schedule():
        _forward(prm, tok, cfg, pl, pl.acts)
    return pl.acts.pred.reshape(B, T // 2).copy()


def loss_and_flat_grads(prm, tok, y, cfg):
    """(loss, gradient vector (P,) in param_shapes order: the plan's buffer, valid until the next
    call) of refimpl.gpt2.loss_and_grads, for checked contiguous inputs."""
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, tok.dtype)
    with _dynamic_schedule():
        _forward(prm, tok, cfg, pl, pl.acts)
        loss, r = oracle.mse_forward(pl.acts.pred.reshape(B, T // 2), y)  # (B, n) residuals
        pl.dpred[:, 0] = oracle.mse_backward(1.0, r).reshape(-1)
        _backward(pl.dpred, prm, tok, cfg, pl, pl.acts, None)
    return loss, pl.grad


def loss_and_grads(params, tokens, y, cfg):
    """(loss, array([loss]), {name: gradient}) as refimpl.gpt2.loss_and_grads."""
    prm, tok = check_inputs(params, tokens, cfg)
    y = check_targets(y, tok)
    loss, grad = loss_and_flat_grads(prm, tok, y, cfg)
    return loss, np.array([loss]), unpack(grad.copy(), cfg)


def kernels(cfg=None):
    """The @njit kernels a GPT-2 model runs (kernels.numba.cpu.kernels_to_compile)."""
    return list(ALL_KERNELS)


def fill_buffers(cfg, num_tokens, batch, dtype, value):
    """Fill every persistent buffer with `value` (a test poisons them with NaN)."""
    for a in plan(cfg, num_tokens, batch, dtype).arrays():
        a[...] = value
