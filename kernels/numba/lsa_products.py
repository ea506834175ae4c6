"""The lane-matrix products of the linear-self-attention kernel (kernels.numba.lsa), built from the
lane tuples of kernels.numba.lsa_lanes.

Shape legend: X, U, V, dX ...: (rows, D, NL) per-task matrices (NL tasks in the lanes); W (n, m)
shared by the tasks; A (D, D, NL) per task.

Register blocking: each product computes a block of two output rows by four output columns at a
time, eight independent chains of multiply-adds. Per step a block loads two left-operand tuples
and four right-operand tuples (or four shared scalars) for eight multiply-adds; one row at a time
it would be five loads for four, and the loads, not the multiply-adds, would set the pace (a
float64 tuple is one AVX-512 register: one load and one multiply-add per cycle on this CPU).
mul_shared and mul_lanes run the columns in blocks of four and the last m % 4 in one block of
three, and pair a last odd row with itself (its spare chains repeat it and store the same value
twice); add_at_b blocks its rows and columns the same way; gram clamps its columns past the end
to the last one. Each product first checks that the lane axis holds NL entries
(`check_lanes`), which lets LLVM address a block's columns as fixed offsets of one pointer. Per
output the order of the arithmetic is that of a single chain: the first product, the accumulated value added
when accumulating, then a multiply-add per remaining term; the outputs are read before any store.
"""
from numba import njit

from kernels.numba.lsa_lanes import add, fma, fma_scalar, lanes, mul, nlanes, scale, store

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
def _start4(out, t, k0, k1, k2, k3, a0, a1, a2, a3, accumulate):
    if accumulate:
        return (add(a0, lanes(out, t, k0)), add(a1, lanes(out, t, k1)),
                add(a2, lanes(out, t, k2)), add(a3, lanes(out, t, k3)))
    return a0, a1, a2, a3


@njit(**INL)
def _store4(out, t, k0, k1, k2, k3, a0, a1, a2, a3):
    """Last column first: a clamped duplicate (k3 = k2 ...) stores the same value again."""
    store(out, t, k3, a3)
    store(out, t, k2, a2)
    store(out, t, k1, a1)
    store(out, t, k0, a0)


@njit(**INL)
def _columns(k, M):
    """Columns k .. k+3 with the ones past M - 1 clamped to M - 1 (spare chains repeat the last)."""
    return k, min(k + 1, M - 1), min(k + 2, M - 1), min(k + 3, M - 1)


@njit(**INL)
def _start3(out, t, k0, k1, k2, a0, a1, a2, accumulate):
    if accumulate:
        return add(a0, lanes(out, t, k0)), add(a1, lanes(out, t, k1)), add(a2, lanes(out, t, k2))
    return a0, a1, a2


@njit(**INL)
def _store3(out, t, k0, k1, k2, a0, a1, a2):
    store(out, t, k2, a2)
    store(out, t, k1, a1)
    store(out, t, k0, a0)


@njit(**INL)
def check_lanes(X, Y, Z):
    """Raise unless the lane axis of X, Y and Z holds NL entries. Past this check LLVM knows the
    lane stride is the constant NL (it replaces the arrays' runtime last extent by it), so the
    neighbouring columns of a block are fixed offsets of one address: without it their addresses
    took a register each and spilled to the stack (mul_lanes: 1.5-1.9x slower)."""
    NL = nlanes(X)
    if X.shape[2] != NL or Y.shape[2] != NL or Z.shape[2] != NL:
        raise ValueError("lane arrays: the last axis must hold the lane count")


@njit(**OPTS)
def mul_shared(X, rows, W, out, accumulate):
    """out[t] (+)= X[t] @ W for t < rows: per task (rows, n) times the shared (n, m) (D x D in
    the attention, D x F and F x D in the MLP). Blocks of rows t, u = t + 1 (clamped) by four
    columns, then the last m % 4 columns in a block of three (clamped)."""
    D, M = W.shape[0], W.shape[1]
    check_lanes(X, out, out)
    full = M - M % BLOCK
    for t in range(0, rows, 2):
        u = min(t + 1, rows - 1)
        for k in range(0, full, BLOCK):
            x, y = lanes(X, t, 0), lanes(X, u, 0)
            w0, w1, w2, w3 = W[0, k], W[0, k + 1], W[0, k + 2], W[0, k + 3]
            a0, a1, a2, a3 = _start4(out, t, k, k + 1, k + 2, k + 3, scale(x, w0), scale(x, w1), scale(x, w2),
                                     scale(x, w3), accumulate)
            b0, b1, b2, b3 = _start4(out, u, k, k + 1, k + 2, k + 3, scale(y, w0), scale(y, w1), scale(y, w2),
                                     scale(y, w3), accumulate)
            for i in range(1, D):
                x, y = lanes(X, t, i), lanes(X, u, i)
                w0, w1, w2, w3 = W[i, k], W[i, k + 1], W[i, k + 2], W[i, k + 3]
                a0, a1 = fma_scalar(a0, x, w0), fma_scalar(a1, x, w1)
                a2, a3 = fma_scalar(a2, x, w2), fma_scalar(a3, x, w3)
                b0, b1 = fma_scalar(b0, y, w0), fma_scalar(b1, y, w1)
                b2, b3 = fma_scalar(b2, y, w2), fma_scalar(b3, y, w3)
            _store4(out, u, k, k + 1, k + 2, k + 3, b0, b1, b2, b3)
            _store4(out, t, k, k + 1, k + 2, k + 3, a0, a1, a2, a3)
        if full < M:
            k0, k1, k2 = full, min(full + 1, M - 1), min(full + 2, M - 1)
            x, y = lanes(X, t, 0), lanes(X, u, 0)
            w0, w1, w2 = W[0, k0], W[0, k1], W[0, k2]
            a0, a1, a2 = _start3(out, t, k0, k1, k2, scale(x, w0), scale(x, w1), scale(x, w2), accumulate)
            b0, b1, b2 = _start3(out, u, k0, k1, k2, scale(y, w0), scale(y, w1), scale(y, w2), accumulate)
            for i in range(1, D):
                x, y = lanes(X, t, i), lanes(X, u, i)
                w0, w1, w2 = W[i, k0], W[i, k1], W[i, k2]
                a0, a1, a2 = fma_scalar(a0, x, w0), fma_scalar(a1, x, w1), fma_scalar(a2, x, w2)
                b0, b1, b2 = fma_scalar(b0, y, w0), fma_scalar(b1, y, w1), fma_scalar(b2, y, w2)
            _store3(out, u, k0, k1, k2, b0, b1, b2)
            _store3(out, t, k0, k1, k2, a0, a1, a2)


@njit(**OPTS)
def mul_lanes(X, rows, A, out, accumulate):
    """out[t] (+)= X[t] @ A for t < rows: per task (rows, D) times per task (D, D); blocks as in
    mul_shared."""
    D = A.shape[0]
    check_lanes(X, A, out)
    full = D - D % BLOCK
    for t in range(0, rows, 2):
        u = min(t + 1, rows - 1)
        for k in range(0, full, BLOCK):
            x, y = lanes(X, t, 0), lanes(X, u, 0)
            c0, c1, c2, c3 = lanes(A, 0, k), lanes(A, 0, k + 1), lanes(A, 0, k + 2), lanes(A, 0, k + 3)
            a0, a1, a2, a3 = _start4(out, t, k, k + 1, k + 2, k + 3, mul(x, c0), mul(x, c1), mul(x, c2), mul(x, c3),
                                     accumulate)
            b0, b1, b2, b3 = _start4(out, u, k, k + 1, k + 2, k + 3, mul(y, c0), mul(y, c1), mul(y, c2), mul(y, c3),
                                     accumulate)
            for i in range(1, D):
                x, y = lanes(X, t, i), lanes(X, u, i)
                c0, c1, c2, c3 = lanes(A, i, k), lanes(A, i, k + 1), lanes(A, i, k + 2), lanes(A, i, k + 3)
                a0, a1, a2, a3 = fma(a0, x, c0), fma(a1, x, c1), fma(a2, x, c2), fma(a3, x, c3)
                b0, b1, b2, b3 = fma(b0, y, c0), fma(b1, y, c1), fma(b2, y, c2), fma(b3, y, c3)
            _store4(out, u, k, k + 1, k + 2, k + 3, b0, b1, b2, b3)
            _store4(out, t, k, k + 1, k + 2, k + 3, a0, a1, a2, a3)
        if full < D:
            k0, k1, k2 = full, min(full + 1, D - 1), min(full + 2, D - 1)
            x, y = lanes(X, t, 0), lanes(X, u, 0)
            c0, c1, c2 = lanes(A, 0, k0), lanes(A, 0, k1), lanes(A, 0, k2)
            a0, a1, a2 = _start3(out, t, k0, k1, k2, mul(x, c0), mul(x, c1), mul(x, c2), accumulate)
            b0, b1, b2 = _start3(out, u, k0, k1, k2, mul(y, c0), mul(y, c1), mul(y, c2), accumulate)
            for i in range(1, D):
                x, y = lanes(X, t, i), lanes(X, u, i)
                c0, c1, c2 = lanes(A, i, k0), lanes(A, i, k1), lanes(A, i, k2)
                a0, a1, a2 = fma(a0, x, c0), fma(a1, x, c1), fma(a2, x, c2)
                b0, b1, b2 = fma(b0, y, c0), fma(b1, y, c1), fma(b2, y, c2)
            _store3(out, u, k0, k1, k2, b0, b1, b2)
            _store3(out, t, k0, k1, k2, a0, a1, a2)


@njit(**OPTS)
def add_at_b(X, Y, rows, G):
    """G += X[:rows]^T Y[:rows] per lane: G (n, m, NL), X (rows, n, NL), Y (rows, m, NL). Blocks of
    G rows i, j = i + 1 (a last odd row paired with itself) by four columns, then the last m % 4
    columns in a block of three (clamped); each chain starts from G's value."""
    D, M = G.shape[0], G.shape[1]
    check_lanes(X, Y, G)
    full = M - M % BLOCK
    for i in range(0, D, 2):
        j = min(i + 1, D - 1)
        for k in range(0, full, BLOCK):
            a0, a1, a2, a3 = lanes(G, i, k), lanes(G, i, k + 1), lanes(G, i, k + 2), lanes(G, i, k + 3)
            b0, b1, b2, b3 = lanes(G, j, k), lanes(G, j, k + 1), lanes(G, j, k + 2), lanes(G, j, k + 3)
            for t in range(rows):
                x, z = lanes(X, t, i), lanes(X, t, j)
                c0, c1, c2, c3 = lanes(Y, t, k), lanes(Y, t, k + 1), lanes(Y, t, k + 2), lanes(Y, t, k + 3)
                a0, a1, a2, a3 = fma(a0, x, c0), fma(a1, x, c1), fma(a2, x, c2), fma(a3, x, c3)
                b0, b1, b2, b3 = fma(b0, z, c0), fma(b1, z, c1), fma(b2, z, c2), fma(b3, z, c3)
            _store4(G, j, k, k + 1, k + 2, k + 3, b0, b1, b2, b3)
            _store4(G, i, k, k + 1, k + 2, k + 3, a0, a1, a2, a3)
        if full < M:
            k0, k1, k2 = full, min(full + 1, M - 1), min(full + 2, M - 1)
            a0, a1, a2 = lanes(G, i, k0), lanes(G, i, k1), lanes(G, i, k2)
            b0, b1, b2 = lanes(G, j, k0), lanes(G, j, k1), lanes(G, j, k2)
            for t in range(rows):
                x, z = lanes(X, t, i), lanes(X, t, j)
                c0, c1, c2 = lanes(Y, t, k0), lanes(Y, t, k1), lanes(Y, t, k2)
                a0, a1, a2 = fma(a0, x, c0), fma(a1, x, c1), fma(a2, x, c2)
                b0, b1, b2 = fma(b0, z, c0), fma(b1, z, c1), fma(b2, z, c2)
            _store3(G, j, k0, k1, k2, b0, b1, b2)
            _store3(G, i, k0, k1, k2, a0, a1, a2)


@njit(**OPTS)
def gram(X, S, A):
    """A = X[:S]^T X[:S] per lane: the pairs k >= i in blocks of four clamped columns, each
    mirrored to A[k, i] (~30 % faster than a column at a time at D = 11)."""
    D = A.shape[0]
    check_lanes(X, A, A)
    for i in range(D):
        for kb in range(i, D, BLOCK):
            k0, k1, k2, k3 = _columns(kb, D)
            x = lanes(X, 0, i)
            a0, a1 = mul(x, lanes(X, 0, k0)), mul(x, lanes(X, 0, k1))
            a2, a3 = mul(x, lanes(X, 0, k2)), mul(x, lanes(X, 0, k3))
            for s in range(1, S):
                x = lanes(X, s, i)
                a0, a1 = fma(a0, x, lanes(X, s, k0)), fma(a1, x, lanes(X, s, k1))
                a2, a3 = fma(a2, x, lanes(X, s, k2)), fma(a3, x, lanes(X, s, k3))
            _store4(A, i, k0, k1, k2, k3, a0, a1, a2, a3)
            for k, a in ((k3, a3), (k2, a2), (k1, a1), (k0, a0)):
                store(A, k, i, a)
