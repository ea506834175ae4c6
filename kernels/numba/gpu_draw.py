"""numba-cuda's on-device linear-regression task batch (SPEC 1.1), seeded per step: the task stream
of kernels/cupy/philox.py (its NumPy mirror) and kernels/cupy/cuda/tasks.cu (CuPy's device draw).

Philox-4x32-10 on 64-bit signed integers: every 32 x 32-bit product is split into 16-bit halves, so
no intermediate exceeds 2^50 and the words are the same in compiled CUDA and under the simulator
(which runs the kernels as Python). Uniforms, Box-Muller, the inputs and the labels are float64 and
rounded to the batch's dtype at the end, as in the mirror: a float32 batch is the float64 batch
rounded.

Kernels (built on first use, one per token dtype), all one thread per output, 128 per block:
    draw_w   (B, ceil(d/2)) Philox blocks of stream 0 -> w (B, d) float64 scratch
    draw_x   (B, ceil(T d/2)) Philox blocks of stream 1 -> x (B, T d) float64 scratch
    assemble (B, T) rows: tokens[b, t] = [x_t, y_t] with y_t = sum_i w_i x_ti (i = 0..d-1), the
             query's label 0, targets[b] = y_query.
On a GPU, log / cos / sin and the compiler's contraction of multiply-adds may round differently from
NumPy's: the batch then equals the mirror to a few ulps, not bit for bit (under the simulator it is
bit for bit).
"""
import math

import numpy as np
from numba import cuda

from refimpl.validate import check_positive_int

TPB = 128
M0, M1 = 0xD2511F53, 0xCD9E8D57  # Philox round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
MASK32 = 0xFFFFFFFF
STREAM_W, STREAM_X = 0, 1

_KERNELS = {}


@cuda.jit(device=True)
def mulhilo(a, m):
    """(hi, lo) 32-bit words of a * m for 32-bit a, m, without a product above 2^50."""
    t0 = a * (m & 0xFFFF)  # < 2^48
    t1 = a * (m >> 16)  # < 2^48
    s = t0 + ((t1 & 0xFFFF) << 16)  # < 2^49
    return (t1 >> 16) + (s >> 32), s & MASK32


@cuda.jit(device=True)
def task_uniforms(seed_lo, seed_hi, step, task, stream, j):
    """The two float64 uniforms of Philox block j of (seed, step, task, stream)."""
    x0, x1, x2, x3 = j, task, step, stream
    k0, k1 = seed_lo, seed_hi
    for r in range(10):
        if r > 0:
            k0 = (k0 + W0) & MASK32
            k1 = (k1 + W1) & MASK32
        hi0, lo0 = mulhilo(x0, M0)
        hi1, lo1 = mulhilo(x2, M1)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
    u0 = (float((x0 >> 5)) * 67108864.0 + float((x1 >> 6))) * (1.0 / 9007199254740992.0)
    u1 = (float((x2 >> 5)) * 67108864.0 + float((x3 >> 6))) * (1.0 / 9007199254740992.0)
    return u0, u1


def draw_kernels():
    """{"w", "x", "assemble"}: the three launches of a batch (no dtype in the kernels: the
    assembling store rounds to the tokens' dtype)."""
    if _KERNELS:
        return _KERNELS

    @cuda.jit
    def draw_w(seed_lo, seed_hi, step, B, d, weight_scale, w):
        i = cuda.grid(1)
        blocks = (d + 1) // 2
        if i < B * blocks:
            b, j = i // blocks, i % blocks
            u0, u1 = task_uniforms(seed_lo, seed_hi, step, b, STREAM_W, j)
            rad = math.sqrt(-2.0 * math.log(1.0 - u0))
            ang = 2.0 * 3.141592653589793 * u1
            w[b * d + 2 * j] = weight_scale * (rad * math.cos(ang))
            if 2 * j + 1 < d:
                w[b * d + 2 * j + 1] = weight_scale * (rad * math.sin(ang))

    @cuda.jit
    def draw_x(seed_lo, seed_hi, step, B, count, input_range, x):
        i = cuda.grid(1)
        blocks = (count + 1) // 2
        if i < B * blocks:
            b, j = i // blocks, i % blocks
            u0, u1 = task_uniforms(seed_lo, seed_hi, step, b, STREAM_X, j)
            x[b * count + 2 * j] = -input_range / 2 + input_range * u0
            if 2 * j + 1 < count:
                x[b * count + 2 * j + 1] = -input_range / 2 + input_range * u1

    @cuda.jit
    def assemble(B, T, d, w, x, tokens, targets):
        i = cuda.grid(1)
        if i < B * T:
            b, t = i // T, i % T
            y = 0.0
            for k in range(d):
                y = y + w[b * d + k] * x[(b * T + t) * d + k]
                tokens[b, t, k] = x[(b * T + t) * d + k]
            if t == T - 1:
                targets[b] = y
                tokens[b, t, d] = 0.0
            else:
                tokens[b, t, d] = y

    _KERNELS.update(w=draw_w, x=draw_x, assemble=assemble)
    return _KERNELS


class DeviceDraw:
    """The task batches of one (seed, batch, N, d, r, s, dtype) drawn into buffers made once:
    `draw(step)` fills `tokens` (B, N+1, d+1) and `targets` (B,) by three launches, no host
    transfer and no allocation."""

    def __init__(self, seed, batch, num_context=10, input_dim=10, input_range=1.0, weight_scale=1.0,
                 dtype=np.float32):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise ValueError(f"seed: expected an integer in [0, 2^64), got {seed!r}")
        self.B = check_positive_int("batch", batch)
        self.N = check_positive_int("num_context", num_context)
        self.d = check_positive_int("input_dim", input_dim)
        self.seed_lo, self.seed_hi = int(seed) & MASK32, int(seed) >> 32
        self.input_range, self.weight_scale = float(input_range), float(weight_scale)
        T = self.N + 1
        self.w = cuda.device_array(self.B * self.d, np.float64)
        self.x = cuda.device_array(self.B * T * self.d, np.float64)
        self.tokens = cuda.device_array((self.B, T, self.d + 1), dtype)
        self.targets = cuda.device_array(self.B, dtype)

    def draw(self, step):
        step = check_positive_int("step", step, minimum=0)
        if step >= 2**32:
            raise ValueError(f"step: expected an integer below 2^32, got {step}")
        ks, B, d, T = draw_kernels(), self.B, self.d, self.N + 1
        n_w, n_x = B * ((d + 1) // 2), B * ((T * d + 1) // 2)
        ks["w"][-(-n_w // TPB), TPB](self.seed_lo, self.seed_hi, step, B, d, self.weight_scale, self.w)
        ks["x"][-(-n_x // TPB), TPB](self.seed_lo, self.seed_hi, step, B, T * d, self.input_range, self.x)
        ks["assemble"][-(-B * T // TPB), TPB](B, T, d, self.w, self.x, self.tokens, self.targets)
        return self.tokens, self.targets


def linear_regression_tasks(seed, step, batch, num_context=10, input_dim=10, input_range=1.0,
                            weight_scale=1.0, dtype=np.float64):
    """One batch drawn on the device, as device arrays: kernels.cupy.philox.linear_regression_tasks's
    numbers (see the module docstring for a GPU's rounding)."""
    dd = DeviceDraw(seed, batch, num_context, input_dim, input_range, weight_scale, dtype)
    return dd.draw(step)

