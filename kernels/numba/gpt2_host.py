"""numba-cpu's GPT-2 model (refimpl.gpt2, SPEC 2.7) on the host: the buffers, the parameter vector
and the calls of kernels/numba/gpt2.py's kernel; kernels.numba.cpu dispatches here on a GPT2Config.

Shape legend as kernels/numba/gpt2.py: B prompts, n read-outs per prompt, T = 2n' <= 2n tokens, d
token width, M = B*T, R = B*n, E width, F MLP width, nh heads, K head size, L blocks, P parameters,
C chunks of prompts.

Parameters and gradients are vectors (P,) in refimpl.gpt2.param_shapes order, addressed through
the offsets table `off` (L + 1, 16) of kernels.numba.gpt2; train_step updates the parameter
vector from the gradient vector with kernels/numba/adam.py's arithmetic (refimpl.optim.adam_update
to rounding), in pieces on the threads. A training plan keeps every block's
activations for the backward; a forward-only plan keeps one block's, reused by every block, and a
forward on more than FORWARD_PROMPTS prompts runs in pieces (an evaluation set of thousands of
prompts needs no buffers of thousands of prompts). model_forward keeps no activations:
model_backward computes them again (as kernels.numba.cpu does for its other models).

Threads: the kernels release the GIL (nogil) and run as tasks on a pool of numba.get_num_threads()
threads, the calling thread one of them; a task takes the next chunk when it is done with one
(on a shared machine a descheduled thread holds up one chunk, not a share of the batch). Each
calls the BLAS that Numba uses (SciPy's): `blas_one_thread` sets that BLAS to one thread on first
use, since a BLAS that spreads every call over all cores, called from every core at once, runs
many times slower. Where it cannot be set, the chunks run one after another and the BLAS threads
itself.
"""
import concurrent.futures
import ctypes
import functools
import math
import os
import threading

import numba
import numpy as np

from refimpl import gpt2 as oracle
from refimpl.layers import GELU_C, LN_EPS
from refimpl.optim import scaled_norm
from refimpl.validate import check_array, check_same_dtype, check_upstream

from kernels.numba.gpt2 import (BLOCK_NAMES, E_BIAS, E_LIM, E_LN2_HI, E_LN2_LO, E_LOG2E, E_POLY, E_SHIFT,
                                G_POS_ROWS, GLOBAL_NAMES, NUM_GPT2_CONSTS, adam_piece, chunk_backward, chunk_forward,
                                sum_chunks)
from kernels.numba.adam import adam_hyper, clip_factor
from kernels.numba.layout import cached_plan, exp_reduction
from kernels.numba.ops import C_GELU_A, C_GELU_C, C_HALF, C_LN_EPS, C_NEG_INF, C_ONE, C_SQRT_K

MAX_CHUNKS = 8  # chunks of prompts per step; their gradient rows are summed in chunk order
PIECES = 8  # pieces of the gradient vector summed, squared and updated in parallel
FORWARD_PROMPTS = 256  # most prompts per forward-only kernel call


def chunks(batch):
    """A function of B alone (the sums' order, hence the bits, never depend on the threads)."""
    return min(batch, MAX_CHUNKS)


# ------------------------------------------------------------------------------ BLAS threads
_BLAS = {}


def blas_one_thread():
    """Set the BLAS behind Numba's np.dot (the library SciPy's cython_blas calls) to one thread,
    once; True when done (an OpenBLAS, MKL or BLIS thread setter was found)."""
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


_POOL = {}


def parallel(task, count):
    """task(i) for i in range(count) on min(count, numba.get_num_threads()) threads (the calling one
    included), each taking the next i when done: in order on the calling thread when one thread is
    asked for or the BLAS could not be set to one thread."""
    workers = min(count, numba.get_num_threads()) if blas_one_thread() else 1
    if workers <= 1:
        for i in range(count):
            task(i)
        return
    if _POOL.get("size", 0) < workers - 1 or _POOL.get("pid") != os.getpid():  # a forked child has no threads
        _POOL.update(pool=concurrent.futures.ThreadPoolExecutor(workers - 1, thread_name_prefix="gpt2"),
                     size=workers - 1, pid=os.getpid())
    items, lock = iter(range(count)), threading.Lock()

    def work():
        while True:
            with lock:
                i = next(items, None)
            if i is None:
                return
            task(i)

    helpers = [_POOL["pool"].submit(work) for _ in range(workers - 1)]
    work()
    for h in helpers:
        h.result()  # waits, and raises a helper's exception here


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


@functools.lru_cache(maxsize=32)
def offsets_table(cfg):
    """off (L + 1, 16) int64: row l the offsets of block l's parameters (BLOCK_NAMES order), row L
    those of the others (GLOBAL_NAMES order), then pos's number of rows (G_POS_ROWS)."""
    offs = _offsets(cfg)[0]
    off = np.zeros((cfg.num_layers + 1, len(BLOCK_NAMES)), np.int64)
    for l in range(cfg.num_layers):
        off[l] = [offs[f"block{l}.{name}"][0] for name in BLOCK_NAMES]
    off[-1, :len(GLOBAL_NAMES)] = [offs[name][0] for name in GLOBAL_NAMES]
    off[-1, G_POS_ROWS] = cfg.max_tokens
    off.setflags(write=False)
    return off


def pack(arrays, cfg, dtype):
    """{name: array} -> a new vector (P,) in param_shapes order."""
    return np.concatenate([np.ravel(arrays[n]) for n in _offsets(cfg)[0]]).astype(dtype, copy=False)


def unpack(vector, cfg):
    """vector (P,) -> {name: view of it} in param_shapes order."""
    return {n: vector[o:o + math.prod(s)].reshape(s) for n, (o, s) in _offsets(cfg)[0].items()}


def constants(cfg, dtype):
    """The kernels' constants in `dtype` (float32 kernels stay float32): kernels.numba.ops', then
    gelu_fwd's exp (E_*): layout.exp_reduction's (log2(e), the clamp, ln 2 in two parts, the Taylor
    coefficients), the exponent bias and the mantissa width of the dtype."""
    c = np.zeros(NUM_GPT2_CONSTS)
    c[C_ONE], c[C_HALF], c[C_LN_EPS], c[C_GELU_C], c[C_GELU_A] = 1.0, 0.5, LN_EPS, GELU_C, 0.044715
    c[C_SQRT_K], c[C_NEG_INF] = np.sqrt(cfg.head_size), -np.inf
    single = np.dtype(dtype) == np.float32
    c[E_LOG2E], c[E_LIM], c[E_LN2_HI], c[E_LN2_LO], poly = exp_reduction(dtype)
    c[E_BIAS], c[E_SHIFT] = (127, 23) if single else (1023, 52)
    c[E_POLY:] = poly
    return c.astype(dtype)


# ------------------------------------------------------------------------------ buffers
class _Plan:
    """Buffers for one (cfg, T, B, dtype): a training plan (`train`, every block's activations and
    the backward's buffers) or a forward-only one (one block's activations, placeholders)."""

    def __init__(self, cfg, T, B, dtype, train):
        blas_one_thread()
        L, E, F, nh = cfg.num_layers, cfg.embed_dim, cfg.mlp_widening * cfg.embed_dim, cfg.num_heads
        M, R, K, nch = B * T, B * T // 2, cfg.head_size, chunks(B)
        slots = L if train else 1

        def full(*shape):
            return np.empty(shape, dtype)

        def used(*shape):  # a backward buffer, or a placeholder of the same rank in a forward-only plan
            return np.empty(shape if train else (1,) * len(shape), dtype)

        self.cst = constants(cfg, dtype)
        # H, a_in, xh1, r1, qkv, P, o, m_in, xh2, r2, h, t, g, Hx, Hf, xhf, rf, pred (kernels.numba.gpt2)
        self.acts = (full(M, E), full(slots, M, E), full(slots, M, E), full(slots, M), full(slots, M, 3 * E),
                     full(slots, B, nh, T, T), full(slots, M, E), full(slots, M, E), full(slots, M, E),
                     full(slots, M), full(slots, M, F), full(slots, M, F), full(slots, M, F), full(R, E),
                     full(R, E), full(R, E), full(R), full(R, 1))
        # S (a residual branch's product), then dH, dE, dF, dQKV, dHf, dHx
        self.scratch = (full(M, E), used(M, E), used(M, E), used(M, F), used(M, 3 * E), used(R, E), used(R, E))
        self.Wqkv, self.bqkv = full(L, E, 3 * E), full(L, 3 * E)  # [W_q W_k W_v] per block
        self.dWqkv, self.dbqkv = used(nch, E, 3 * E), used(nch, 3 * E)
        self.Ws, self.Wr = full(nch, 7, T, K), full(nch, T)  # per chunk: attention scratch, the exp's 2^k bits
        self.Ib = np.empty((nch, F), np.int32 if np.dtype(dtype) == np.float32 else np.int64)
        self.tls = (self.Ws, self.Wr, self.Ib, self.Ib.view(dtype))
        self.Gp = used(nch, num_params(cfg)) if train else full(nch, 1)  # gradient row per chunk
        self.grad = used(num_params(cfg))  # (P,) every gradient, param_shapes order
        self.dpred = used(R, 1)
        self.sq = np.empty(PIECES)  # float64 sums of squares of the gradient's pieces
        self.no_dtok = full(1, 1, 1)  # dtok placeholder without an input gradient

    def arrays(self):
        """Every floating-point buffer (the constants aside)."""
        out = list(self.acts) + list(self.scratch)
        return out + [a for k, a in vars(self).items()
                      if isinstance(a, np.ndarray) and k != "cst" and a.dtype.kind == "f"]


_PLANS = {True: {}, False: {}}


def plan(cfg, T, B, dtype, train=True):
    return cached_plan(_PLANS[train], lambda c, t, b, dt: _Plan(c, t, b, dt, train), cfg, T, B, dtype, limit=4)


def _forward(pv, tok, cfg, pl):
    """chunk_forward on every chunk: pl's activations and predictions; [W_q W_k W_v] and
    [b_q b_k b_v] concatenated from pv first."""
    B, E, nch = tok.shape[0], cfg.embed_dim, pl.Gp.shape[0]
    prm = unpack(pv, cfg)
    for l in range(cfg.num_layers):
        for i, w in enumerate("qkv"):
            pl.Wqkv[l, :, i * E:(i + 1) * E] = prm[f"block{l}.attn.W_{w}"]
            pl.bqkv[l, i * E:(i + 1) * E] = prm[f"block{l}.attn.b_{w}"]
    off, (W, _, Ib, Fb) = offsets_table(cfg), pl.tls
    parallel(lambda c: chunk_forward(c * B // nch, (c + 1) * B // nch, tok, pv, off, pl.Wqkv, pl.bqkv, pl.acts,
                                     pl.scratch[0], W[c], Ib[c], Fb[c], pl.cst), nch)


def _backward(dpred, pv, tok, cfg, pl, dtok=None):
    """chunk_backward on every chunk after _forward, from dpred (R, 1): pl.grad (P,) and, when
    dtok (B, T, d) is given, the input gradient into it."""
    B, nch = tok.shape[0], pl.Gp.shape[0]
    off, (W, ds, _, _) = offsets_table(cfg), pl.tls
    dX = pl.no_dtok if dtok is None else dtok
    parallel(lambda c: chunk_backward(c * B // nch, (c + 1) * B // nch, dpred, tok, pv, off, pl.Wqkv, pl.acts,
                                      pl.scratch[1:], pl.dWqkv[c], pl.dbqkv[c], W[c], ds[c], pl.Gp[c], dX,
                                      dtok is not None, pl.cst), nch)
    parallel(lambda i: sum_chunks(pl.Gp, pl.grad, pl.sq, i, PIECES), PIECES)


# ------------------------------------------------------------------------------ the backend's functions
def check_inputs(params, tokens, cfg):
    """(the parameter vector (P,), contiguous tokens) after refimpl.gpt2's checks."""
    oracle.check_tokens(tokens, cfg)
    oracle.check_params(params, cfg)
    check_same_dtype(tokens=tokens, params=params["pos"])
    if tokens.dtype not in (np.float32, np.float64):
        raise ValueError(f"tokens: expected dtype float32 or float64, got {tokens.dtype}")
    return pack(params, cfg, tokens.dtype), np.ascontiguousarray(tokens)


def check_targets(y, tok):
    check_array("y", y, shape=(tok.shape[0], tok.shape[1] // 2))
    check_same_dtype(tokens=tok, y=y)
    return y


def forward(pv, tok, cfg):
    """Predictions (B, n): forward-only plans of at most FORWARD_PROMPTS prompts each."""
    B, T, _ = tok.shape
    out = np.empty((B, T // 2), tok.dtype)  # (B, n)
    for b0 in range(0, B, FORWARD_PROMPTS):
        part = tok[b0:b0 + FORWARD_PROMPTS]
        pl = plan(cfg, T, part.shape[0], tok.dtype, train=False)
        _forward(pv, part, cfg, pl)
        out[b0:b0 + part.shape[0]] = pl.acts[-1].reshape(part.shape[0], T // 2)
    return out


def model_forward(params, tokens, cfg):
    """tokens (B, T, d) -> (predictions (B, n), cache); the cache keeps the inputs."""
    pv, tok = check_inputs(params, tokens, cfg)
    return forward(pv, tok, cfg), {"gpt2": cfg, "pv": pv, "tokens": tok}


def model_backward(dpred, cache, input_grad=True):
    """dpred (B, n) -> (dtokens (B, T, d) or None, {name: gradient}) with the full (2n, E) pos;
    the forward's activations computed again."""
    cfg, pv, tok = cache["gpt2"], cache["pv"], cache["tokens"]
    B, T, _ = tok.shape
    check_upstream("dpred", dpred, (B, T // 2), tok.dtype)
    pl = plan(cfg, T, B, tok.dtype)
    dtok = np.full(tok.shape, np.nan, tok.dtype) if input_grad else None  # (B, T, d)
    _forward(pv, tok, cfg, pl)
    _backward(np.ascontiguousarray(dpred).reshape(-1, 1), pv, tok, cfg, pl, dtok)
    return dtok, unpack(pl.grad.copy(), cfg)


def predict(params, tokens, cfg):
    """Predictions (B, n) of model_forward without a cache."""
    return forward(*check_inputs(params, tokens, cfg), cfg)


def loss_and_flat_grads(pv, tok, y, cfg):
    """(loss, gradient vector (P,): the plan's buffer, valid until the next call) of
    refimpl.gpt2.loss_and_grads, for checked inputs (y (B, n))."""
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, tok.dtype)
    _forward(pv, tok, cfg, pl)
    loss, r = oracle.mse_forward(pl.acts[-1].reshape(B, T // 2), y)  # (B, n) residuals
    pl.dpred[:, 0] = oracle.mse_backward(1.0, r).reshape(-1)
    _backward(pl.dpred, pv, tok, cfg, pl)
    return loss, pl.grad


def train_step(params, state, tokens, y, cfg, adam_cfg):
    """refimpl.gpt2.loss_and_grads then refimpl.optim.adam_update (kernels.numba.adam's arithmetic):
    (params, state with grad_norm, loss). The gradient's norm is the float64 sum of its pieces'
    squares (computed with the sum of the chunks); params, m and v are new vectors, updated in place."""
    pv, tok = check_inputs(params, tokens, cfg)  # pv (P,) a new vector
    y = check_targets(y, tok)
    m, v = (pack(state[k], cfg, tok.dtype) for k in ("m", "v"))  # (P,)
    loss, g = loss_and_flat_grads(pv, tok, y, cfg)
    pl = plan(cfg, tok.shape[1], tok.shape[0], tok.dtype)
    norm = float(np.sqrt(pl.sq.sum()))  # pieces in order
    if not np.isfinite(norm):
        norm = scaled_norm([g])  # the sum of squares overflowed: refimpl.optim.global_norm's fallback
    t = state["t"] + 1
    h = adam_hyper(adam_cfg, t, tok.dtype, clip_factor(adam_cfg, norm))
    parallel(lambda i: adam_piece(pv, g, m, v, h, i, PIECES), PIECES)
    return unpack(pv, cfg), {"t": t, "m": unpack(m, cfg), "v": unpack(v, cfg), "grad_norm": norm}, loss


def loss_and_grads(params, tokens, y, cfg):
    """(loss, array([loss]), {name: gradient}) as refimpl.gpt2.loss_and_grads."""
    pv, tok = check_inputs(params, tokens, cfg)
    loss, grad = loss_and_flat_grads(pv, tok, check_targets(y, tok), cfg)
    return loss, np.array([loss]), unpack(grad.copy(), cfg)


def kernels(cfg=None):
    """The kernels a GPT-2 model compiles (kernels.numba.cpu.kernels_to_compile)."""
    return [chunk_forward, chunk_backward, sum_chunks, adam_piece]


def fill_buffers(cfg, num_tokens, batch, dtype, value):
    """Fill every buffer of both plans with `value` (a test poisons them with NaN)."""
    for train in (True, False):
        for a in plan(cfg, num_tokens, batch, dtype, train).arrays():
            a[...] = value

