"""Lane tuples and the lane-matrix products of the linear-self-attention kernel (kernels.numba.lsa).

Shape legend: D token width, NL tasks per SIMD group (lane_count: 8 in float64, 16 in float32),
rows a leading token count. A lane tuple holds one entry of NL tasks' matrices, (x_0, .., x_NL-1):
the lane-innermost arrays (rows, D, NL) are read and written one tuple at a time, and every product
below is one multiply-add of tuples. Kept as NL scalars by LLVM, the tuples are packed into SIMD
registers by its SLP vectoriser (kernels.numba.lsa turns it on while compiling): a tuple is 64 bytes
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


# ---------------------------------------------------------------- lane-matrix building blocks
# X, U, V, dX ...: (rows, D, NL) per-task matrices; W: (D, D) shared; A: (D, D, NL) per task.

@njit(inline="always", fastmath={"contract"})
def shared_column(X, tx, W, k, out, to, accumulate):
    """out[to, k] (+)= X[tx] . W[:, k] per lane (one output of mul_shared)."""
    a = scale(lanes(X, tx, 0), W[0, k])
    if accumulate:
        a = add(a, lanes(out, to, k))
    for i in range(1, W.shape[0]):
        a = fma_scalar(a, lanes(X, tx, i), W[i, k])
    store(out, to, k, a)


@njit(inline="always", fastmath={"contract"})
def lanes_column(X, tx, A, k, out, to, accumulate):
    """out[to, k] (+)= X[tx] . A[:, k] per lane (one output of mul_lanes)."""
    a = mul(lanes(X, tx, 0), lanes(A, 0, k))
    if accumulate:
        a = add(a, lanes(out, to, k))
    for i in range(1, A.shape[0]):
        a = fma(a, lanes(X, tx, i), lanes(A, i, k))
    store(out, to, k, a)


# Each product computes four outputs at a time (columns k .. k+3): four independent chains of
# multiply-adds that share every load of the left operand, then the last D mod 4 columns one by one.
# One chain alone waits on its previous multiply-add (latency ~4 cycles) each step; four keep the
# FMA units busy and need fewer loads per multiply-add. Per output the arithmetic is unchanged.
BLOCK = 4  # output columns per pass


@njit(cache=True, fastmath={"contract"})
def mul_shared(X, rows, W, out, accumulate):
    """out[t] (+)= X[t] @ W for t < rows: per task (rows, n) times the shared (n, m) (D x D in
    the attention, D x F and F x D in the MLP)."""
    D, M = W.shape[0], W.shape[1]
    full = M - M % BLOCK
    for t in range(rows):
        for k in range(0, full, BLOCK):
            x = lanes(X, t, 0)
            a0, a1 = scale(x, W[0, k]), scale(x, W[0, k + 1])
            a2, a3 = scale(x, W[0, k + 2]), scale(x, W[0, k + 3])
            if accumulate:
                a0, a1 = add(a0, lanes(out, t, k)), add(a1, lanes(out, t, k + 1))
                a2, a3 = add(a2, lanes(out, t, k + 2)), add(a3, lanes(out, t, k + 3))
            for i in range(1, D):
                x = lanes(X, t, i)
                a0, a1 = fma_scalar(a0, x, W[i, k]), fma_scalar(a1, x, W[i, k + 1])
                a2, a3 = fma_scalar(a2, x, W[i, k + 2]), fma_scalar(a3, x, W[i, k + 3])
            store(out, t, k, a0)
            store(out, t, k + 1, a1)
            store(out, t, k + 2, a2)
            store(out, t, k + 3, a3)
        for k in range(full, M):
            shared_column(X, t, W, k, out, t, accumulate)


@njit(cache=True, fastmath={"contract"})
def mul_lanes(X, rows, A, out, accumulate):
    """out[t] (+)= X[t] @ A for t < rows: per task (rows, D) times per task (D, D)."""
    D = A.shape[0]
    full = D - D % BLOCK
    for t in range(rows):
        for k in range(0, full, BLOCK):
            x = lanes(X, t, 0)
            a0, a1 = mul(x, lanes(A, 0, k)), mul(x, lanes(A, 0, k + 1))
            a2, a3 = mul(x, lanes(A, 0, k + 2)), mul(x, lanes(A, 0, k + 3))
            if accumulate:
                a0, a1 = add(a0, lanes(out, t, k)), add(a1, lanes(out, t, k + 1))
                a2, a3 = add(a2, lanes(out, t, k + 2)), add(a3, lanes(out, t, k + 3))
            for i in range(1, D):
                x = lanes(X, t, i)
                a0, a1 = fma(a0, x, lanes(A, i, k)), fma(a1, x, lanes(A, i, k + 1))
                a2, a3 = fma(a2, x, lanes(A, i, k + 2)), fma(a3, x, lanes(A, i, k + 3))
            store(out, t, k, a0)
            store(out, t, k + 1, a1)
            store(out, t, k + 2, a2)
            store(out, t, k + 3, a3)
        for k in range(full, D):
            lanes_column(X, t, A, k, out, t, accumulate)


@njit(cache=True, fastmath={"contract"})
def add_at_b(X, Y, rows, G):
    """G += X[:rows]^T Y[:rows] per lane: G (n, m, NL), X (rows, n, NL), Y (rows, m, NL)."""
    D, M = G.shape[0], G.shape[1]
    full = M - M % BLOCK
    for i in range(D):
        for k in range(0, full, BLOCK):
            a0, a1 = lanes(G, i, k), lanes(G, i, k + 1)
            a2, a3 = lanes(G, i, k + 2), lanes(G, i, k + 3)
            for t in range(rows):
                x = lanes(X, t, i)
                a0, a1 = fma(a0, x, lanes(Y, t, k)), fma(a1, x, lanes(Y, t, k + 1))
                a2, a3 = fma(a2, x, lanes(Y, t, k + 2)), fma(a3, x, lanes(Y, t, k + 3))
            store(G, i, k, a0)
            store(G, i, k + 1, a1)
            store(G, i, k + 2, a2)
            store(G, i, k + 3, a3)
        for k in range(full, M):
            a = lanes(G, i, k)
            for t in range(rows):
                a = fma(a, lanes(X, t, i), lanes(Y, t, k))
            store(G, i, k, a)


@njit(cache=True, fastmath={"contract"})
def gram(X, S, A):
    """A = X[:S]^T X[:S] per lane: the pairs k >= i in blocks of four columns, each mirrored to
    A[k, i]; a last block's spare chains repeat the last column (~30 % faster than a column at a
    time at D = 11; the same in the products above was slower, so they keep one-column remainders)."""
    D = A.shape[0]
    for i in range(D):
        for kb in range(i, D, BLOCK):
            k0, k1, k2, k3 = kb, min(kb + 1, D - 1), min(kb + 2, D - 1), min(kb + 3, D - 1)
            x = lanes(X, 0, i)
            a0, a1 = mul(x, lanes(X, 0, k0)), mul(x, lanes(X, 0, k1))
            a2, a3 = mul(x, lanes(X, 0, k2)), mul(x, lanes(X, 0, k3))
            for s in range(1, S):
                x = lanes(X, s, i)
                a0, a1 = fma(a0, x, lanes(X, s, k0)), fma(a1, x, lanes(X, s, k1))
                a2, a3 = fma(a2, x, lanes(X, s, k2)), fma(a3, x, lanes(X, s, k3))
            for k, a in ((k3, a3), (k2, a2), (k1, a1), (k0, a0)):
                store(A, i, k, a)
                store(A, k, i, a)
