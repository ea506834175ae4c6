"""Host side of numba-cuda's one-warp-per-task kernels: which configs they run, the integer table
`dm` of sizes and workspace offsets, the constants in the data's dtype, the launch shape and the
device buffers of one (cfg, T, B, dtype).

Which kernel runs a model (warp_kernel): attention-only models kernels/numba/gpu_warp.py, models
with LayerNorm and / or an MLP kernels/numba/gpu_warp_block.py, each while one task's workspace
and gradient accumulator fit the 48 KiB of shared memory a Numba kernel gets per block (less
kernels/cupy/build.py's SMEM_STATIC_RESERVE); a front end (embedding, input MLP, positional
encoding) or a larger workspace runs on the thread-per-task kernel (kernels/numba/gpu_kernels.py).
"""
import functools
import math

import numpy as np
from numba import cuda

from kernels.cupy import build as cb  # launch shapes and workspace sizes (no GPU dependency)
from kernels.numba import gpu_warp as gw
from kernels.numba import gpu_warp_block as gwb
from kernels.numba.gpu_warp import (C_CLIP, C_HALF, C_INV_B, C_LAM, C_ONE, C_SQRT_K, C_ZERO, NP_,
                                    NUM_CST, NUM_DM, W_TOTAL, W_XS, warp_step_kernel)
from kernels.numba.layout import build_layout
from refimpl.layers import GELU_C, LN_EPS
from refimpl.params import param_offsets

NUMBA_SMEM = 48 * 1024  # dynamic shared memory per block without the opt-in attribute
SMEM_LIMIT = NUMBA_SMEM - cb.SMEM_STATIC_RESERVE  # the most one warp's workspace may take
ATTENTION, BLOCK = "attention", "block"


def warp_kernel(cfg, T, dtype):
    """ATTENTION (gpu_warp.py), BLOCK (gpu_warp_block.py) or None (the thread-per-task kernel: a
    front end, or one task's workspace over SMEM_LIMIT bytes) for cfg with T tokens in dtype.
    Worked out once per (cfg, T, dtype): every training step asks."""
    return _warp_kernel(cfg, int(T), np.dtype(dtype).str)


@functools.lru_cache(maxsize=64)
def _warp_kernel(cfg, T, dtype):
    if cb.block_unsupported(cfg) is not None or T < 2:
        return None
    if cb.model_step_unsupported(cfg) is None:
        kind, nbytes = ATTENTION, cb.model_dims(cfg, T).warp_bytes(0, dtype)
    else:
        kind, nbytes = BLOCK, block_dims(cfg, T)[1].warp_bytes(0, dtype)
    return kind if nbytes <= SMEM_LIMIT else None


def supported(cfg, T, dtype):
    return warp_kernel(cfg, T, dtype) is not None


def warp_dims(cfg, T):
    """(dm int64 (NUM_DM,), cb.ModelDims) of an attention-only config with T tokens."""
    md = cb.model_dims(cfg, T)
    TD, HK, HTS = md.T * md.D, md.H * md.K, md.H * md.T * md.S
    sizes = [("XS", md.L * TD), ("XC", TD), ("Q", md.T * HK), ("KT", md.S * HK), ("V", md.S * HK),
             ("P", HTS), ("O", md.T * HK), ("U", TD), ("DX", TD), ("DU", TD), ("DO", md.T * HK),
             ("DP", HTS), ("DQ", md.T * HK), ("DK", md.S * HK), ("DV", md.S * HK), ("DXIN", TD),
             ("GACC", md.num_params + md.L), ("READ", md.L), ("TGT", 1)]
    dm = np.zeros(NUM_DM, np.int64)
    dm[:NP_ + 1] = [md.T, md.D, md.H, md.K, md.S, md.L, md.tied, md.first_softmax, md.softmax,
                    md.causal, md.y_update, int(md.clip > 0), md.num_params]
    o = 0
    for i, (_, n) in enumerate(sizes):
        dm[W_XS + i] = o
        o += n
    dm[W_TOTAL] = o
    assert o == md.workspace_reals  # the layout of model_step.cu (without its draw scratch)
    return dm, md


def constants(cfg, B, dtype):
    c = np.zeros(NUM_CST, dtype)
    c[[C_ZERO, C_ONE, C_LAM, C_CLIP, C_INV_B, C_SQRT_K, C_HALF]] = [
        0.0, 1.0, cfg.dampening, cfg.token_clip, 1.0 / B, math.sqrt(cfg.key_size), 0.5]
    return c


class BlockWarpDims:
    """One warp's workspace of gpu_warp_block.py, in the interface kernels/cupy/build.py
    model_step_launch reads (warp_bytes, num_params, L)."""

    def __init__(self, reals, num_params, L):
        self.reals, self.num_params, self.L = reals, num_params, L

    def warp_bytes(self, d, dtype):
        assert d == 0  # tokens are read, never drawn
        return (np.dtype(dtype).itemsize * self.reals + 15) // 16 * 16


def block_dims(cfg, T):
    """(dm int64, BlockWarpDims) of a LayerNorm / MLP config with T tokens (no front end): the
    sizes, the workspace offsets of one warp (buffers a config lacks take no room) and the rows of
    kernels/numba/layout.py's per-application table."""
    D, H, K, L = cfg.model_dim, cfg.num_heads, cfg.key_size, cfg.num_layers
    S = T if cfg.include_query else T - 1
    F = cfg.mlp_widening * D if cfg.mlp else 0
    TD, HK, HTS, NP = T * D, H * K, H * T * S, param_offsets(cfg)[1]
    ln1 = int(any(cfg.layer_has_ln(l) for l in range(L)))
    ln2, mlp = int(cfg.mlp and cfg.layernorm), int(cfg.mlp)
    sizes = [("XS", L * TD), ("XC", TD), ("A", ln1 * TD), ("XH1", ln1 * TD), ("R1", ln1 * T),
             ("Q", T * HK), ("KT", S * HK), ("V", S * HK), ("P", HTS), ("O", T * HK), ("U", TD),
             ("X1", mlp * TD), ("MIN", ln2 * TD), ("XH2", ln2 * TD), ("R2", ln2 * T),
             ("DX", TD), ("DU", TD), ("DXIN", TD),
             # the attention backward's scratch, which the MLP's hidden rows HH, GG share
             ("DO", T * HK), ("DP", HTS), ("DQ", T * HK), ("DK", S * HK), ("DV", S * HK),
             ("SPARE", max(0, 2 * T * F - (2 * T * HK + HTS + 2 * S * HK))),
             ("GACC", NP + L), ("READ", L), ("TGT", 1)]
    index = {n: getattr(gw, "W_" + n) for n in ("XS", "XC", "Q", "KT", "V", "P", "O", "U", "DX",
                                                      "DU", "DO", "DP", "DQ", "DK", "DV", "DXIN",
                                                      "GACC", "READ", "TGT")}
    index.update(A=gwb.W_A, XH1=gwb.W_XH1, R1=gwb.W_R1, X1=gwb.W_X1, MIN=gwb.W_MIN, XH2=gwb.W_XH2,
                 R2=gwb.W_R2)
    _, lay = build_layout(cfg, T)
    dm = np.zeros(gwb.LAY0 + lay.size, np.int64)
    dm[:NP_ + 1] = [T, D, H, K, S, L, cfg.weight_tied, cfg.first_layer_softmax,
                    cfg.attention == "softmax", cfg.causal, cfg.y_update, cfg.token_clip > 0, NP]
    o = 0
    for name, n in sizes:
        if name in index:
            dm[index[name]] = o
        o += n
    dm[W_TOTAL] = o
    dm[gwb.W_HH], dm[gwb.W_GG] = dm[gw.W_DO], dm[gw.W_DO] + T * F
    dm[gwb.F_], dm[gwb.MLP_], dm[gwb.LN2_] = F, mlp, ln2
    dm[gwb.LAY0:] = lay.ravel()
    return dm, BlockWarpDims(o, NP, L)


def block_constants(cfg, B, dtype):
    """constants(), then LayerNorm's eps, the GELU's constants and the width D (gpu_warp_block.C_*)."""
    c = np.zeros(gwb.NUM_BLOCK_CST, np.float64)
    c[:NUM_CST] = constants(cfg, B, np.float64)
    c[[gwb.C_EPS, gwb.C_GELU_C, gwb.C_GELU_A, gwb.C_GELU_3A, gwb.C_WIDTH]] = [
        LN_EPS, GELU_C, 0.044715, 3 * 0.044715, cfg.model_dim]
    return c.astype(dtype)


# ----------------------------------------------------------------------------------------------
MAX_THREADS = 256  # threads per block: room for any register count (255 x 256 <= 65 536)


def device_limits(simulated):
    """The device's cb.DeviceLimits with Numba's 48 KiB of dynamic shared memory per block; under
    the simulator a small device of 2 SMs."""
    if simulated:
        return cb.DeviceLimits(num_sms=2, smem_optin=NUMBA_SMEM, smem_per_sm=NUMBA_SMEM)
    dev = cuda.get_current_device()
    return cb.DeviceLimits(num_sms=int(dev.MULTIPROCESSOR_COUNT), smem_optin=NUMBA_SMEM,
                           smem_per_sm=int(dev.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR))


class WarpPlan:
    """Device buffers and launch shape of one (cfg, T, B, dtype)'s warp-per-task kernel (`kind`:
    warp_kernel's ATTENTION or BLOCK), built once."""

    def __init__(self, cfg, T, B, dtype, simulated, group):
        self.kind = warp_kernel(cfg, T, dtype)
        if self.kind == ATTENTION:
            dm, md = warp_dims(cfg, T)
            cst, self.kernel = constants(cfg, B, dtype), warp_step_kernel(dtype)
        elif self.kind == BLOCK:
            dm, md = block_dims(cfg, T)
            cst, self.kernel = block_constants(cfg, B, dtype), gwb.block_step_kernel(dtype)
        else:
            raise ValueError("cfg: no warp-per-task kernel runs this model (warp_kernel is None)")
        self.launch = cb.model_step_launch(B, md, 0, dtype, device_limits(simulated),
                                           max_threads=MAX_THREADS)
        self.dm = cuda.to_device(dm)
        self.cst = cuda.to_device(cst)
        self.NP, self.L, self.B, self.dtype = md.num_params, md.L, B, np.dtype(dtype)
        G = md.num_params + md.L
        self.partials = cuda.device_array(self.launch.grid * G, dtype)  # (grid, P + L)
        groups = -(-self.launch.grid // group)
        self.red = (cuda.device_array(groups * G, dtype), cuda.device_array(-(-groups // group) * G, dtype))
        self.g = cuda.device_array(G, dtype)  # gradients (P), then sum_b 0.5 r_l^2 (L)
        self.sumsq = cuda.device_array(1, np.float64)
        self.factor = cuda.device_array(1, dtype)

    def launch_step(self, tok, y, pv):
        ln = self.launch
        self.kernel[ln.grid, ln.block, 0, ln.smem_bytes](
            tok, y, pv, self.dm, self.cst, self.B, ln.tasks_per_warp, self.partials)

    def buffers(self):
        return (self.partials, self.g, self.factor) + self.red
