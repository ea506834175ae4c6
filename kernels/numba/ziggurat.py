"""NumPy's standard normal (numpy.random.Generator.standard_normal, float64) in Numba, bit for bit
from the same PCG64 state, so that the compiled drawer (kernels.numba.draw) draws the task weights
w ~ N(0, s^2 I) of refimpl.data without NumPy's per-value call overhead (~12 ns a value here).

The algorithm is NumPy's 256-layer ziggurat on 64-bit outputs (random_standard_normal in
numpy/random/src/distributions/distributions.c), with its tables (kernels.numba.ziggurat_tables):
    r = next_uint64; idx = r & 0xff; r >>= 8; sign = r & 1; rabs = (r >> 1) & (2**52 - 1)
    x = rabs * WI[idx], negated when sign; accept x when rabs < KI[idx]          (~99% of values)
    idx == 0 (the tail): repeat xx = -log1p(-u1) / r, yy = -log1p(-u2) until 2 yy > xx^2, then
                         +-(r + xx), the sign from bit 8 of rabs
    otherwise (a wedge): accept x when (FI[idx-1] - FI[idx]) u + FI[idx] < exp(-x^2 / 2), else
                         start again with a new output
with u = next_double. The operations are NumPy's, in its order and without fused multiply-adds
(Numba does not contract a * b + c), and exp and log1p are the C library's, as NumPy's are.

Kernel (`@njit(cache=True)`, one thread: each value consumes a data-dependent number of outputs, so
value i's position in the stream is known only after value i - 1):
    normal_kernel   n standard normals times a scale into a flat float64 array, in C order; the
                    state after the last output is written back.
"""
import math

import numpy as np
from numba import njit

from kernels.numba.pcg64 import next_double, pcg64_next
from kernels.numba.ziggurat_tables import FI, KI, NOR_INV_R, NOR_R, WI

_U1 = np.uint64(1)
_U8 = np.uint64(8)
_LOW8 = np.uint64(0xFF)
_MANT52 = np.uint64(0x000FFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def standard_normal(sh, sl, ih, il):
    """One N(0, 1) value as NumPy's random_standard_normal. Returns the new state and the value."""
    while True:
        sh, sl, r = pcg64_next(sh, sl, ih, il)
        idx = r & _LOW8
        r = r >> _U8
        rabs = (r >> _U1) & _MANT52
        x = np.float64(rabs) * WI[idx]
        if r & _U1:
            x = -x
        if rabs < KI[idx]:
            return sh, sl, x
        if idx == 0:
            while True:
                sh, sl, u = next_double(sh, sl, ih, il)
                xx = -NOR_INV_R * math.log1p(-u)
                sh, sl, u = next_double(sh, sl, ih, il)
                yy = -math.log1p(-u)
                if yy + yy > xx * xx:
                    if (rabs >> _U8) & _U1:
                        return sh, sl, -(NOR_R + xx)
                    return sh, sl, NOR_R + xx
        else:
            sh, sl, u = next_double(sh, sl, ih, il)
            if (FI[idx - 1] - FI[idx]) * u + FI[idx] < math.exp(-0.5 * x * x):
                return sh, sl, x


@njit(cache=True)
def normal_kernel(st, scale, out):
    """st uint64 (4,): state hi, lo, inc hi, lo; out float64 (n,) gets standard_normal() * scale
    (one float64 rounding, as NumPy's `rng.standard_normal(n) * scale`); st[0], st[1] become the
    state after."""
    sh, sl, ih, il = st[0], st[1], st[2], st[3]
    for i in range(out.size):
        sh, sl, z = standard_normal(sh, sl, ih, il)
        out[i] = z * scale
    st[0] = sh
    st[1] = sl
