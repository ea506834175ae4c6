"""The lane-matrix products of the linear-self-attention kernel (kernels.numba.lsa), built from the
lane tuples of kernels.numba.lsa_lanes.

Shape legend: X, U, V, dX ...: (rows, D, NL) per-task matrices (NL tasks in the lanes); W (n, m)
shared by the tasks; A (D, D, NL) per task.

Register blocking: each product computes a block of two output rows by four output columns at a
time, eight independent chains of multiply-adds. Per step a block loads two left-operand tuples
and four right-operand tuples (or four shared scalars) for eight multiply-adds; one row at a time
it would be five loads for four, and the loads, not the multiply-adds, would set the pace (a
float64 tuple is one AVX-512 register: one load and one multiply-add per cycle on this CPU). The
rows and columns left over (D = 11: rows in pairs plus one, columns 4 + 4 + 3) run with fewer
chains. Per output the order of the arithmetic is that of a single chain: the first product,
the accumulated value added when accumulating, then a multiply-add per remaining term.
"""
from numba import njit

from kernels.numba.lsa_lanes import add, fma, fma_scalar, lanes, mul, scale, store

BLOCK = 4  # output columns per block
OPTS = {"cache": True, "fastmath": {"contract"}}
INL = {"inline": "always", "fastmath": {"contract"}}


@njit(**INL)
def shared_column(X, tx, W, k, out, to, accumulate):
    """out[to, k] (+)= X[tx] . W[:, k] per lane (one output of mul_shared)."""
    a = scale(lanes(X, tx, 0), W[0, k])
    if accumulate:
        a = add(a, lanes(out, to, k))
    for i in range(1, W.shape[0]):
        a = fma_scalar(a, lanes(X, tx, i), W[i, k])
    store(out, to, k, a)


@njit(**INL)
def lanes_column(X, tx, A, k, out, to, accumulate):
    """out[to, k] (+)= X[tx] . A[:, k] per lane (one output of mul_lanes)."""
    a = mul(lanes(X, tx, 0), lanes(A, 0, k))
    if accumulate:
        a = add(a, lanes(out, to, k))
    for i in range(1, A.shape[0]):
        a = fma(a, lanes(X, tx, i), lanes(A, i, k))
    store(out, to, k, a)


@njit(**INL)
def _start4(out, t, k, a0, a1, a2, a3, accumulate):
    if accumulate:
        return (add(a0, lanes(out, t, k)), add(a1, lanes(out, t, k + 1)),
                add(a2, lanes(out, t, k + 2)), add(a3, lanes(out, t, k + 3)))
    return a0, a1, a2, a3


@njit(**INL)
def _store4(out, t, k, a0, a1, a2, a3):
    store(out, t, k, a0)
    store(out, t, k + 1, a1)
    store(out, t, k + 2, a2)
    store(out, t, k + 3, a3)


@njit(**OPTS)
def mul_shared(X, rows, W, out, accumulate):
    """out[t] (+)= X[t] @ W for t < rows: per task (rows, n) times the shared (n, m) (D x D in
    the attention, D x F and F x D in the MLP)."""
    D, M = W.shape[0], W.shape[1]
    full = M - M % BLOCK
    pairs = rows - rows % 2
    for t in range(0, pairs, 2):
        for k in range(0, full, BLOCK):
            x, y = lanes(X, t, 0), lanes(X, t + 1, 0)
            w0, w1, w2, w3 = W[0, k], W[0, k + 1], W[0, k + 2], W[0, k + 3]
            a0, a1, a2, a3 = _start4(out, t, k, scale(x, w0), scale(x, w1), scale(x, w2), scale(x, w3),
                                     accumulate)
            b0, b1, b2, b3 = _start4(out, t + 1, k, scale(y, w0), scale(y, w1), scale(y, w2), scale(y, w3),
                                     accumulate)
            for i in range(1, D):
                x, y = lanes(X, t, i), lanes(X, t + 1, i)
                w0, w1, w2, w3 = W[i, k], W[i, k + 1], W[i, k + 2], W[i, k + 3]
                a0, a1 = fma_scalar(a0, x, w0), fma_scalar(a1, x, w1)
                a2, a3 = fma_scalar(a2, x, w2), fma_scalar(a3, x, w3)
                b0, b1 = fma_scalar(b0, y, w0), fma_scalar(b1, y, w1)
                b2, b3 = fma_scalar(b2, y, w2), fma_scalar(b3, y, w3)
            _store4(out, t, k, a0, a1, a2, a3)
            _store4(out, t + 1, k, b0, b1, b2, b3)
        for k in range(full, M):
            shared_column(X, t, W, k, out, t, accumulate)
            shared_column(X, t + 1, W, k, out, t + 1, accumulate)
    for t in range(pairs, rows):
        for k in range(0, full, BLOCK):
            x = lanes(X, t, 0)
            a0, a1, a2, a3 = _start4(out, t, k, scale(x, W[0, k]), scale(x, W[0, k + 1]),
                                     scale(x, W[0, k + 2]), scale(x, W[0, k + 3]), accumulate)
            for i in range(1, D):
                x = lanes(X, t, i)
                a0, a1 = fma_scalar(a0, x, W[i, k]), fma_scalar(a1, x, W[i, k + 1])
                a2, a3 = fma_scalar(a2, x, W[i, k + 2]), fma_scalar(a3, x, W[i, k + 3])
            _store4(out, t, k, a0, a1, a2, a3)
        for k in range(full, M):
            shared_column(X, t, W, k, out, t, accumulate)


@njit(**OPTS)
def mul_lanes(X, rows, A, out, accumulate):
    """out[t] (+)= X[t] @ A for t < rows: per task (rows, D) times per task (D, D)."""
    D = A.shape[0]
    full = D - D % BLOCK
    pairs = rows - rows % 2
    for t in range(0, pairs, 2):
        for k in range(0, full, BLOCK):
            x, y = lanes(X, t, 0), lanes(X, t + 1, 0)
            c0, c1, c2, c3 = lanes(A, 0, k), lanes(A, 0, k + 1), lanes(A, 0, k + 2), lanes(A, 0, k + 3)
            a0, a1, a2, a3 = _start4(out, t, k, mul(x, c0), mul(x, c1), mul(x, c2), mul(x, c3), accumulate)
            b0, b1, b2, b3 = _start4(out, t + 1, k, mul(y, c0), mul(y, c1), mul(y, c2), mul(y, c3), accumulate)
            for i in range(1, D):
                x, y = lanes(X, t, i), lanes(X, t + 1, i)
                c0, c1, c2, c3 = lanes(A, i, k), lanes(A, i, k + 1), lanes(A, i, k + 2), lanes(A, i, k + 3)
                a0, a1, a2, a3 = fma(a0, x, c0), fma(a1, x, c1), fma(a2, x, c2), fma(a3, x, c3)
                b0, b1, b2, b3 = fma(b0, y, c0), fma(b1, y, c1), fma(b2, y, c2), fma(b3, y, c3)
            _store4(out, t, k, a0, a1, a2, a3)
            _store4(out, t + 1, k, b0, b1, b2, b3)
        for k in range(full, D):
            lanes_column(X, t, A, k, out, t, accumulate)
            lanes_column(X, t + 1, A, k, out, t + 1, accumulate)
    for t in range(pairs, rows):
        for k in range(0, full, BLOCK):
            x = lanes(X, t, 0)
            a0, a1, a2, a3 = _start4(out, t, k, mul(x, lanes(A, 0, k)), mul(x, lanes(A, 0, k + 1)),
                                     mul(x, lanes(A, 0, k + 2)), mul(x, lanes(A, 0, k + 3)), accumulate)
            for i in range(1, D):
                x = lanes(X, t, i)
                a0, a1 = fma(a0, x, lanes(A, i, k)), fma(a1, x, lanes(A, i, k + 1))
                a2, a3 = fma(a2, x, lanes(A, i, k + 2)), fma(a3, x, lanes(A, i, k + 3))
            _store4(out, t, k, a0, a1, a2, a3)
        for k in range(full, D):
            lanes_column(X, t, A, k, out, t, accumulate)


@njit(**OPTS)
def add_at_b(X, Y, rows, G):
    """G += X[:rows]^T Y[:rows] per lane: G (n, m, NL), X (rows, n, NL), Y (rows, m, NL)."""
    D, M = G.shape[0], G.shape[1]
    full = M - M % BLOCK
    pairs = D - D % 2
    for i in range(0, pairs, 2):
        for k in range(0, full, BLOCK):
            a0, a1, a2, a3 = lanes(G, i, k), lanes(G, i, k + 1), lanes(G, i, k + 2), lanes(G, i, k + 3)
            b0, b1, b2, b3 = lanes(G, i + 1, k), lanes(G, i + 1, k + 1), lanes(G, i + 1, k + 2), lanes(G, i + 1, k + 3)
            for t in range(rows):
                x, z = lanes(X, t, i), lanes(X, t, i + 1)
                c0, c1, c2, c3 = lanes(Y, t, k), lanes(Y, t, k + 1), lanes(Y, t, k + 2), lanes(Y, t, k + 3)
                a0, a1, a2, a3 = fma(a0, x, c0), fma(a1, x, c1), fma(a2, x, c2), fma(a3, x, c3)
                b0, b1, b2, b3 = fma(b0, z, c0), fma(b1, z, c1), fma(b2, z, c2), fma(b3, z, c3)
            _store4(G, i, k, a0, a1, a2, a3)
            _store4(G, i + 1, k, b0, b1, b2, b3)
        for k in range(full, M):
            a, b = lanes(G, i, k), lanes(G, i + 1, k)
            for t in range(rows):
                c = lanes(Y, t, k)
                a, b = fma(a, lanes(X, t, i), c), fma(b, lanes(X, t, i + 1), c)
            store(G, i, k, a)
            store(G, i + 1, k, b)
    for i in range(pairs, D):
        for k in range(0, full, BLOCK):
            a0, a1, a2, a3 = lanes(G, i, k), lanes(G, i, k + 1), lanes(G, i, k + 2), lanes(G, i, k + 3)
            for t in range(rows):
                x = lanes(X, t, i)
                a0, a1 = fma(a0, x, lanes(Y, t, k)), fma(a1, x, lanes(Y, t, k + 1))
                a2, a3 = fma(a2, x, lanes(Y, t, k + 2)), fma(a3, x, lanes(Y, t, k + 3))
            _store4(G, i, k, a0, a1, a2, a3)
        for k in range(full, M):
            a = lanes(G, i, k)
            for t in range(rows):
                a = fma(a, lanes(X, t, i), lanes(Y, t, k))
            store(G, i, k, a)


@njit(**OPTS)
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
