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
                                  kernel_signature, name_expressions, real_type, source)
from kernels.params import pack, param_offsets, unpack  # noqa: F401  (the one packed layout)

SMEM_DEFAULT = 48 * 1024  # dynamic shared memory per block without the opt-in attribute
SMEM_LIMIT = 96 * 1024  # with it (the launcher sets it above SMEM_DEFAULT): fits sm_80 .. sm_90,
#                         leaving room for the kernels' few KB of static shared memory
MAX_WARPS_PER_BLOCK = 8  # the kernels' static scratch holds 256 threads
TARGET_WARPS = 1024  # ~8 resident warps on each of ~132 SMs: tasks per warp = ceil(B / this)


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
        """model_step_workspace(m).total"""
        TD, HK, HTS = self.T * self.D, self.H * self.K, self.H * self.T * self.S
        return (self.L * TD + TD + self.T * HK + 2 * self.S * HK + HTS + self.T * HK + TD
                + 2 * TD + self.T * HK + HTS + self.T * HK + 2 * self.S * HK + TD
                + self.num_params + self.L + self.L + 1)

    def warp_bytes(self, d, dtype):
        """model_step_warp_bytes(m, d, sizeof(real))"""
        b = 8 * d + np.dtype(dtype).itemsize * self.workspace_reals
        return (b + 15) // 16 * 16


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


def _task_launch(B, warp_bytes, cols, smem_limit):
    if warp_bytes > smem_limit:
        raise ValueError(f"shapes: one task needs {warp_bytes} bytes of shared memory, more than "
                         f"the limit {smem_limit}")
    tpw = max(1, -(-B // TARGET_WARPS))
    warps_needed = -(-B // tpw)
    wpb = min(MAX_WARPS_PER_BLOCK, smem_limit // warp_bytes, warps_needed)
    wpb = 1 << (wpb.bit_length() - 1)  # a power of two
    grid = -(-B // (wpb * tpw))
    return Launch(grid=grid, block=32 * wpb, warps_per_block=wpb, tasks_per_warp=tpw,
                  smem_bytes=wpb * warp_bytes, partial_cols=cols)


def model_step_launch(B, dims, d, dtype, smem_limit=SMEM_LIMIT):
    """Launch shape of model_step for B tasks (d: input dims of drawn tasks, 0 when read)."""
    if B < 1:
        raise ValueError(f"B: expected at least one task, got {B}")
    return _task_launch(B, dims.warp_bytes(d, dtype), dims.num_params + dims.L, smem_limit)


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


def block_launch(B, bdims, dtype, smem_limit=SMEM_LIMIT):
    if B < 1:
        raise ValueError(f"B: expected at least one task, got {B}")
    return _task_launch(B, bdims.warp_bytes(dtype), bdims.num_params, smem_limit)


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
            params, partials, ticket, null if grads is None else grads, stats,
            I32(apply), null if m is None else m, null if v is None else v, step,
            F64(lr), F64(b1), F64(b2), F64(eps), F64(clip))


def block_dims_args(b):
    return (I32(b.T), I32(b.D), I32(b.H), I32(b.K), I32(b.S), I32(b.F), I32(b.softmax),
            I32(b.causal), I32(b.y_update), I32(b.ln1), I32(b.mlp), I32(b.ln2), F64(b.lam),
            F64(b.clip))


def block_forward_args(b, B, X, W, Xout):
    return block_dims_args(b) + (I32(B), X, W, Xout)


def block_backward_args(b, B, launch, X, W, dXout, dX, partials, ticket, grads):
    return block_dims_args(b) + (I32(B), I32(launch.tasks_per_warp), X, W, dXout, dX, partials,
                                 ticket, grads)


def draw_tasks_args(seed, step, B, N, d, r, s, tokens, targets):
    return (U64(seed), np.uint32(step), I32(B), I32(N), I32(d), F64(r), F64(s), tokens, targets)


def adam_sumsq_args(n, g, block_sums):
    return (I32(n), g, block_sums)


def adam_apply_args(n, params, m, v, g, block_sums, step, ticket, norm_out, adam_cfg):
    return (I32(n), params, m, v, g, block_sums, step, ticket, norm_out, F64(adam_cfg.lr),
            F64(adam_cfg.b1), F64(adam_cfg.b2), F64(adam_cfg.eps), F64(adam_cfg.grad_clip))


# ----------------------------------------------------------------------------------------------
def nvrtc_compile(src_name, arch, dtypes=(np.float32, np.float64)):
    """Compile kernels/cupy/cuda/`src_name` to a cubin for sm_`arch` with NVRTC (cuda.bindings.nvrtc),
    as CuPy would. Returns {name expression: lowered name}; ValueError with the log on failure.
    Needs no GPU: only the NVRTC library (pip packages cuda-bindings and nvidia-cuda-nvrtc-cu12)."""
    from cuda.bindings import nvrtc

    def check(result, what, prog=None):
        err = result[0]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = ""
            if prog is not None:
                _, size = nvrtc.nvrtcGetProgramLogSize(prog)
                buf = b" " * size
                nvrtc.nvrtcGetProgramLog(prog, buf)
                log = buf.decode(errors="replace")
            raise ValueError(f"{src_name} (sm_{arch}): {what} failed: {err}\n{log}")
        return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)

    prog = check(nvrtc.nvrtcCreateProgram(source(src_name).encode(), src_name.encode(), 0, [], []),
                 "nvrtcCreateProgram")
    try:
        exprs = name_expressions(src_name, dtypes)
        for e in exprs:
            check(nvrtc.nvrtcAddNameExpression(prog, e.encode()), f"nvrtcAddNameExpression({e})")
        opts = [o.encode() for o in compile_options(arch)]
        check(nvrtc.nvrtcCompileProgram(prog, len(opts), opts), "nvrtcCompileProgram", prog)
        size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        if not size:
            raise ValueError(f"{src_name} (sm_{arch}): empty cubin")
        lowered = {}
        for e in exprs:
            name = check(nvrtc.nvrtcGetLoweredName(prog, e.encode()), f"nvrtcGetLoweredName({e})")
            lowered[e] = name.decode() if isinstance(name, bytes) else str(name)
        return lowered
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
