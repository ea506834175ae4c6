"""Host side of kernels/numba/gpu_warp.py (numba-cuda, one warp per task): which configs it runs, the
integer table `dm` of sizes and workspace offsets, the constants in the data's dtype, the launch
shape and the device buffers of one (cfg, T, B, dtype).
"""
import math

import numpy as np
from numba import cuda

from kernels.cupy import build as cb  # launch shapes and workspace sizes (no GPU dependency)
from kernels.numba.gpu_warp import (C_CLIP, C_HALF, C_INV_B, C_LAM, C_ONE, C_SQRT_K, C_ZERO, NP_,
                                    NUM_CST, NUM_DM, W_TOTAL, W_XS, warp_step_kernel)

NUMBA_SMEM = 48 * 1024  # dynamic shared memory per block without the opt-in attribute


def supported(cfg):
    return cb.model_step_unsupported(cfg) is None


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
    """Device buffers and launch shape of warp_step_kernel for one (cfg, T, B, dtype), built once."""

    def __init__(self, cfg, T, B, dtype, simulated, group):
        dm, md = warp_dims(cfg, T)
        self.launch = cb.model_step_launch(B, md, 0, dtype, device_limits(simulated),
                                           max_threads=MAX_THREADS)
        self.dm = cuda.to_device(dm)
        self.cst = cuda.to_device(constants(cfg, B, dtype))
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
        warp_step_kernel(self.dtype)[ln.grid, ln.block, 0, ln.smem_bytes](
            tok, y, pv, self.dm, self.cst, self.B, ln.tasks_per_warp, self.partials)

    def buffers(self):
        return (self.partials, self.g, self.factor) + self.red
