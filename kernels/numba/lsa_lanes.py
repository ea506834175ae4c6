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

@lane_op
def shared_column(X, tx, W, k, out, to, accumulate):
    """out[to, k] (+)= X[tx] . W[:, k] per lane (one output of mul_shared)."""
    a = scale(lanes(X, tx, 0), W[0, k])
    if accumulate:
        a = add(a, lanes(out, to, k))
    for i in range(1, W.shape[0]):
        a = fma_scalar(a, lanes(X, tx, i), W[i, k])
    store(out, to, k, a)


@lane_op
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
    """out[t] (+)= X[t] @ W for t < rows: per task (rows, D) times the shared (D, D)."""
    D = W.shape[0]
    full = D - D % BLOCK
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
        for k in range(full, D):
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
    """G += X[:rows]^T Y[:rows] per lane: G (D, D, LANES)."""
    D = G.shape[0]
    full = D - D % BLOCK
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
        for k in range(full, D):
            a = lanes(G, i, k)
            for t in range(rows):
                a = fma(a, lanes(X, t, i), lanes(Y, t, k))
            store(G, i, k, a)


@njit(cache=True, fastmath={"contract"})
def gram(X, S, A):
    """A = X[:S]^T X[:S] per lane (symmetric: each pair computed once and mirrored). One column
    at a time: the one-application kernel uses it, and it compiles in a fraction of the blocked
    products' time."""
    D = A.shape[0]
    for i in range(D):
        for k in range(i, D):
            a = mul(lanes(X, 0, i), lanes(X, 0, k))
            for s in range(1, S):
                a = fma(a, lanes(X, s, i), lanes(X, s, k))
            store(A, i, k, a)
            store(A, k, i, a)
