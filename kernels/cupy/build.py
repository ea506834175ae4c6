"""Host side of the CUDA kernels in kernels/cupy/cuda/*.cu, with no GPU dependency: the sources and the
compile options, the shapes the kernels support, launch shapes, shared-memory sizes, the packed
parameter layout, and the exact argument lists (typed as the kernels declare them).

Everything here is plain Python/NumPy so that CI checks it without a device; kernels/cupy/backend.py
launches with it. Sizes mirror the `*_workspace` / `*_layout` functions of the .cu sources (the
CPU tests compile those sources with g++ and compare).
"""
from dataclasses import dataclass

import numpy as np

from kernels.cupy.sources import (CUDA_DIR, KERNELS, REAL_TYPES, compile_options,  # noqa: F401
                                  kernel_signature, name_expressions, nvcc_compile, nvrtc_compile,
                                  real_type, source)
from kernels.params import pack, param_offsets, unpack  # noqa: F401  (the one packed layout)

SMEM_DEFAULT = 48 * 1024  # dynamic shared memory per block without the opt-in attribute
SMEM_STATIC_RESERVE = 1024  # the kernels' own static shared memory (a few flags) stays below this
WARPS_PER_SM = 16  # aim: ~16 resident warps on every SM (latency hiding for the per-task code)
MAX_WARPS_PER_BLOCK = 32  # 1 024 threads
REDUCE_IN_KERNEL_ENTRIES = 100_000  # partial entries (rows x columns) the last block sums itself;
#                                     above, a multi-block reduction kernel does (SUM_COLUMNS each)
SUM_COLUMNS = 32  # columns per block of the multi-block reductions (common.cuh)
FINISH_THREADS = 256  # threads per block of model_step_finish / block_add_partials


@dataclass(frozen=True)
class DeviceLimits:
    """What the launch shapes depend on: SMs, the opt-in shared memory per block (the most a kernel
    may ask for once its attribute is raised) and the shared memory of one SM."""
    num_sms: int
    smem_optin: int
    smem_per_sm: int
    regs_per_sm: int = 65536  # 32-bit registers of one SM (sm_80 .. sm_90)

    def __post_init__(self):
        for k in ("num_sms", "smem_optin", "smem_per_sm", "regs_per_sm"):
            v = getattr(self, k)
            if type(v) is not int or v < 1:
                raise ValueError(f"DeviceLimits.{k}: expected a positive int, got {v!r}")


# Used when no device is asked (the tests' shapes, CPU checks): an H100 SXM (132 SMs, 227 KiB
# opt-in per block, 228 KiB per SM; the H200 has the same); the backend asks the device it runs on.
H100 = DeviceLimits(num_sms=132, smem_optin=227 * 1024, smem_per_sm=228 * 1024)


# ----------------------------------------------------------------------------------------------
# which models the fused kernels run
def model_step_unsupported(cfg):
    """None if model_step.cu runs this config in one launch, else the reason (a string)."""
    if cfg.layernorm or cfg.mlp:
        return "LayerNorm / MLP blocks (run layer by layer by block.cu)"
    if cfg.embed_dim or cfg.input_mlp or cfg.pos_enc != "none":
        return "a front end (embedding, input MLP or positional encoding)"
    return None


def block_unsupported(cfg):
    """None if block.cu runs every layer of this config, else the reason."""
    if cfg.embed_dim or cfg.input_mlp or cfg.pos_enc != "none":
        return "a front end (embedding, input MLP or positional encoding)"
    return None


def num_keys(cfg, T):
    return T if cfg.include_query else T - 1


@dataclass(frozen=True)
class ModelDims:
    """Mirror of `struct ModelDims` in model_step.cu."""
    T: int
    D: int
    H: int
    K: int
    S: int
    L: int
    tied: int
    first_softmax: int
    softmax: int
    causal: int
    y_update: int
    lam: float
    clip: float

    @property
    def set_size(self):
        return 4 * self.D * self.H * self.K

    @property
    def num_params(self):
        return (1 if self.tied else self.L) * self.set_size

    @property
    def workspace_reals(self):
        """model_step_workspace(m).qu: the buffers up to the target, the layout that numba-cuda's
        warp kernel (kernels/numba/gpu_warp.py) shares"""
        TD, HK, HTS = self.T * self.D, self.H * self.K, self.H * self.T * self.S
        return (self.L * TD + TD + self.T * HK + 2 * self.S * HK + HTS + self.T * HK + TD
                + 2 * TD + self.T * HK + HTS + self.T * HK + 2 * self.S * HK + TD
                + self.num_params + self.L + self.L + 1)

    @property
    def last_layer_rank_one(self):
        """last_layer_rank_one(m): the last layer is linear attention (rank-one query-row form)"""
        return not (self.softmax or (self.L == 1 and self.first_softmax))

    @property
    def step_workspace_reals(self):
        """model_step_workspace(m).total: then u, z, w, g (H, D) each of a rank-one last layer"""
        return self.workspace_reals + (4 * self.H * self.D if self.last_layer_rank_one else 0)

    def warp_bytes(self, d, dtype):
        """model_step_warp_bytes(m, d, sizeof(real))"""
        b = 8 * d + np.dtype(dtype).itemsize * self.step_workspace_reals
        return (b + 15) // 16 * 16


def model_step_defines(dims):
    """NVRTC options fixing model_step.cu's sizes and flags at compile time (one module per model
    shape): the per-task loops get constant bounds and offsets. model_step stops (__trap) when
    launched with other shapes."""
    return tuple(f"-DMS_{k}={v}" for k, v in (
        ("T", dims.T), ("D", dims.D), ("H", dims.H), ("K", dims.K), ("S", dims.S), ("L", dims.L),
        ("TIED", dims.tied), ("FSOFT", dims.first_softmax), ("SOFT", dims.softmax),
        ("CAUSAL", dims.causal), ("YUP", dims.y_update)))


def model_dims(cfg, T):
    reason = model_step_unsupported(cfg)
    if reason is not None:
        raise ValueError(f"cfg: the fused model step does not support {reason}")
    if T < 2:
        raise ValueError(f"T: expected at least 2 tokens, got {T}")
    return ModelDims(T=T, D=cfg.token_dim, H=cfg.num_heads, K=cfg.key_size, S=num_keys(cfg, T),
                     L=cfg.num_layers, tied=int(cfg.weight_tied),
                     first_softmax=int(cfg.first_layer_softmax),
                     softmax=int(cfg.attention == "softmax"), causal=int(cfg.causal),
                     y_update=int(cfg.y_update), lam=float(cfg.dampening),
                     clip=float(cfg.token_clip))


@dataclass(frozen=True)
class Launch:
    grid: int
    block: int  # threads
    warps_per_block: int
    tasks_per_warp: int
    smem_bytes: int  # dynamic shared memory per block
    partial_cols: int  # columns of the (grid, cols) partials buffer
    finish_in_kernel: bool  # the last block sums the partial rows (else a multi-block kernel)

    @property
    def finish_grid(self):
        """Blocks of the multi-block reduction (model_step_finish / block_add_partials)."""
        return -(-self.partial_cols // SUM_COLUMNS)


def _task_launch(B, warp_bytes, cols, device, max_threads, regs_per_thread):
    """One warp per task, tasks_per_warp consecutive tasks each. Warps per block: as many as the
    opt-in shared memory and the kernel's registers allow (max_threads: the compiled kernel's
    limit per block), at most WARPS_PER_SM; blocks per SM: as many as its shared memory and
    registers hold, up to WARPS_PER_SM warps; tasks per warp: enough that the grid fits those slots
    in one wave; then the warps are spread evenly over the SMs (fewer per block when B is small)."""
    limit = device.smem_optin - SMEM_STATIC_RESERVE
    if warp_bytes > limit:
        raise ValueError(f"shapes: one task needs {warp_bytes} bytes of shared memory, more than "
                         f"the limit {limit}")
    if max_threads < 32:
        raise ValueError(f"max_threads: expected at least one warp (32), got {max_threads}")
    wpb = min(MAX_WARPS_PER_BLOCK, WARPS_PER_SM, limit // warp_bytes, max_threads // 32)
    by_regs = device.regs_per_sm // (32 * wpb * regs_per_thread) if regs_per_thread else WARPS_PER_SM
    blocks_per_sm = max(1, min(device.smem_per_sm // (wpb * warp_bytes + SMEM_STATIC_RESERVE),
                               WARPS_PER_SM // wpb, by_regs))
    slots = device.num_sms * blocks_per_sm  # blocks resident at once
    tpw = max(1, -(-B // (slots * wpb)))
    warps_needed = -(-B // tpw)
    wpb = min(wpb, -(-warps_needed // slots))  # spread over the SMs
    grid = -(-warps_needed // wpb)
    # the last block's reduction uses the warps' shared memory as scratch: a double per thread
    smem = max(wpb * warp_bytes, 8 * 32 * wpb)
    return Launch(grid=grid, block=32 * wpb, warps_per_block=wpb, tasks_per_warp=tpw,
                  smem_bytes=smem, partial_cols=cols,
                  finish_in_kernel=grid * cols <= REDUCE_IN_KERNEL_ENTRIES)


def model_step_launch(B, dims, d, dtype, device=H100, max_threads=1024, regs_per_thread=0):
    """Launch shape of model_step for B tasks (d: input dims of drawn tasks, 0 when read); the
    backend passes the compiled kernel's max_threads_per_block and num_regs (0: not counted)."""
    if B < 1:
        raise ValueError(f"B: expected at least one task, got {B}")
    return _task_launch(B, dims.warp_bytes(d, dtype), dims.num_params + dims.L, device,
                        max_threads, regs_per_thread)


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockDims:
    """Mirror of `struct BlockDims` in block.cu."""
    T: int
    D: int
    H: int
    K: int
    S: int
    F: int
    softmax: int
    causal: int
    y_update: int
    ln1: int
    mlp: int
    ln2: int
    lam: float
    clip: float

    def param_layout(self):
        """Ordered (name, size) of one layer's parameters: block_param_layout."""
        HK = self.H * self.K
        items = []
        if self.ln1:
            items += [("ln1.scale", self.D), ("ln1.offset", self.D)]
        items += [("attn.W_q", self.D * HK), ("attn.W_k", self.D * HK), ("attn.W_v", self.D * HK),
                  ("attn.W_p", HK * self.D)]
        if self.ln2:
            items += [("ln2.scale", self.D), ("ln2.offset", self.D)]
        if self.mlp:
            items += [("mlp.W1", self.D * self.F), ("mlp.b1", self.F), ("mlp.W2", self.F * self.D),
                      ("mlp.b2", self.D)]
        return items

    @property
    def num_params(self):
        return sum(n for _, n in self.param_layout())

    @property
    def workspace_reals(self):
        """block_workspace(b).total"""
        TD, HK, HTS, TF = self.T * self.D, self.H * self.K, self.H * self.T * self.S, self.T * self.F
        return (3 * TD + self.T + self.T * HK + 2 * self.S * HK + HTS + self.T * HK + 2 * TD
                + 2 * TD + self.T + 2 * TF + TD + TD + TD + 2 * TF + 3 * TD + self.T * HK + HTS
                + self.T * HK + 2 * self.S * HK + TD + self.num_params)

    def warp_bytes(self, dtype):
        return (np.dtype(dtype).itemsize * self.workspace_reals + 15) // 16 * 16


def block_dims(cfg, layer, T):
    reason = block_unsupported(cfg)
    if reason is not None:
        raise ValueError(f"cfg: the fused block does not support {reason}")
    return BlockDims(T=T, D=cfg.model_dim, H=cfg.num_heads, K=cfg.key_size, S=num_keys(cfg, T),
                     F=cfg.mlp_widening * cfg.model_dim,
                     softmax=int(cfg.layer_attention(layer) == "softmax"), causal=int(cfg.causal),
                     y_update=int(cfg.y_update), ln1=int(cfg.layer_has_ln(layer)),
                     mlp=int(cfg.mlp), ln2=int(cfg.mlp and cfg.layernorm),
                     lam=float(cfg.dampening), clip=float(cfg.token_clip))


def block_launch(B, bdims, dtype, device=H100, max_threads=1024, regs_per_thread=0):
    """Launch shape of block_backward (and, one task per warp, block_forward) for B tasks."""
    if B < 1:
        raise ValueError(f"B: expected at least one task, got {B}")
    return _task_launch(B, bdims.warp_bytes(dtype), bdims.num_params, device, max_threads,
                        regs_per_thread)


def adam_launch(n):
    """(grid, block) of adam_sumsq / adam_apply for n parameters."""
    if n < 1:
        raise ValueError(f"n: expected at least one parameter, got {n}")
    return min(1024, -(-n // (256 * 4))), 256


# ----------------------------------------------------------------------------------------------
# the packed parameter vector (kernels/params.py pack/unpack): refimpl.params.param_shapes order
def set_offset(cfg, p):
    """Offset of parameter set p (`layer{p}.` prefix): its entries are contiguous."""
    offs, _ = param_offsets(cfg)
    return min(o for name, (o, _) in offs.items() if name.startswith(f"layer{p}."))


# ----------------------------------------------------------------------------------------------
# argument lists, typed as the kernels declare them
I32, U64, F64 = np.int32, np.uint64, np.float64


def model_step_args(dims, B, launch, tokens, targets, draw, params, partials, ticket, grads,
                    stats, apply, m, v, step, adam_cfg, dtype):
    """Arguments of model_step; `draw` is None (read tokens/targets) or (seed, N, d, r, s)."""
    seed, N, d, r, s = draw if draw is not None else (0, 0, 0, 0.0, 0.0)
    lr, b1, b2, eps, clip = ((adam_cfg.lr, adam_cfg.b1, adam_cfg.b2, adam_cfg.eps, adam_cfg.grad_clip)
                             if adam_cfg is not None else (0.0, 0.0, 0.0, 0.0, 0.0))
    null = np.uint64(0)  # a null pointer
    return (I32(dims.T), I32(dims.D), I32(dims.H), I32(dims.K), I32(dims.S), I32(dims.L),
            I32(dims.tied), I32(dims.first_softmax), I32(dims.softmax), I32(dims.causal),
            I32(dims.y_update), F64(dims.lam), F64(dims.clip),
            I32(B), I32(launch.tasks_per_warp),
            null if tokens is None else tokens, null if targets is None else targets,
            I32(draw is not None), U64(seed), I32(N), I32(d), F64(r), F64(s),
            params, partials, ticket, I32(launch.finish_in_kernel), null if grads is None else grads, stats,
            I32(apply), null if m is None else m, null if v is None else v, step,
            F64(lr), F64(b1), F64(b2), F64(eps), F64(clip))


def model_step_finish_args(dims, B, launch, partials, block_sums, ticket, grads, stats, apply,
                           params, m, v, step, adam_cfg):
    """Arguments of model_step_finish (after a model_step launch with finish_in_kernel False)."""
    lr, b1, b2, eps, clip = ((adam_cfg.lr, adam_cfg.b1, adam_cfg.b2, adam_cfg.eps, adam_cfg.grad_clip)
                             if adam_cfg is not None else (0.0, 0.0, 0.0, 0.0, 0.0))
    null = np.uint64(0)
    return (I32(dims.num_params), I32(dims.L), I32(B), I32(launch.grid), partials, block_sums,
            ticket, null if grads is None else grads, stats, I32(apply), params,
            null if m is None else m, null if v is None else v, step, F64(lr), F64(b1), F64(b2),
            F64(eps), F64(clip))


def block_add_partials_args(launch, partials, grads):
    return (I32(launch.grid), I32(launch.partial_cols), partials, grads)


def block_dims_args(b):
    return (I32(b.T), I32(b.D), I32(b.H), I32(b.K), I32(b.S), I32(b.F), I32(b.softmax),
            I32(b.causal), I32(b.y_update), I32(b.ln1), I32(b.mlp), I32(b.ln2), F64(b.lam),
            F64(b.clip))


def block_forward_args(b, B, X, W, Xout):
    return block_dims_args(b) + (I32(B), X, W, Xout)


def block_backward_args(b, B, launch, X, W, dXout, dX, partials, ticket, grads):
    return block_dims_args(b) + (I32(B), I32(launch.tasks_per_warp), X, W, dXout, dX, partials,
                                 ticket, I32(launch.finish_in_kernel), grads)


def draw_tasks_args(seed, step, B, N, d, r, s, tokens, targets):
    return (U64(seed), np.uint32(step), I32(B), I32(N), I32(d), F64(r), F64(s), tokens, targets)


def adam_sumsq_args(n, g, block_sums):
    return (I32(n), g, block_sums)


def adam_apply_args(n, params, m, v, g, block_sums, step, ticket, norm_out, adam_cfg):
    return (I32(n), params, m, v, g, block_sums, step, ticket, norm_out, F64(adam_cfg.lr),
            F64(adam_cfg.b1), F64(adam_cfg.b2), F64(adam_cfg.eps), F64(adam_cfg.grad_clip))
