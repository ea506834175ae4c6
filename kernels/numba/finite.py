"""A fast finiteness check of large float arrays (the training batch, every step): one pass of
integer operations instead of NumPy's isfinite, which writes a boolean array first.

A float64 is NaN or inf exactly when its 11 exponent bits are all ones, that is when
(bits & EXP) + 2**52 carries into bit 63; the kernel ORs that sum over the array (integer
operations, which the compiler vectorises) and tests bit 63 once. float32 likewise with 8 exponent
bits and bit 31.

Kernel (`@njit(cache=True)`, one thread; memory-bound):
    exponent_carry   OR over i of (bits[i] & exp_mask) + exp_one, on the array's unsigned-integer view
"""
import numpy as np
from numba import njit

from refimpl.validate import check_finite_values

_MASKS = {np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0000000000000), np.uint64(1 << 52), 63),
          np.dtype(np.float32): (np.uint32, np.uint32(0x7F800000), np.uint32(1 << 23), 31)}


@njit(cache=True)
def exponent_carry(bits, exp_mask, exp_one):
    acc = bits.dtype.type(0)
    for i in range(bits.size):
        acc |= (bits[i] & exp_mask) + exp_one
    return acc


def is_finite(x):
    """True when the float32 or float64 array x has no NaN and no inf."""
    x = np.ascontiguousarray(x)
    utype, mask, one, top = _MASKS[x.dtype]
    return not int(exponent_carry(x.reshape(-1).view(utype), mask, one)) >> top


def check_finite(name, x):
    """Raise refimpl's NonFiniteError (`name: contains k NaN or inf value(s)`) when the float32 or
    float64 array x has a NaN or an inf; returns x as a C-contiguous array."""
    x = np.ascontiguousarray(x)
    if not is_finite(x):
        check_finite_values(name, x)  # counts them and raises
    return x
