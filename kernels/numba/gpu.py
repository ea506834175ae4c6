"""The `numba-cuda` backend: the numba-cpu per-task code as CUDA kernels, arrays kept on the device.

(Named gpu.py, not cuda.py: numba-cuda's import hook takes over every module whose name contains
"numba.cuda", which kernels.numba.cuda would.)

Mirrors refimpl.model, refimpl.loss and refimpl.optim (same functions as kernels/numba/cpu.py).
Parameters and the Adam moments live in one flat device vector each; the {name: array} dicts this
backend hands out are `DeviceParams`, whose values are views of that vector, so a training step
does no packing and no host round trip except the scalar loss it returns.

Kernels: loss_and_grads and train_step run one warp per task (workspace and gradient accumulator
in shared memory) where that fits Numba's 48 KiB: attention-only models on gpu_warp.py, models
with LayerNorm / MLP on gpu_warp_block.py (the choice: gpu_warp_host.py warp_kernel). Front ends,
bigger workspaces and model_forward / model_backward run one thread per task (gpu_kernels.py).
The reduction, norm and Adam kernels are shared. `train_step` allocates its three output
vectors and waits for the device once, to read the loss and the gradient norm back;
kernels/numba/gpu_trainer.py DeviceTrainer steps with neither.
"""
import numpy as np
from numba import cuda

from refimpl.config import AdamConfig
from refimpl.model import check_tokens
from refimpl.params import check_params, param_shapes
from refimpl.params import init_params as _oracle_init_params
from refimpl.validate import check_array

from kernels.numba import gpu_warp_host as gpu_warp
from kernels.numba.adam import adam_hyper
from kernels.numba.gpu_kernels import (GROUP, MODE_BACKWARD, MODE_FORWARD, MODE_LOSS, NORM_TPB, TPB,
                                       kernels, simulated, task_kernel)
from kernels.numba.layout import I_NP, I_W_SIZE, build_constants, build_layout, build_posenc, cached_plan
from kernels.params import pack, pack_like, unpack, unpack_like

name = "numba-cuda"


def availability():
    try:
        if cuda.is_available():
            return True, "Numba CUDA kernels on " + ("the simulator" if simulated() else "a GPU")
        return False, "no CUDA GPU / driver found"
    except Exception as e:  # a broken driver install can fail in many ways
        return False, f"CUDA check failed: {type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------
class DeviceParams(dict):
    """{name: device array} whose values are views of one flat device vector `flat`."""
    flat = None


def _is_device(x):
    return hasattr(x, "copy_to_host")


def asarray(x, dtype=None):
    if isinstance(x, dict):
        return {k: asarray(v, dtype) for k, v in x.items()}
    if _is_device(x) and dtype is None:
        return x
    return cuda.to_device(np.ascontiguousarray(np.asarray(to_numpy(x), dtype=dtype)))


def to_numpy(x):
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    return x.copy_to_host() if _is_device(x) else np.asarray(x)


def _device_params(views, flat):
    out = DeviceParams(views)
    out.flat = flat
    return out


def _views(flat, cfg):
    """DeviceParams of views into the flat device vector, in param_shapes order."""
    return _device_params(unpack(flat, cfg), flat)


def _flat(params, cfg):
    """The flat device vector of a parameter dict (no copy for DeviceParams in param order)."""
    if isinstance(params, DeviceParams) and params.flat is not None and list(params) == list(param_shapes(cfg)):
        return params.flat
    host = {k: to_numpy(v) for k, v in params.items()}
    check_params(host, cfg)
    return cuda.to_device(pack(host, cfg))


def init_params(cfg, rng, dtype=np.float64):
    """The oracle's numbers (same generator draws), moved to the device."""
    return _views(cuda.to_device(pack(_oracle_init_params(cfg, rng, dtype), cfg)), cfg)


def adam_init(params):
    if isinstance(params, DeviceParams) and params.flat is not None:
        zeros = np.zeros(params.flat.shape, params.flat.dtype)
        m, v = cuda.to_device(zeros), cuda.to_device(zeros)
        return {"t": 0, "m": _device_params(unpack_like(m, params), m),
                "v": _device_params(unpack_like(v, params), v)}
    return {"t": 0, "m": {k: asarray(np.zeros(a.shape, a.dtype)) for k, a in params.items()},
            "v": {k: asarray(np.zeros(a.shape, a.dtype)) for k, a in params.items()}}


class _Plan:
    """Device buffers and tables for one (cfg, T, B, dtype), built once."""

    def __init__(self, cfg, T, B, dtype):
        ii, lay = build_layout(cfg, T)
        self.NP, self.W, self.L, self.B = int(ii[I_NP]), int(ii[I_W_SIZE]), cfg.num_layers, B
        self.ii, self.lay = cuda.to_device(ii), cuda.to_device(lay)
        self.cst = cuda.to_device(build_constants(cfg, dtype, B))
        self.pe = cuda.to_device(build_posenc(cfg, T, dtype))
        self.ws = cuda.device_array(B * self.W, dtype)
        self.G = cuda.device_array(B * self.NP, dtype)
        self.rd = cuda.device_array((self.L, B), dtype)
        self.dr = cuda.device_array((self.L, B), dtype)
        self.sqe = cuda.device_array(B * self.L, dtype)  # (B, L) squared errors
        self.y0 = cuda.device_array(B, dtype)
        self.no_dtok = cuda.device_array((1, 1, 1), dtype)
        self.sumsq = cuda.device_array(1, np.float64)
        self.factor = cuda.device_array(1, dtype)
        self.dtype = np.dtype(dtype)
        # the reduction's buffers, made once: two ping-pong row blocks, the gradient and the sums
        # of squared errors (a training step allocates nothing on the device)
        groups = -(-B // GROUP)
        self.red = (cuda.device_array(groups * max(self.NP, self.L), dtype),
                    cuda.device_array(-(-groups // GROUP) * max(self.NP, self.L), dtype))
        self.g = cuda.device_array(self.NP, dtype)
        self.sqe_sum = cuda.device_array(self.L, dtype)


_PLANS = {}


def plan(cfg, T, B, dtype):
    return cached_plan(_PLANS, _Plan, cfg, T, B, dtype, limit=8)


def column_sums(rows_buf, rows, cols, out, scratch):
    """Sum a flat (rows, cols) device buffer over rows into `out` (cols,) by the fixed-order tree of
    reduce_kernel; scratch: two device buffers of at least ceil(rows / GROUP) * cols entries."""
    k = kernels()["reduce"]
    cur, n, i = rows_buf, rows, 0
    while n > 1:
        groups = -(-n // GROUP)
        dst = out if groups == 1 else scratch[i % 2]
        k[(-(-cols // 128), groups), 128](cur, n, cols, GROUP, dst)
        cur, n, i = dst, groups, i + 1
    if cur is rows_buf:  # a single row
        out.copy_to_device(rows_buf[:cols])
    return out


def _device_tokens(tokens, cfg, dtype):
    """Tokens as a device array, checked like refimpl.model.check_tokens."""
    if _is_device(tokens):
        if tokens.ndim != 3 or tokens.shape[2] != cfg.token_dim:
            raise ValueError(f"tokens: expected (B, T, {cfg.token_dim}), got shape {tokens.shape}")
        tok = tokens
    else:
        check_tokens(np.asarray(tokens), cfg)
        tok = cuda.to_device(np.ascontiguousarray(tokens))
    if tok.dtype != dtype:
        raise ValueError(f"tokens: expected dtype {dtype} (the parameters'), got {tok.dtype}")
    return tok


def _device_vector(y, B, dtype, name):
    if not _is_device(y):
        check_array(name, np.asarray(y), shape=(B,))
        y = cuda.to_device(np.ascontiguousarray(y))
    if y.shape != (B,) or y.dtype != dtype:
        raise ValueError(f"{name}: expected shape ({B},) dtype {dtype}, got {y.shape} {y.dtype}")
    return y


def _launch(mode, pl, tok, y, dr, pv, dtok):
    B = tok.shape[0]
    task_kernel(mode)[-(-B // TPB), TPB](tok, y, dr, pv, pl.ii, pl.lay, pl.cst, pl.pe, pl.ws,
                                         pl.rd, pl.G, pl.sqe, dtok)


def model_forward(params, tokens, cfg):
    pv = _flat(params, cfg)
    tok = _device_tokens(tokens, cfg, pv.dtype)
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, pv.dtype)
    _launch(MODE_FORWARD, pl, tok, pl.y0, pl.dr, pv, pl.no_dtok)
    rd = cuda.device_array((cfg.num_layers, B), pv.dtype)
    rd.copy_to_device(pl.rd)
    return rd, {"cfg": cfg, "tokens": tok, "pv": pv}


def model_backward(dreadouts, cache):
    cfg, tok, pv = cache["cfg"], cache["tokens"], cache["pv"]
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, pv.dtype)
    if _is_device(dreadouts):
        dr = dreadouts
    else:
        check_array("dreadouts", np.asarray(dreadouts), shape=(cfg.num_layers, B))
        dr = cuda.to_device(np.ascontiguousarray(dreadouts, dtype=pv.dtype))
    dtok = cuda.to_device(np.full(tok.shape, np.nan, pv.dtype))  # (B, T, D_in)
    _launch(MODE_BACKWARD, pl, tok, pl.y0, dr, pv, dtok)
    g = column_sums(pl.G, B, pl.NP, cuda.device_array(pl.NP, pv.dtype), pl.red)
    return dtok, _views(g, cfg)


def _loss_grads_launch(pv, tok, y, cfg):
    """Queue the loss and gradient kernels: the flat gradient lands in plan.g, the per-task squared
    errors summed in plan.sqe_sum (L,). Returns the plan; nothing is copied to the host."""
    B, T, _ = tok.shape
    pl = plan(cfg, T, B, pv.dtype)
    _launch(MODE_LOSS, pl, tok, y, pl.dr, pv, pl.no_dtok)
    column_sums(pl.G, B, pl.NP, pl.g, pl.red)
    column_sums(pl.sqe, B, pl.L, pl.sqe_sum, pl.red)
    return pl


_WARP_PLANS = {}


def warp_plan(cfg, T, B, dtype):
    return cached_plan(_WARP_PLANS, lambda *a: gpu_warp.WarpPlan(*a, simulated(), GROUP), cfg, T, B,
                       dtype, limit=8)


def _warp_loss_grads_launch(pv, tok, y, cfg):
    """Attention-only models: one warp per task (kernels/numba/gpu_warp.py), then the fixed-order
    column sums of the blocks' partial rows. plan.g holds the gradients and the sums of 0.5 r_l^2."""
    B, T, _ = tok.shape
    pl = warp_plan(cfg, T, B, pv.dtype)
    pl.launch_step(tok, y, pv)
    column_sums(pl.partials, pl.launch.grid, pl.NP + pl.L, pl.g, pl.red)
    return pl


def launch_loss_grads(pv, tok, y, cfg):
    """Queue a batch's loss and gradient kernels on the path the config takes (one warp per task
    where gpu_warp supports the model, else one thread per task); returns the plan holding them
    (`grads_of(pl)`, `loss_sums_of(pl)`). Nothing is copied to the host."""
    warp = gpu_warp.supported(cfg, tok.shape[1], pv.dtype)  # one warp per task where it fits
    return (_warp_loss_grads_launch if warp else _loss_grads_launch)(pv, tok, y, cfg)


def loss_sums_of(pl):
    """(sums (L,) device vector, mul): the per-layer losses are sums * mul / B, in the data's dtype."""
    if isinstance(pl, gpu_warp.WarpPlan):
        return pl.g[pl.NP:], 1.0
    return pl.sqe_sum, 0.5


def _per_layer(pl):
    """Per-layer losses on the host: L scalars copied back (waits for the queue)."""
    sums, mul = loss_sums_of(pl)
    return (mul * sums.copy_to_host() / pl.B).astype(pl.dtype)


def grads_of(pl):
    """The flat gradient (P,) on the device, in the plan's buffer."""
    return pl.g[:pl.NP] if isinstance(pl, gpu_warp.WarpPlan) else pl.g


def loss_and_grads(params, tokens, y, cfg):
    pv = _flat(params, cfg)
    tok = _device_tokens(tokens, cfg, pv.dtype)
    yd = _device_vector(y, tok.shape[0], pv.dtype, "y")
    pl = launch_loss_grads(pv, tok, yd, cfg)
    g = _copy(grads_of(pl))  # the caller's own gradient: the plan's buffer is reused by the next call
    per_layer = _per_layer(pl)
    return per_layer[-1], per_layer, _views(g, cfg)


def _adam_flat(pv, g, m, v, t, adam_cfg: AdamConfig, sumsq, factor):
    """In place on device vectors: global-norm clipping, Adam. Leaves sum g^2 in sumsq[0]."""
    ks = kernels()
    ks["norm"][1, NORM_TPB](g, float(adam_cfg.grad_clip), sumsq, factor)
    n = pv.shape[0]
    ks["adam"][-(-n // 128), 128](pv, g, m, v, adam_hyper(adam_cfg, t, pv.dtype), factor)


def _copy(flat):
    out = cuda.device_array_like(flat)
    out.copy_to_device(flat)
    return out


def adam_update(params, grads, state, adam_cfg: AdamConfig):
    """One step: (new params, new state, gradient norm before clipping); inputs are not mutated."""
    if set(grads) != set(params):
        raise ValueError(f"grads: names {sorted(set(grads) ^ set(params))} do not match params")
    like = {k: to_numpy(v) for k, v in params.items()}
    cat = lambda d: cuda.to_device(pack_like({k: to_numpy(d[k]) for k in like}, like))  # noqa: E731
    pv, g, m, v = cat(params), cat(grads), cat(state["m"]), cat(state["v"])
    dtype = pv.dtype
    sumsq, factor = cuda.device_array(1, np.float64), cuda.device_array(1, dtype)
    t = state["t"] + 1
    _adam_flat(pv, g, m, v, t, adam_cfg, sumsq, factor)
    norm = float(np.sqrt(sumsq.copy_to_host()[0]))
    split = lambda flat: _device_params(unpack_like(flat, like), flat)  # noqa: E731
    return split(pv), {"t": t, "m": split(m), "v": split(v)}, norm


def train_step(params, state, tokens, y, cfg, adam_cfg):
    """Fused step on the device: per-task forward/backward, tree reduction, Adam. Returns (params,
    state, loss); the new params/state are new device vectors written by the Adam kernel itself."""
    from kernels.numba.gpu_trainer import adam_into  # (it imports this module)
    pv = _flat(params, cfg)
    m, v = _flat(state["m"], cfg), _flat(state["v"], cfg)
    tok = _device_tokens(tokens, cfg, pv.dtype)
    yd = _device_vector(y, tok.shape[0], pv.dtype, "y")
    pl = launch_loss_grads(pv, tok, yd, cfg)
    t = state["t"] + 1
    pv, m, v = adam_into(pv, grads_of(pl), m, v, t, adam_cfg, pl.sumsq, pl.factor)
    # the host waits once, after every kernel of the step is queued: the losses, then the norm as
    # the device computed it (inf where its sum of squares overflowed: the training loop's
    # divergence check reads it, so an overflow stops the run instead of zeroing the update)
    per_layer = _per_layer(pl)
    norm = float(np.sqrt(pl.sumsq.copy_to_host()[0]))
    return _views(pv, cfg), {"t": t, "m": _views(m, cfg), "v": _views(v, cfg), "grad_norm": norm}, per_layer[-1]


def fill_buffers(cfg, num_tokens, batch, dtype, value):
    """Fill every persistent device buffer with `value` (tests poison them with NaN)."""
    pl = plan(cfg, num_tokens, batch, dtype)
    bufs = (pl.ws, pl.G, pl.rd, pl.dr, pl.sqe, pl.no_dtok, pl.y0, pl.factor, pl.g, pl.sqe_sum, *pl.red)
    if gpu_warp.supported(cfg, num_tokens, dtype):
        bufs += warp_plan(cfg, num_tokens, batch, dtype).buffers()
    for a in bufs:
        a.copy_to_device(np.full(a.shape, value, a.dtype))


def synchronize():
    """Wait for every launched kernel (for timing)."""
    cuda.synchronize()


def mse_forward(y_hat, y):
    """refimpl.loss.mse_forward on (B,) vectors (a host reduction: B numbers)."""
    from refimpl.loss import mse_forward as oracle_mse_forward
    loss, r = oracle_mse_forward(to_numpy(y_hat), to_numpy(y))
    return loss, r


def mse_backward(dloss, cache):
    """d loss / d y_hat (B,) as a device array."""
    from refimpl.loss import mse_backward as oracle_mse_backward
    return asarray(oracle_mse_backward(dloss, cache))
