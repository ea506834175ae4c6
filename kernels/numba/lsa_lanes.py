"""Lane tuples and the lane-matrix products of the linear-self-attention kernel (kernels.numba.lsa).

Shape legend: D token width, LANES = 8 tasks per SIMD group, rows a leading token count.
A lane tuple holds one entry of eight tasks' matrices, (x_0, .., x_7): the lane-innermost arrays
(rows, D, LANES) are read and written one tuple at a time, and every product below is one
multiply-add of tuples. Kept as eight scalars by LLVM, the tuples are packed into SIMD registers by
its SLP vectoriser (kernels.numba.lsa turns it on while compiling): two AVX2 registers in float64,
one in float32. The helpers are inlined, so the arithmetic is exactly that of eight written-out
accumulators. LANES is fixed at 8 by the tuple helpers.
"""
from contextlib import contextmanager

from numba import njit
from numba.core import config

LANES = 8  # tasks per SIMD group (the arity of every lane tuple below)

lane_op = njit(inline="always", fastmath={"contract"})


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

@lane_op
def lanes(X, r, c):
    """The lane tuple X[r, c, :] of a (rows, cols, LANES) array."""
    x = X[r, c]
    return (x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7])


@lane_op
def store(X, r, c, a):
    """X[r, c, :] = a."""
    x = X[r, c]
    x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7] = a


@lane_op
def add(a, b):
    """a + b per lane."""
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3],
            a[4] + b[4], a[5] + b[5], a[6] + b[6], a[7] + b[7])


@lane_op
def mul(x, y):
    """x * y per lane."""
    return (x[0] * y[0], x[1] * y[1], x[2] * y[2], x[3] * y[3],
            x[4] * y[4], x[5] * y[5], x[6] * y[6], x[7] * y[7])


@lane_op
def scale(x, m):
    """x * m per lane, m a scalar shared by the lanes."""
    return (x[0] * m, x[1] * m, x[2] * m, x[3] * m, x[4] * m, x[5] * m, x[6] * m, x[7] * m)


@lane_op
def fma(a, x, y):
    """a + x * y per lane."""
    return (a[0] + x[0] * y[0], a[1] + x[1] * y[1], a[2] + x[2] * y[2], a[3] + x[3] * y[3],
            a[4] + x[4] * y[4], a[5] + x[5] * y[5], a[6] + x[6] * y[6], a[7] + x[7] * y[7])


@lane_op
def fma_scalar(a, x, m):
    """a + x * m per lane, m a scalar shared by the lanes."""
    return (a[0] + x[0] * m, a[1] + x[1] * m, a[2] + x[2] * m, a[3] + x[3] * m,
            a[4] + x[4] * m, a[5] + x[5] * m, a[6] + x[6] * m, a[7] + x[7] * m)


# ---------------------------------------------------------------- lane-matrix building blocks
# X, U, V, dX ...: (rows, D, LANES) per-task matrices; W: (D, D) shared; A: (D, D, LANES) per task.

@njit(cache=True, fastmath={"contract"})
def mul_shared(X, rows, W, out, accumulate):
    """out[t] (+)= X[t] @ W for t < rows: per task (rows, D) times the shared (D, D)."""
    D = W.shape[0]
    for t in range(rows):
        for k in range(D):
            a = scale(lanes(X, t, 0), W[0, k])
            if accumulate:
                a = add(a, lanes(out, t, k))
            for i in range(1, D):
                a = fma_scalar(a, lanes(X, t, i), W[i, k])
            store(out, t, k, a)


@njit(cache=True, fastmath={"contract"})
def mul_lanes(X, rows, A, out, accumulate):
    """out[t] (+)= X[t] @ A for t < rows: per task (rows, D) times per task (D, D)."""
    D = A.shape[0]
    for t in range(rows):
        for k in range(D):
            a = mul(lanes(X, t, 0), lanes(A, 0, k))
            if accumulate:
                a = add(a, lanes(out, t, k))
            for i in range(1, D):
                a = fma(a, lanes(X, t, i), lanes(A, i, k))
            store(out, t, k, a)


@njit(cache=True, fastmath={"contract"})
def add_at_b(X, Y, rows, G):
    """G += X[:rows]^T Y[:rows] per lane: G (D, D, LANES)."""
    D = G.shape[0]
    for i in range(D):
        for k in range(D):
            a = lanes(G, i, k)
            for t in range(rows):
                a = fma(a, lanes(X, t, i), lanes(Y, t, k))
            store(G, i, k, a)


@njit(cache=True, fastmath={"contract"})
def gram(X, S, A):
    """A = X[:S]^T X[:S] per lane (symmetric: each pair computed once and mirrored)."""
    D = A.shape[0]
    for i in range(D):
        for k in range(i, D):
            a = mul(lanes(X, 0, i), lanes(X, 0, k))
            for s in range(1, S):
                a = fma(a, lanes(X, s, i), lanes(X, s, k))
            store(A, i, k, a)
            store(A, k, i, a)
