"""The `numba-cpu` backend: the whole training step fused per task, parallel over tasks.

Mirrors refimpl.model (model_forward/backward), refimpl.loss (mse, loss_and_grads) and
refimpl.optim (adam_update), with the same results (float64: to rounding; float32 computed in
float32). Arrays are NumPy arrays; parameters are the oracle's {name: array} dicts. Training
batches: `linear_regression_tasks` (kernels.numba.draw), refimpl.data's draws bit for bit, in parallel.

Models with an embedding or an input MLP (kernels.numba.front.supports) run their token-wise front
end on all tokens at once (BLAS matmuls, a parallel GELU) and their blocks on the kernels below.
Linear-attention models (kernels.numba.lsa.supports: no softmax, LayerNorm or front end; an MLP is
fine) get their loss and gradients (loss_and_grads, train_step) and evaluation from
kernels/numba/lsa.py, which works in parameter space with eight tasks per SIMD group (sixteen in
float32); one-block softmax models (kernels.numba.query_block.supports) train on
kernels/numba/query_block.py, which computes the query row alone, in the same lanes; everything
else (and the evaluation of those) uses the kernels below.
The GPT-2 model (a refimpl.gpt2.GPT2Config) runs on kernels/numba/gpt2.py (through gpt2_host.py):
model_forward gives its predictions (B, n), model_backward the full (2n, E) pos gradient, as the
numpy backend; its train_step runs the Adam arithmetic of kernels/numba/adam.py in pieces on threads.

Kernels (`@njit(cache=True, parallel=True)`, launch shape: `prange` over chunks of tasks):
    task_kernel        by mode: read-outs (model_forward); recompute forward + backward
                       (model_backward); forward + MSE gradient + backward (loss_and_grads,
                       train_step). One kernel, so Numba compiles the per-task code once per dtype.
    reduce_rows        parameter gradients: sum of the per-chunk rows in chunk order
    adam_kernel        global-norm clipping and Adam on the flat parameter vector (kernels/numba/adam.py)
Determinism: a chunk's tasks accumulate into the chunk's own gradient row in task order, and rows
are summed in chunk order; chunks are fixed by B alone (not by the thread count), so every run
gives the same bits. model_forward keeps no activations: model_backward recomputes them per task
(cheaper than storing (B, L, ...) caches).
"""
import numpy as np
from numba import njit, prange, set_parallel_chunksize

from refimpl.config import AdamConfig
from refimpl.gpt2 import GPT2Config
from refimpl.loss import mse_backward, mse_forward  # noqa: F401  (the same (B,) arithmetic)
from refimpl.model import check_tokens
from refimpl.optim import adam_init, scaled_norm  # noqa: F401  (adam_init: the same zeros)
from refimpl.params import check_params, init_params as _oracle_init_params
from refimpl.validate import check_array, check_same_dtype

from kernels.numba import front as numba_front
from kernels.numba import gpt2_host as numba_gpt2
from kernels.numba import lsa as numba_lsa
from kernels.numba import query_block as numba_query_block
from kernels.numba.adam import adam_hyper, adam_kernel, clip_factor
from kernels.numba.draw import linear_regression_tasks  # noqa: F401  (the training batches, in parallel)
from kernels.numba.finite import check_finite, exponent_carry, is_finite
from kernels.numba.layout import I_NP, I_W_SIZE, plan
from kernels.numba.model import task_backward, task_forward, task_loss_backward
from kernels.params import pack, pack_like, unpack, unpack_like

name = "numba-cpu"


def availability():
    return True, "Numba CPU kernels (parallel over tasks)"


def asarray(x, dtype=None):
    if isinstance(x, dict):
        return {k: asarray(v, dtype) for k, v in x.items()}
    return np.asarray(x, dtype=dtype)


def to_numpy(x):
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    return np.asarray(x)


def init_params(cfg, rng, dtype=np.float64):
    return _oracle_init_params(cfg, rng, dtype)


# ----------------------------------------------------------------------------------------------
MODE_FORWARD, MODE_BACKWARD, MODE_LOSS = 0, 1, 2


@njit(cache=True, parallel=True)
def task_kernel(mode, tok, y, dr, pv, ii, lay, cst, pe, chunk, ws, rd, G, sq, dtok):
    """All per-task work in one kernel (one compilation), by mode:
    MODE_FORWARD   rd (L, B) read-outs
    MODE_BACKWARD  forward, then backward of the given dr (L, B): G rows and dtok (B, T, D_in)
    MODE_LOSS      forward, dr = MSE gradient, backward (no dtok); sq (nch, L) sums of squared errors
    G holds one gradient row (NP,) per chunk of `chunk` tasks."""
    B = tok.shape[0]
    L = rd.shape[0]
    nch = (B + chunk - 1) // chunk
    W, NP = ii[I_W_SIZE], ii[I_NP]
    for c in prange(nch):
        w0 = c * W
        if mode != MODE_FORWARD:
            G[c * NP:(c + 1) * NP] = 0
        if mode == MODE_LOSS:
            sq[c, :] = 0
        for b in range(c * chunk, min(B, (c + 1) * chunk)):
            if mode == MODE_FORWARD:
                task_forward(tok, b, pv, ii, lay, cst, pe, ws, w0, rd)
            elif mode == MODE_BACKWARD:
                task_forward(tok, b, pv, ii, lay, cst, pe, ws, w0, rd)
                task_backward(b, dr, pv, ii, lay, cst, ws, w0, G, c * NP, 1, dtok)
            else:
                task_loss_backward(tok, y, b, pv, ii, lay, cst, pe, ws, w0, rd, dr, G, c * NP, 0, dtok)
                for l in range(L):
                    e = rd[l, b] - y[b]
                    sq[c, l] += e * e


@njit(cache=True, parallel=True)
def reduce_rows(G, nrows, out):
    """out[j] = sum_c G[c, j] in row order (deterministic), parallel over j."""
    n = out.shape[0]
    for j in prange(n):
        s = G[j]
        for c in range(1, nrows):
            s += G[c * n + j]
        out[j] = s


@njit(cache=True)
def sum_squares(g):
    """sum g^2 accumulated in float64 (refimpl.optim.global_norm squared)."""
    acc = 0.0
    for i in range(g.shape[0]):
        acc += np.float64(g[i]) * np.float64(g[i])
    return acc


def run_tasks(mode, tok, y, dr, pv, pl, rd, dtok):
    """task_kernel with chunks handed out one at a time (a dynamic schedule): on a shared machine a
    descheduled thread then holds up one chunk, not half the batch. Results do not depend on it."""
    old = set_parallel_chunksize(1)
    try:
        task_kernel(mode, tok, y, dr, pv, pl.ii, pl.lay, pl.cst, pl.pe, pl.chunk, pl.ws, rd, pl.G,
                    pl.sq, dtok)
    finally:
        set_parallel_chunksize(old)


def _check_inputs(params, tokens, cfg):
    """refimpl's checks of tokens and params, their NaN/inf scans compiled (kernels.numba.finite)."""
    tok = check_finite("tokens", check_tokens(tokens, cfg, finite=False))
    check_params(params, cfg, finite=False)
    if not all(is_finite(v) for v in params.values()):
        check_params(params, cfg)  # raises, naming the parameter
    check_same_dtype(tokens=tokens, params=next(iter(params.values())))
    return tok


def model_forward(params, tokens, cfg):
    """tokens (B, T, D_in) -> (readouts (L, B), cache); the cache keeps inputs, not activations.
    A GPT2Config: (predictions (B, n), cache with the activations)."""
    if isinstance(cfg, GPT2Config):
        return numba_gpt2.model_forward(params, tokens, cfg)
    tok = _check_inputs(params, tokens, cfg)
    if numba_front.supports(cfg):
        H, fc = numba_front.front_forward(params, tok, cfg)  # (B, T, D)
        bcfg = numba_front.block_config(cfg)
        rd, bc = model_forward(_block_params(params), H, bcfg)
        return rd, {"cfg": cfg, "front": fc, "blocks": bc, "params": params}
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, tok.dtype)
    pv = pack(params, cfg)
    rd = np.full((cfg.num_layers, B), np.nan, tok.dtype)  # (L, B)
    run_tasks(MODE_FORWARD, tok, pl.y0, pl.dr, pv, pl, rd, pl.no_dtok)
    return rd, {"cfg": cfg, "tokens": tok, "pv": pv}


def model_backward(dreadouts, cache, input_grad=True):
    """dreadouts (L, B) -> (dtokens (B, T, D_in), {name: gradient}); a GPT-2 cache: dreadouts (B, n),
    the full (2n, E) pos gradient, and dtokens None when not input_grad."""
    if "gpt2" in cache:
        return numba_gpt2.model_backward(dreadouts, cache, input_grad)
    if "front" in cache:
        dH, grads = model_backward(dreadouts, cache["blocks"])  # (B, T, D)
        dtok, fgrads = numba_front.front_backward(dH, cache["params"], cache["front"], cache["cfg"])
        return dtok, {**fgrads, **grads}
    cfg, tok, pv = cache["cfg"], cache["tokens"], cache["pv"]
    B, T, _ = tok.shape
    check_array("dreadouts", dreadouts, shape=(cfg.num_layers, B))
    dr = np.ascontiguousarray(dreadouts, dtype=tok.dtype)
    pl = plan(cfg, T, B, tok.dtype)
    dtok = np.full(tok.shape, np.nan, tok.dtype)  # (B, T, D_in)
    run_tasks(MODE_BACKWARD, tok, pl.y0, dr, pv, pl, pl.rd, dtok)
    g = np.full(pv.shape, np.nan, tok.dtype)  # (P,)
    reduce_rows(pl.G, pl.nch, g)
    return (dtok if input_grad else None), unpack(g, cfg)


def readouts_and_query_gradient(params, tokens, cfg):
    """(readouts (L, B), d (final read-out) / d (query token) (B, D_in)): model_forward's read-outs
    and the query row of the input gradient of the final read-out (refimpl.model.
    prediction_input_gradient), what an evaluation needs. Linear-attention models get both from
    the training kernel (kernels.numba.lsa), so evaluating them compiles nothing more."""
    if isinstance(cfg, GPT2Config):
        raise ValueError("cfg: a GPT2Config has no query token (it predicts at every x position); "
                         "expected a refimpl.config.ModelConfig, got GPT2Config")
    tok = _check_inputs(params, tokens, cfg)
    if numba_lsa.supports(cfg):
        return numba_lsa.readouts_and_query_gradient(params, tok, cfg)
    if numba_front.supports(cfg):  # the whole input gradient, but no parameter gradients
        readouts, cache = model_forward(params, tok, cfg)
        dread = np.zeros_like(readouts)  # (L, B)
        dread[-1] = 1
        dH, _ = model_backward(dread, cache["blocks"])
        return readouts, numba_front.front_backward(dH, params, cache["front"], cfg, weights=False)[0][:, -1]
    readouts, cache = model_forward(params, tok, cfg)
    dread = np.zeros_like(readouts)  # (L, B)
    dread[-1] = 1
    return readouts, model_backward(dread, cache)[0][:, -1]


def readouts(params, tokens, cfg):
    """Every application's read-out (L, B), model_forward's without its cache: for linear-attention
    models the training kernel's forward alone (kernels.numba.lsa.readouts, nothing more to
    compile), for the others model_forward. A GPT2Config: its predictions (B, n)."""
    if isinstance(cfg, GPT2Config):
        return numba_gpt2.predict(params, tokens, cfg)
    tok = _check_inputs(params, tokens, cfg)
    if numba_lsa.supports(cfg):
        return numba_lsa.readouts(params, tok, cfg)
    return model_forward(params, tok, cfg)[0]


def _loss_grads_flat(pv, tok, y, cfg):
    if numba_lsa.supports(cfg):  # linear attention only: the parameter-space kernel
        loss, per_layer, grads = numba_lsa.loss_and_grads(unpack(pv, cfg), tok, y, cfg)
        return loss, per_layer, pack(grads, cfg)
    if numba_query_block.supports(cfg):  # one block: its query row alone, tasks in SIMD lanes
        loss, per_layer, grads = numba_query_block.loss_and_grads(unpack(pv, cfg), tok, y, cfg)
        return loss, per_layer, pack(grads, cfg)
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, tok.dtype)
    run_tasks(MODE_LOSS, tok, y, pl.dr, pv, pl, pl.rd, pl.no_dtok)
    g = np.empty(pv.shape, tok.dtype)  # (P,)
    reduce_rows(pl.G, pl.nch, g)
    per_layer = (0.5 * pl.sq.sum(axis=0) / B).astype(tok.dtype)  # (L,) chunk order: deterministic
    return per_layer[-1], per_layer, g


def _check_targets(y, tok):
    check_array("y", y, shape=(tok.shape[0],))
    check_same_dtype(tokens=tok, y=y)
    return np.ascontiguousarray(y)


def _block_params(params):
    return {k: v for k, v in params.items() if not numba_front.is_front_param(k)}


def _front_loss_and_grads(params, tok, y, cfg):
    """loss_and_grads of a model with a front end (numba_front): the front end on all tokens,
    the blocks' read-outs (task kernel, forward), the MSE gradient of the last read-out as
    refimpl.loss, the blocks' backward (task kernel) and the front end's backward."""
    readouts, cache = model_forward(params, tok, cfg)  # (L, B)
    r = readouts - y  # (L, B)
    per_layer = (0.5 * np.mean(r * r, axis=1)).astype(tok.dtype)  # (L,) refimpl.loss.mse_forward per layer
    dread = np.zeros_like(readouts)
    dread[-1] = mse_backward(1.0, r[-1])
    _, grads = model_backward(dread, cache)
    return per_layer[-1], per_layer, grads


def loss_and_grads(params, tokens, y, cfg):
    """(loss, per-layer losses (L,), grads) of mean_b 0.5 (y_hat_b - y_b)^2, fused per task.
    A GPT2Config: (loss, array([loss]), grads) of refimpl.gpt2.loss_and_grads."""
    if isinstance(cfg, GPT2Config):
        return numba_gpt2.loss_and_grads(params, tokens, y, cfg)
    tok = _check_inputs(params, tokens, cfg)
    y = _check_targets(y, tok)
    if numba_front.supports(cfg):
        return _front_loss_and_grads(params, tok, y, cfg)
    loss, per_layer, g = _loss_grads_flat(pack(params, cfg), tok, y, cfg)
    return loss, per_layer, unpack(g, cfg)


def adam_flat(pv, g, m, v, t, adam_cfg: AdamConfig):
    """In-place Adam with global-norm clipping on flat vectors; returns the norm before clipping."""
    norm = float(np.sqrt(sum_squares(g)))
    if not np.isfinite(norm):
        norm = scaled_norm([g])  # the sum of squares overflowed: refimpl.optim.global_norm's fallback
    adam_kernel(pv, g, m, v, adam_hyper(adam_cfg, t, pv.dtype, clip_factor(adam_cfg, norm)))
    return norm


def adam_update(params, grads, state, adam_cfg: AdamConfig):
    """One step: returns (new params, new state, gradient norm before clipping)."""
    if set(grads) != set(params):
        raise ValueError(f"grads: names {sorted(set(grads) ^ set(params))} do not match params")
    for k, g in grads.items():
        check_array(f"grads[{k!r}]", g, shape=params[k].shape)
    dtype = next(iter(params.values())).dtype
    pv, g, m, v = (pack_like(d, params, dtype=dtype) for d in (params, grads, state["m"], state["v"]))
    t = state["t"] + 1
    norm = adam_flat(pv, g, m, v, t, adam_cfg)
    new_state = {"t": t, "m": unpack_like(m, params), "v": unpack_like(v, params)}
    return unpack_like(pv, params), new_state, norm


def train_step(params, state, tokens, y, cfg, adam_cfg):
    """One optimiser step on a given batch: fused forward, backward and Adam. (params, state, loss)."""
    if isinstance(cfg, GPT2Config):
        return numba_gpt2.train_step(params, state, tokens, y, cfg, adam_cfg)
    tok = _check_inputs(params, tokens, cfg)
    y = _check_targets(y, tok)
    pv, m, v = pack(params, cfg), pack(state["m"], cfg), pack(state["v"], cfg)  # new vectors: updated in place
    if numba_front.supports(cfg):
        loss, _, grads = _front_loss_and_grads(params, tok, y, cfg)
        g = pack(grads, cfg)
    else:
        loss, _, g = _loss_grads_flat(pv, tok, y, cfg)
    t = state["t"] + 1
    norm = adam_flat(pv, g, m, v, t, adam_cfg)
    return unpack(pv, cfg), {"t": t, "m": unpack(m, cfg), "v": unpack(v, cfg), "grad_norm": norm}, loss


def kernels_to_compile(cfg=None):
    """The kernels that training and evaluating `cfg` call and that have no cached machine code yet
    (kernels.numba.cache): what a first run compiles, once; [] when all are cached. cfg None: those
    of the linear-attention models (every linear-regression experiment). A GPT2Config: the GPT-2
    kernels, Adam's included (its batches come from refimpl.gaussian, not the drawer)."""
    from kernels.numba import draw
    from kernels.numba.cache import missing_kernels
    if isinstance(cfg, GPT2Config):
        return missing_kernels(numba_gpt2.kernels(cfg))
    lsa = cfg is None or numba_lsa.supports(cfg)
    model = [numba_lsa.lsa_kernel] if lsa else [task_kernel, reduce_rows]
    if cfg is not None and numba_query_block.supports(cfg):
        model.append(numba_query_block.query_block_kernel)
    if cfg is not None and numba_front.supports(cfg):
        model += [numba_front.gelu_kernel, numba_front.gelu_backward_kernel]
    return missing_kernels(model + [draw.draw_kernel, draw.normal_kernel, exponent_carry, sum_squares,
                                    adam_kernel])


def fill_buffers(cfg, num_tokens, batch, dtype, value):
    """Fill every persistent buffer (workspace, gradient rows, read-out scratch) with `value`:
    a test can poison them with NaN to prove that no kernel reads an entry it did not write."""
    if isinstance(cfg, GPT2Config):
        return numba_gpt2.fill_buffers(cfg, num_tokens, batch, dtype, value)
    if numba_front.supports(cfg):  # its blocks run as a model without a front end
        fill_buffers(numba_front.block_config(cfg), num_tokens, batch, dtype, value)
    pl = plan(cfg, num_tokens, batch, dtype)
    for a in (pl.ws, pl.G, pl.rd, pl.dr, pl.sq, pl.no_dtok, pl.y0):
        a[...] = value
    if numba_lsa.supports(cfg):
        numba_lsa.fill_buffers(cfg, num_tokens, batch, dtype, value)
    if numba_query_block.supports(cfg):
        numba_query_block.fill_buffers(cfg, num_tokens, batch, dtype, value)
