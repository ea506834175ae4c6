"""The `cupy` backend: the oracle's functions on a CUDA GPU, float64 and float32.

Two paths, same numbers:
- fused (this module's loss_and_grads, adam_update, train_step; GraphTrainer and draw_tasks in
  kernels/cupy/graph.py): the RawKernels of
  kernels/cupy/cuda/*.cu. A model of attention layers only (the paper's LSA; softmax layers too) takes
  ONE launch per training step (model_step.cu: forward, backward, deterministic reduction over tasks,
  clipping and Adam); models with LayerNorm / MLP run one fused launch per layer and direction
  (block.cu) and the fused Adam (adam.cu). GraphTrainer draws the tasks on the device (Philox,
  tasks.cu / philox.cuh) and replays one captured CUDA graph per step; the loss is read back only
  when logged.
- unfused (model_forward, model_backward, mse_*, and every config the kernels do not cover, e.g. a
  front end, and the GPT-2 style model of refimpl.gpt2 (a GPT2Config), whose Adam step is still the
  fused one): the oracle's own vectorised code on CuPy arrays (cuBLAS batched products); see also
  the `cupy-unfused` backend, which uses it for everything (the baseline the kernels must beat).
Parameters stay dicts of CuPy arrays in the interface; the kernels see one packed vector in
refimpl.params.param_shapes order (kernels/params.py pack/unpack).
"""
import contextlib
import functools

import numpy as np

from refimpl import gpt2 as _gpt2
from refimpl import loss as _loss
from refimpl import model as _model
from refimpl import optim as _optim
from refimpl import params as _params
from refimpl.validate import check_array

from kernels import INSTALL_GPU
from kernels.numpy_backend import model_backward, model_forward  # noqa: F401  (the oracle's, GPT-2's too)
from kernels.cupy import build as cb

name = "cupy"
INSTALL = INSTALL_GPU


def availability():
    """(ok, reason) without raising: 'cupy not installed' or 'no CUDA device' when it cannot run."""
    try:
        import cupy
    except ImportError as e:
        return False, f"cupy not installed ({e})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver or device
        return False, f"no CUDA device ({type(e).__name__}: {e})"
    if count < 1:
        return False, "no CUDA device"
    props = cupy.cuda.runtime.getDeviceProperties(0)
    return True, f"{count} CUDA device(s); device 0: {props['name'].decode()}"


def _cp():
    import cupy
    return cupy


def _on(stream):
    """`with _on(stream):` makes `stream` current (None: leave the current stream)."""
    return stream if stream is not None else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _module(src, real, defines=()):
    """One source compiled for one real type only (a run compiles just the dtype it uses), with
    `defines` (-D options, e.g. cb.model_step_defines) added to the compile options."""
    cp = _cp()
    return cp.RawModule(code=cb.source(src), options=cb.compile_options() + tuple(defines),
                        name_expressions=[f"{k}<{real}>" for k in cb.KERNELS[src]])


@functools.lru_cache(maxsize=None)
def device_limits():
    """The current device's cb.DeviceLimits (SMs, opt-in shared memory per block and per SM)."""
    attrs = _cp().cuda.Device().attributes
    return cb.DeviceLimits(num_sms=int(attrs["MultiProcessorCount"]),
                           smem_optin=int(attrs["MaxSharedMemoryPerBlockOptin"]),
                           smem_per_sm=int(attrs["MaxSharedMemoryPerMultiprocessor"]))


def smem_limit():
    """Dynamic shared memory one block may use on this device."""
    return device_limits().smem_optin - cb.SMEM_STATIC_RESERVE


def kernel_limits(*ks):
    """Launch limits of compiled kernels sharing one launch shape: the fewest threads per block any
    allows (registers included) and the most registers per thread any uses."""
    return {"max_threads": min(k.max_threads_per_block for k in ks),
            "regs_per_thread": max(k.num_regs for k in ks)}


def kernel(src, kernel_name, dtype, smem_bytes=0, defines=()):
    """The compiled `kernel_name<real>` of kernels/cupy/cuda/`src` (compiled once per process,
    dtype and defines, on first use)."""
    real = cb.real_type(dtype)
    k = _module(src, real, tuple(defines)).get_function(f"{kernel_name}<{real}>")
    if smem_bytes > cb.SMEM_DEFAULT and k.max_dynamic_shared_size_bytes < smem_bytes:
        k.max_dynamic_shared_size_bytes = smem_bytes
    return k


# ----------------------------------------------------------------------------------------------
# the interface: arrays, parameters, the unfused oracle on CuPy arrays
def asarray(x, dtype=None):
    return _cp().asarray(x, dtype=dtype)


def to_numpy(x):
    return _cp().asnumpy(x)


def init_params(cfg, rng, dtype=np.float64):
    """The oracle's initial parameters (identical numbers), on the device."""
    return {k: asarray(v) for k, v in _params.init_params(cfg, rng, dtype).items()}


mse_forward = _loss.mse_forward
mse_backward = _loss.mse_backward
adam_init = _optim.adam_init


def _check_batch(params, tokens, y, cfg):
    _model.check_tokens(tokens, cfg)
    check_array("y", y, shape=(tokens.shape[0],))
    _params.check_params(params, cfg)
    dtype = tokens.dtype
    for k, v in params.items():
        if v.dtype != dtype or y.dtype != dtype:
            raise ValueError(f"dtype mismatch: tokens={dtype}, y={y.dtype}, params[{k!r}]={v.dtype}")
    return dtype


def fused_path(cfg, T=None, dtype=np.float32):
    """'model_step', 'blocks' or None (the unfused oracle) for this config and, given T tokens,
    these shapes: one task's workspace must fit in a block's shared memory (smem_limit())."""
    if cb.model_step_unsupported(cfg) is None:
        if T is None or cb.model_dims(cfg, T).warp_bytes(0, dtype) <= smem_limit():
            return "model_step"
    if cb.block_unsupported(cfg) is None:
        if T is None or all(cb.block_dims(cfg, l, T).warp_bytes(dtype) <= smem_limit()
                            for l in range(cfg.num_layers)):
            return "blocks"
    return None


# ----------------------------------------------------------------------------------------------
# model_step.cu: the whole step of an attention-only model in one launch
class StepBuffers:
    """Static device buffers of one model_step configuration (B, T, dtype)."""

    def __init__(self, cfg, B, T, dtype, d_draw=0, specialize=False):
        """specialize: compile model_step.cu for this model's shapes (cb.model_step_defines), one
        more compile per shape; GraphTrainer does, the one-off calls of the interface do not."""
        cp = _cp()
        self.cfg, self.B, self.dtype = cfg, B, np.dtype(dtype)
        self.dims = cb.model_dims(cfg, T)
        defines = cb.model_step_defines(self.dims) if specialize else ()
        k = kernel("model_step.cu", "model_step", dtype, defines=defines)  # compiled on first use
        self.launch = cb.model_step_launch(B, self.dims, d_draw, dtype, device_limits(), **kernel_limits(k))
        self.partials = cp.empty((self.launch.grid, self.launch.partial_cols), dtype)  # (grid, P+L)
        self.ticket = cp.zeros(1, cp.uint32)
        self.stats = cp.full(self.dims.L + 1, np.nan, dtype)  # per-layer losses, gradient norm
        self.kernel = kernel("model_step.cu", "model_step", dtype, self.launch.smem_bytes, defines)
        if not self.launch.finish_in_kernel:  # many partial rows: a second, multi-block launch
            self.block_sums = cp.empty(self.launch.finish_grid, cp.float64)  # (finish_grid,)
            self.finish = kernel("model_step.cu", "model_step_finish", dtype, defines=defines)

    def launch_step(self, params_vec, tokens, targets, draw, grads, apply, m, v, step, adam_cfg,
                    stream=None, finish=True):
        """The step's launch(es) on `stream`; finish=False leaves out the multi-block reduction
        launch of a two-launch step (the benchmark times the per-task part alone that way)."""
        args = cb.model_step_args(self.dims, self.B, self.launch, tokens, targets, draw, params_vec,
                                  self.partials, self.ticket, grads, self.stats, apply, m, v, step,
                                  adam_cfg, self.dtype)
        with _on(stream):  # RawKernel launches on the current stream
            self.kernel((self.launch.grid,), (self.launch.block,), args,
                        shared_mem=self.launch.smem_bytes)
            if finish and not self.launch.finish_in_kernel:
                self.finish((self.launch.finish_grid,), (cb.FINISH_THREADS,),
                            cb.model_step_finish_args(self.dims, self.B, self.launch, self.partials,
                                                      self.block_sums, self.ticket, grads,
                                                      self.stats, apply, params_vec, m, v, step,
                                                      adam_cfg))


def _model_step_loss_and_grads(params, tokens, y, cfg):
    cp = _cp()
    B, T, _ = tokens.shape
    buf = StepBuffers(cfg, B, T, tokens.dtype)
    vec = cb.pack(params, cfg, cp)
    grads = cp.full(buf.dims.num_params, np.nan, tokens.dtype)
    step = cp.zeros(1, cp.int32)
    buf.launch_step(vec, cp.ascontiguousarray(tokens), cp.ascontiguousarray(y), None, grads, 0,
                    None, None, step, None)
    per_layer = buf.stats[:cfg.num_layers]
    return per_layer[-1], per_layer, {k: g.copy() for k, g in cb.unpack(grads, cfg).items()}


# ----------------------------------------------------------------------------------------------
# block.cu: one fused launch per layer and direction
def _blocks_loss_and_grads(params, tokens, y, cfg):
    cp = _cp()
    dtype = tokens.dtype
    B, T, D = tokens.shape
    vec = cb.pack(params, cfg, cp)
    grads = cp.zeros(vec.size, dtype)  # the backward kernels add into it
    xs = [cp.ascontiguousarray(tokens)]  # layer inputs (B, T, D), then the output
    limits = kernel_limits(kernel("block.cu", "block_forward", dtype), kernel("block.cu", "block_backward", dtype))
    for l in range(cfg.num_layers):
        b = cb.block_dims(cfg, l, T)
        ln = cb.block_launch(B, b, dtype, device_limits(), **limits)
        w = vec[cb.set_offset(cfg, cfg.param_layer(l)):]
        out = cp.empty_like(xs[-1])
        grid = -(-B // ln.warps_per_block)  # one task per warp
        kernel("block.cu", "block_forward", dtype, ln.smem_bytes)(
            (grid,), (ln.block,), cb.block_forward_args(b, B, xs[-1], w, out), shared_mem=ln.smem_bytes)
        xs.append(out)
    readouts = -cp.stack([x[:, -1, -1] for x in xs[1:]])  # (L, B)
    loss, lcache = _loss.mse_forward(readouts[-1], y)
    dread = cp.zeros_like(readouts)  # (L, B)
    dread[-1] = _loss.mse_backward(1.0, lcache)
    per_layer = 0.5 * cp.mean((readouts - y) ** 2, axis=1)  # (L,)
    dx = cp.zeros_like(xs[-1])  # (B, T, D)
    for l in reversed(range(cfg.num_layers)):
        dx[:, -1, -1] -= dread[l]
        b = cb.block_dims(cfg, l, T)
        ln = cb.block_launch(B, b, dtype, device_limits(), **limits)
        o = cb.set_offset(cfg, cfg.param_layer(l))
        partials = cp.empty((ln.grid, ln.partial_cols), dtype)
        ticket = cp.zeros(1, cp.uint32)
        dx_in = cp.empty_like(dx)
        kernel("block.cu", "block_backward", dtype, ln.smem_bytes)(
            (ln.grid,), (ln.block,),
            cb.block_backward_args(b, B, ln, xs[l], vec[o:], dx, dx_in, partials, ticket, grads[o:]),
            shared_mem=ln.smem_bytes)
        if not ln.finish_in_kernel:  # many partial rows: the multi-block column sums
            kernel("block.cu", "block_add_partials", dtype)(
                (ln.finish_grid,), (cb.FINISH_THREADS,), cb.block_add_partials_args(ln, partials, grads[o:]))
        dx = dx_in
    return loss, per_layer, {k: g.copy() for k, g in cb.unpack(grads, cfg).items()}


def loss_and_grads(params, tokens, y, cfg):
    """(loss, per-layer losses (L,), grads) as refimpl.loss.loss_and_grads, by the fused kernels
    where the config allows (fused_path), else by the oracle on CuPy arrays (always for a GPT2Config)."""
    if isinstance(cfg, _gpt2.GPT2Config):
        return _gpt2.loss_and_grads(params, tokens, y, cfg)
    _check_batch(params, tokens, y, cfg)
    path = fused_path(cfg, tokens.shape[1], tokens.dtype)
    if path == "model_step":
        return _model_step_loss_and_grads(params, tokens, y, cfg)
    if path == "blocks":
        return _blocks_loss_and_grads(params, tokens, y, cfg)
    return _loss.loss_and_grads(params, tokens, y, cfg)


# ----------------------------------------------------------------------------------------------
# adam.cu: fused Adam on the packed vector
def adam_packed(vec, m, v, g, step, adam_cfg, norm_out, stream=None):
    """One Adam step in place on packed device vectors; step: (1,) int32 on the device."""
    cp = _cp()
    n = vec.size
    grid, block = cb.adam_launch(n)
    block_sums = cp.empty(grid, cp.float64)
    ticket = cp.zeros(1, cp.uint32)
    with _on(stream):
        kernel("adam.cu", "adam_sumsq", vec.dtype)((grid,), (block,), cb.adam_sumsq_args(n, g, block_sums))
        kernel("adam.cu", "adam_apply", vec.dtype)(
            (grid,), (block,),
            cb.adam_apply_args(n, vec, m, v, g, block_sums, step, ticket, norm_out, adam_cfg))


def adam_update(params, grads, state, adam_cfg):
    """As refimpl.optim.adam_update (new params, new state, norm before clipping), fused."""
    cp = _cp()
    if set(grads) != set(params):
        raise ValueError(f"grads: names {sorted(set(grads) ^ set(params))} do not match params")
    names = list(params)
    flat = lambda d: cp.concatenate([cp.ravel(d[k]) for k in names])  # noqa: E731
    vec, m, v, g = flat(params), flat(state["m"]), flat(state["v"]), flat(grads)
    step = cp.array([state["t"]], cp.int32)
    norm = cp.zeros(1, cp.float64)
    adam_packed(vec, m, v, g, step, adam_cfg, norm)

    def split(x):
        out, o = {}, 0
        for k in names:
            out[k] = x[o:o + params[k].size].reshape(params[k].shape)
            o += params[k].size
        return out
    return split(vec), {"t": state["t"] + 1, "m": split(m), "v": split(v)}, float(norm[0])


def train_step(params, state, tokens, y, cfg, adam_cfg):
    """One optimiser step on a given batch: (params, state, loss). One launch for attention-only
    models; per-layer launches plus the fused Adam otherwise (the oracle plus the fused Adam for a
    GPT2Config)."""
    cp = _cp()
    if isinstance(cfg, _gpt2.GPT2Config) or fused_path(cfg, tokens.shape[1], tokens.dtype) != "model_step":
        loss, _, grads = loss_and_grads(params, tokens, y, cfg)
        params, state, _ = adam_update(params, grads, state, adam_cfg)
        return params, state, loss
    _check_batch(params, tokens, y, cfg)
    B, T, _ = tokens.shape
    buf = StepBuffers(cfg, B, T, tokens.dtype)
    vec, m, v = (cb.pack(d, cfg, cp) for d in (params, state["m"], state["v"]))
    step = cp.array([state["t"]], cp.int32)
    buf.launch_step(vec, cp.ascontiguousarray(tokens), cp.ascontiguousarray(y), None, None, 1, m, v,
                    step, adam_cfg)
    new_state = {"t": state["t"] + 1, "m": cb.unpack(m, cfg), "v": cb.unpack(v, cfg)}
    return cb.unpack(vec, cfg), new_state, buf.stats[cfg.num_layers - 1]

