"""Lane tuples of the linear-self-attention kernels (kernels.numba.lsa; products: .lsa_products).

Shape legend: D token width, NL tasks per SIMD group (lane_count: 8 in float64, 16 in float32),
rows a leading token count. A lane tuple holds one entry of NL tasks' matrices, (x_0, .., x_NL-1):
the lane-innermost arrays (rows, D, NL) are read and written one tuple at a time, and every step
of a product (kernels.numba.lsa_products) is one multiply-add of tuples. Kept as NL scalars by
LLVM, the tuples are packed into SIMD registers by its SLP vectoriser (kernels.numba.lsa turns it on while compiling): a tuple is 64 bytes
in either dtype (one AVX-512 register, or two AVX2 registers), so float32 does twice the tasks of
float64 per instruction; eight float32 lanes would fill half a register and run no faster than
float64. The helpers are inlined, so the arithmetic is exactly that of NL written-out accumulators.
Each helper is a Numba `overload` that picks its 8- or 16-entry body from the array's dtype or the
tuple's length at compile time.
"""
from contextlib import contextmanager

import numpy as np
from numba import njit, types
from numba.core import config
from numba.extending import overload

LANES_F64 = 8  # tasks per SIMD group in float64
LANES_F32 = 16  # in float32
LANE_OPTS = {"inline": "always", "jit_options": {"fastmath": {"contract"}}}


def lane_count(dtype):
    """Tasks per SIMD group for arrays of `dtype` (host side: workspace shapes)."""
    return LANES_F32 if np.dtype(dtype) == np.float32 else LANES_F64


@contextmanager
def slp_vectorizer():
    """Numba's SLP vectoriser on inside the block: Numba compiles with it off and reads the flag
    when a kernel is compiled (a first call without a cache entry), so every caller of these
    products compiles them inside this block."""
    old = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        config.SLP_VECTORIZE = old


# ---------------------------------------------------------------------------- lane tuples
# Each name below is the Python-level target of an overload (Numba compiles the overload's body
# in its place); called from Python, outside a kernel, it has no body to run.

def _not_in_python(name):
    def target(*args):
        raise TypeError(f"{name}: a Numba lane helper, callable only inside @njit code")
    target.__name__ = name
    return target


nlanes, lanes, store, add, mul, scale, fma, fma_scalar = (
    _not_in_python(n) for n in ("nlanes", "lanes", "store", "add", "mul", "scale", "fma", "fma_scalar"))


def _wide(t):
    """True for a float32 array or a 16-entry tuple: the 16-lane bodies."""
    if isinstance(t, types.Array):
        return t.dtype == types.float32
    return isinstance(t, types.BaseTuple) and len(t) == LANES_F32


@overload(nlanes, **LANE_OPTS)
def _nlanes(X):
    """NL of X's dtype, a compile-time constant (loop trip counts LLVM can see)."""
    if _wide(X):
        return lambda X: 16
    return lambda X: 8


@overload(lanes, **LANE_OPTS)
def _lanes(X, r, c):
    """The lane tuple X[r, c, :] of a (rows, cols, NL) array."""
    if _wide(X):
        def impl(X, r, c):
            x = X[r, c]
            return (x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7],
                    x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15])
    else:
        def impl(X, r, c):
            x = X[r, c]
            return (x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7])
    return impl


@overload(store, **LANE_OPTS)
def _store(X, r, c, a):
    """X[r, c, :] = a."""
    if _wide(X):
        def impl(X, r, c, a):
            x = X[r, c]
            (x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7],
             x[8], x[9], x[10], x[11], x[12], x[13], x[14], x[15]) = a
    else:
        def impl(X, r, c, a):
            x = X[r, c]
            x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7] = a
    return impl


# The arithmetic below is written once for eight lanes; sixteen are two halves of eight,
# concatenated (the same scalars, which the SLP vectoriser packs into one register).
half = njit(inline="always", fastmath={"contract"})


@half
def _add8(a, b):
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3],
            a[4] + b[4], a[5] + b[5], a[6] + b[6], a[7] + b[7])


@half
def _mul8(x, y):
    return (x[0] * y[0], x[1] * y[1], x[2] * y[2], x[3] * y[3],
            x[4] * y[4], x[5] * y[5], x[6] * y[6], x[7] * y[7])


@half
def _scale8(x, m):
    return (x[0] * m, x[1] * m, x[2] * m, x[3] * m, x[4] * m, x[5] * m, x[6] * m, x[7] * m)


@half
def _fma8(a, x, y):
    return (a[0] + x[0] * y[0], a[1] + x[1] * y[1], a[2] + x[2] * y[2], a[3] + x[3] * y[3],
            a[4] + x[4] * y[4], a[5] + x[5] * y[5], a[6] + x[6] * y[6], a[7] + x[7] * y[7])


@half
def _fma_scalar8(a, x, m):
    return (a[0] + x[0] * m, a[1] + x[1] * m, a[2] + x[2] * m, a[3] + x[3] * m,
            a[4] + x[4] * m, a[5] + x[5] * m, a[6] + x[6] * m, a[7] + x[7] * m)


@overload(add, **LANE_OPTS)
def _add(a, b):
    """a + b per lane."""
    if _wide(a):
        return lambda a, b: _add8(a[:8], b[:8]) + _add8(a[8:], b[8:])
    return lambda a, b: _add8(a, b)


@overload(mul, **LANE_OPTS)
def _mul(x, y):
    """x * y per lane."""
    if _wide(x):
        return lambda x, y: _mul8(x[:8], y[:8]) + _mul8(x[8:], y[8:])
    return lambda x, y: _mul8(x, y)


@overload(scale, **LANE_OPTS)
def _scale(x, m):
    """x * m per lane, m a scalar shared by the lanes."""
    if _wide(x):
        return lambda x, m: _scale8(x[:8], m) + _scale8(x[8:], m)
    return lambda x, m: _scale8(x, m)


@overload(fma, **LANE_OPTS)
def _fma(a, x, y):
    """a + x * y per lane."""
    if _wide(a):
        return lambda a, x, y: _fma8(a[:8], x[:8], y[:8]) + _fma8(a[8:], x[8:], y[8:])
    return lambda a, x, y: _fma8(a, x, y)


@overload(fma_scalar, **LANE_OPTS)
def _fma_scalar(a, x, m):
    """a + x * m per lane, m a scalar shared by the lanes."""
    if _wide(a):
        return lambda a, x, m: _fma_scalar8(a[:8], x[:8], m) + _fma_scalar8(a[8:], x[8:], m)
    return lambda a, x, m: _fma_scalar8(a, x, m)


@njit(inline="always")
def _clip1(x, c):
    """min(max(x, -c), c) as two selects (vectorisable); NaN stays NaN, as with min and max."""
    y = c if x > c else x
    return -c if y < -c else y


@njit(inline="always")
def _unclipped1(d, z, c):
    """d where |z| <= c, else 0: the gradient through clip(z) (refimpl.layers.clip_backward)."""
    return c - c if abs(z) > c else d  # c - c: a zero of the data's dtype (c is finite)


@half
def _clip8(a, c):
    return (_clip1(a[0], c), _clip1(a[1], c), _clip1(a[2], c), _clip1(a[3], c),
            _clip1(a[4], c), _clip1(a[5], c), _clip1(a[6], c), _clip1(a[7], c))


@half
def _unclipped8(d, z, c):
    return (_unclipped1(d[0], z[0], c), _unclipped1(d[1], z[1], c), _unclipped1(d[2], z[2], c),
            _unclipped1(d[3], z[3], c), _unclipped1(d[4], z[4], c), _unclipped1(d[5], z[5], c),
            _unclipped1(d[6], z[6], c), _unclipped1(d[7], z[7], c))


clip_lanes, unclipped = _not_in_python("clip_lanes"), _not_in_python("unclipped")


@overload(clip_lanes, **LANE_OPTS)
def _clip_lanes(a, c):
    """Token clipping per lane: min(max(a, -c), c)."""
    if _wide(a):
        return lambda a, c: _clip8(a[:8], c) + _clip8(a[8:], c)
    return lambda a, c: _clip8(a, c)


@overload(unclipped, **LANE_OPTS)
def _unclipped(d, z, c):
    """Per lane, d where |z| <= c and 0 where z was clipped."""
    if _wide(d):
        return lambda d, z, c: _unclipped8(d[:8], z[:8], c) + _unclipped8(d[8:], z[8:], c)
    return lambda d, z, c: _unclipped8(d, z, c)
