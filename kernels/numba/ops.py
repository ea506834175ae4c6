"""Per-task building blocks shared by the numba-cpu and numba-cuda backends.

Every function here is `@njit(cache=True)`; a `@cuda.jit` kernel that calls one gets it compiled as
a CUDA device function, so both backends run the same arithmetic.
No allocation, no NumPy calls: matrices live in flat 1-D buffers, addressed as (buffer, offset,
row stride), row-major. Scalars that must stay in the data's dtype (0, 1/2, eps, ...) come from the
constants vector `cst` (see kernels/numba/layout.py), so float32 data is computed in float32 (a
Python int in an expression with a float32 makes it float64 in Numba: counts go through count_as).

Mirrors refimpl/layers.py (LayerNorm, GELU-tanh, clip) and the matrix products of
refimpl/attention.py. Shape legend as in the oracle: T tokens, S keys, D width, K key size, F
hidden width.
"""
import math

from numba import njit, uint64

# Matrix products: offsets and sizes are converted to unsigned integers, which spares Numba's
# negative-index wraparound test on every access and lets LLVM vectorise the inner loops; FMA
# contraction and reassociation are allowed in them (deterministic for a given machine).
MM_FLAGS = {"contract", "reassoc"}

# indices into the constants vector `cst` (values in the data's dtype)
C_ZERO, C_ONE, C_HALF, C_LAM, C_CLIP, C_LN_EPS, C_GELU_C, C_GELU_A, C_SQRT_K, C_NEG_INF, C_INV_B = range(11)
# the exp of gelu_tanh (layout.exp_constants fills them): log2(e), ln 2 in two parts, the clamp of
# its argument, EXP_BIAS and 2^-EXP_BIAS, the rounding constant 1.5 2^52 (float32: 1.5 2^23); the
# binary digits' values 2^b (b = 6 .. 0) and their powers 2^(2^b); the Taylor coefficients
# 1/EXP_DEGREE!, ..., 1/1!, 1
C_EXP_LOG2E, C_EXP_LN2_HI, C_EXP_LN2_LO, C_EXP_LIM, C_EXP_BIAS, C_EXP_SCALE, C_EXP_ROUND = range(11, 18)
EXP_BITS = 7  # 2^k for an integer k in [-EXP_BIAS, EXP_BIAS): k + EXP_BIAS in binary, 7 digits
EXP_BIAS = 2 ** (EXP_BITS - 1)
EXP_DEGREE = 12  # e^r = sum_j r^j / j! for j <= 12: relative error < 2e-16 for |r| <= ln(2) / 2
C_EXP_BIT = 18
C_EXP_POW = C_EXP_BIT + EXP_BITS
C_EXP_POLY = C_EXP_POW + EXP_BITS
NUM_CONSTS = C_EXP_POLY + EXP_DEGREE + 1


@njit(cache=True)
def fill(buf, o, n, value):
    for i in range(n):
        buf[o + i] = value


@njit(cache=True)
def copy(src, s0, dst, d0, n):
    for i in range(n):
        dst[d0 + i] = src[s0 + i]


@njit(cache=True, fastmath=MM_FLAGS)
def mm_nn(A, a0, lda, B, b0, ldb, C, c0, ldc, M, Kd, N, accumulate, cst):
    """C[i, j] (+)= sum_k A[i, k] B[k, j]   (M, Kd) @ (Kd, N); inner loop contiguous in B and C."""
    a0, lda, b0, ldb, c0, ldc = uint64(a0), uint64(lda), uint64(b0), uint64(ldb), uint64(c0), uint64(ldc)
    M, Kd, N = uint64(M), uint64(Kd), uint64(N)
    for i in range(M):
        ci = c0 + i * ldc
        if accumulate == 0:
            for j in range(N):
                C[ci + j] = cst[C_ZERO]
        for k in range(Kd):
            a = A[a0 + i * lda + k]
            bk = b0 + k * ldb
            for j in range(N):
                C[ci + j] += a * B[bk + j]


@njit(cache=True, fastmath=MM_FLAGS)
def mm_tn(A, a0, lda, B, b0, ldb, C, c0, ldc, M, Kd, N, accumulate, cst):
    """C[i, j] (+)= sum_k A[k, i] B[k, j]   A^T (M, Kd) @ (Kd, N): weight gradients x^T dy."""
    a0, lda, b0, ldb, c0, ldc = uint64(a0), uint64(lda), uint64(b0), uint64(ldb), uint64(c0), uint64(ldc)
    M, Kd, N = uint64(M), uint64(Kd), uint64(N)
    if accumulate == 0:
        for i in range(M):
            for j in range(N):
                C[c0 + i * ldc + j] = cst[C_ZERO]
    for k in range(Kd):
        ak = a0 + k * lda
        bk = b0 + k * ldb
        for i in range(M):
            a = A[ak + i]
            ci = c0 + i * ldc
            for j in range(N):
                C[ci + j] += a * B[bk + j]


@njit(cache=True, fastmath=MM_FLAGS)
def mm_nt(A, a0, lda, B, b0, ldb, C, c0, ldc, M, Kd, N, accumulate, cst):
    """C[i, j] (+)= sum_k A[i, k] B[j, k]   (M, Kd) @ B^T: input gradients dy W^T."""
    a0, lda, b0, ldb, c0, ldc = uint64(a0), uint64(lda), uint64(b0), uint64(ldb), uint64(c0), uint64(ldc)
    M, Kd, N = uint64(M), uint64(Kd), uint64(N)
    for i in range(M):
        for j in range(N):
            s = cst[C_ZERO]
            for k in range(Kd):
                s += A[a0 + i * lda + k] * B[b0 + j * ldb + k]
            if accumulate == 0:
                C[c0 + i * ldc + j] = s
            else:
                C[c0 + i * ldc + j] += s


@njit(cache=True)
def add_bias(C, c0, M, N, bias, o, cst):
    """C[i, :] += bias (N,)."""
    for i in range(M):
        for j in range(N):
            C[c0 + i * N + j] += bias[o + j]


@njit(cache=True)
def sum_rows_into(G, g0, X, x0, M, N):
    """G[j] += sum_i X[i, j]: a bias gradient."""
    for i in range(M):
        for j in range(N):
            G[g0 + j] += X[x0 + i * N + j]


@njit(cache=True)
def count_as(n, cst):
    """The integer n as a number of the data's dtype (cst's): float32 / int64 is float64 in Numba,
    so a float32 mean divides by this instead of by n (exact: n is small)."""
    c = cst[C_ZERO]
    for _ in range(n):
        c += cst[C_ONE]
    return c


# ----------------------------------------------------------------------------------------------
# LayerNorm over rows of width N (refimpl.layers.layernorm_forward/backward)
@njit(cache=True)
def layernorm_fwd(X, x0, M, N, pv, o_scale, o_offset, XH, h0, R, r0, Y, y0, cst):
    """Y = xhat * scale + offset; stores xhat (M, N) and rstd (M,) for the backward."""
    n = count_as(N, cst)
    for i in range(M):
        mean = cst[C_ZERO]
        for j in range(N):
            mean += X[x0 + i * N + j]
        mean = mean / n
        var = cst[C_ZERO]
        for j in range(N):
            c = X[x0 + i * N + j] - mean
            var += c * c
        var = var / n
        rstd = cst[C_ONE] / math.sqrt(var + cst[C_LN_EPS])
        R[r0 + i] = rstd
        for j in range(N):
            xh = (X[x0 + i * N + j] - mean) * rstd
            XH[h0 + i * N + j] = xh
            Y[y0 + i * N + j] = xh * pv[o_scale + j] + pv[o_offset + j]


@njit(cache=True)
def layernorm_bwd(DY, d0, M, N, pv, o_scale, XH, h0, R, r0, G, g_scale, g_offset, DX, dx0, accumulate,
                  cst):
    """dscale += sum dy xhat, doffset += sum dy; DX (+)= rstd (dxhat - mean dxhat - xhat mean(dxhat xhat))."""
    n = count_as(N, cst)
    for i in range(M):
        m1 = cst[C_ZERO]
        m2 = cst[C_ZERO]
        for j in range(N):
            dy = DY[d0 + i * N + j]
            xh = XH[h0 + i * N + j]
            G[g_scale + j] += dy * xh
            G[g_offset + j] += dy
            dxh = dy * pv[o_scale + j]
            m1 += dxh
            m2 += dxh * xh
        m1 = m1 / n
        m2 = m2 / n
        rstd = R[r0 + i]
        for j in range(N):
            xh = XH[h0 + i * N + j]
            v = rstd * (DY[d0 + i * N + j] * pv[o_scale + j] - m1 - xh * m2)
            if accumulate == 0:
                DX[dx0 + i * N + j] = v
            else:
                DX[dx0 + i * N + j] += v


# ----------------------------------------------------------------------------------------------
# GELU, tanh approximation (refimpl.layers.gelu_forward/backward)
@njit(cache=True)
def gelu_consts(cst):
    """The constants of gelu_tanh as one tuple of the data's dtype, read from cst once before a
    loop (inside it, a load from cst could alias the loop's stores and keep it from vectorising):
    c, a, 1, 1/2, 2, the clamp, log2(e), ln 2 (two parts), EXP_BIAS, 2^-EXP_BIAS, the digits' values
    and powers, the Taylor coefficients."""
    return (cst[C_GELU_C], cst[C_GELU_A], cst[C_ONE], cst[C_HALF], cst[C_ONE] + cst[C_ONE], cst[C_EXP_LIM],
            cst[C_EXP_LOG2E], cst[C_EXP_LN2_HI], cst[C_EXP_LN2_LO], cst[C_EXP_BIAS], cst[C_EXP_SCALE],
            cst[C_EXP_ROUND], cst[C_EXP_BIT], cst[C_EXP_BIT + 1], cst[C_EXP_BIT + 2], cst[C_EXP_BIT + 3], cst[C_EXP_BIT + 4],
            cst[C_EXP_BIT + 5], cst[C_EXP_BIT + 6],
            cst[C_EXP_POW], cst[C_EXP_POW + 1], cst[C_EXP_POW + 2], cst[C_EXP_POW + 3], cst[C_EXP_POW + 4],
            cst[C_EXP_POW + 5], cst[C_EXP_POW + 6],
            cst[C_EXP_POLY], cst[C_EXP_POLY + 1], cst[C_EXP_POLY + 2], cst[C_EXP_POLY + 3], cst[C_EXP_POLY + 4],
            cst[C_EXP_POLY + 5], cst[C_EXP_POLY + 6], cst[C_EXP_POLY + 7], cst[C_EXP_POLY + 8],
            cst[C_EXP_POLY + 9], cst[C_EXP_POLY + 10], cst[C_EXP_POLY + 11], cst[C_EXP_POLY + 12])


G_C, G_A, G_ONE, G_HALF, G_TWO, G_LIM, G_LOG2E, G_LN2_HI, G_LN2_LO, G_BIAS, G_SCALE, G_ROUND = range(12)
G_BIT = 12
G_POW = G_BIT + EXP_BITS
G_POLY = G_POW + EXP_BITS


@njit(cache=True, inline="always")
def _exp_digit(q, s, bit, power):
    """One binary digit of q (worth `bit`): taken off q, and its power 2^bit multiplied into s."""
    on = q >= bit
    return (q - bit if on else q), (s * power if on else s)


@njit(cache=True, inline="always", error_model="numpy")
def gelu_tanh(x, g):
    """tanh(u), u = c (x + a x^3), as 1 - 2 / (e^2u + 1), absolute error ~1e-16 (as np.tanh's), so
    gelu and gelu' differ from the oracle's by ~1e-14 at most; g = gelu_consts(cst). e^2u = 2^k e^r
    with k = round(2u / ln 2), r = 2u - k ln 2 (two parts of ln 2, Cody and Waite), e^r its Taylor
    polynomial, and 2^k a product of 2^(2^b) over the binary digits of k + EXP_BIAS, chosen by
    comparisons: no call and no integer bits, so a loop over it vectorises (a loop over math.exp
    does not, and costs 3x more here), in float32 and float64 alike and on a GPU. 2u is clamped to
    [-40, 40] first, where tanh is already +-1 to the last bit (e^-40 < eps / 2); NaN stays NaN."""
    v = g[G_TWO] * (g[G_C] * (x + g[G_A] * (x * x * x)))  # 2u
    v = g[G_LIM] if v > g[G_LIM] else v
    v = -g[G_LIM] if v < -g[G_LIM] else v
    k = (v * g[G_LOG2E] + g[G_ROUND]) - g[G_ROUND]  # round(2u / ln 2): 1.5 2^52 (float32: 2^23) added and taken off
    r = (v - k * g[G_LN2_HI]) - k * g[G_LN2_LO]  # |r| <= ln(2) / 2 (and a bit)
    p = ((((g[G_POLY] * r + g[G_POLY + 1]) * r + g[G_POLY + 2]) * r + g[G_POLY + 3]) * r + g[G_POLY + 4]) * r
    p = ((((p + g[G_POLY + 5]) * r + g[G_POLY + 6]) * r + g[G_POLY + 7]) * r + g[G_POLY + 8]) * r
    p = (((p + g[G_POLY + 9]) * r + g[G_POLY + 10]) * r + g[G_POLY + 11]) * r + g[G_POLY + 12]
    q = k + g[G_BIAS]  # k + EXP_BIAS, an integer in [0, 2 EXP_BIAS)
    s = g[G_ONE]
    q, s = _exp_digit(q, s, g[G_BIT], g[G_POW])  # the binary digits of q from the highest, 2^6 .. 2^0
    q, s = _exp_digit(q, s, g[G_BIT + 1], g[G_POW + 1])
    q, s = _exp_digit(q, s, g[G_BIT + 2], g[G_POW + 2])
    q, s = _exp_digit(q, s, g[G_BIT + 3], g[G_POW + 3])
    q, s = _exp_digit(q, s, g[G_BIT + 4], g[G_POW + 4])
    q, s = _exp_digit(q, s, g[G_BIT + 5], g[G_POW + 5])
    q, s = _exp_digit(q, s, g[G_BIT + 6], g[G_POW + 6])
    e = p * (s * g[G_SCALE])  # e^r 2^q 2^-EXP_BIAS = e^2u
    return g[G_ONE] - g[G_TWO] / (e + g[G_ONE])


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def gelu_fwd(Hb, h0, n, Y, y0, cst):
    g = gelu_consts(cst)
    h0, y0, n = uint64(h0), uint64(y0), uint64(n)
    for i in range(n):
        x = Hb[h0 + i]
        Y[y0 + i] = g[G_HALF] * x * (g[G_ONE] + gelu_tanh(x, g))


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def gelu_bwd(D, d0, Hb, h0, n, cst):
    """D <- D * gelu'(h), in place (two arrays, not three: a loop whose load and store arrays may
    overlap keeps LLVM's vectorised path only where their ranges are disjoint, and D's never are
    with itself)."""
    g = gelu_consts(cst)
    a3 = g[G_A] + g[G_A] + g[G_A]  # 3 a in the data's dtype (3 * a would be float64)
    d0, h0, n = uint64(d0), uint64(h0), uint64(n)
    for i in range(n):
        x = Hb[h0 + i]
        t = gelu_tanh(x, g)
        du = g[G_C] * (g[G_ONE] + a3 * (x * x))
        D[d0 + i] = D[d0 + i] * (g[G_HALF] * (g[G_ONE] + t) + g[G_HALF] * x * (g[G_ONE] - t * t) * du)


# ----------------------------------------------------------------------------------------------
# MLP: Linear(N -> F, bias) -> GELU -> Linear(F -> N, bias), rows of X (M, N)
@njit(cache=True)
def mlp_fwd(X, x0, M, N, F, pv, o_W1, o_b1, o_W2, o_b2, Hb, h0, Gb, g0, Y, y0, accumulate, cst):
    """Stores h = x W1 + b1 and g = gelu(h) (M, F); Y (+)= g W2 + b2."""
    mm_nn(X, x0, N, pv, o_W1, F, Hb, h0, F, M, N, F, 0, cst)
    add_bias(Hb, h0, M, F, pv, o_b1, cst)
    gelu_fwd(Hb, h0, M * F, Gb, g0, cst)
    mm_nn(Gb, g0, F, pv, o_W2, N, Y, y0, N, M, F, N, accumulate, cst)
    add_bias(Y, y0, M, N, pv, o_b2, cst)


@njit(cache=True)
def mlp_bwd(DY, d0, X, x0, M, N, F, pv, o_W1, o_W2, Hb, h0, Gb, g0, G, g_W1, g_b1, g_W2, g_b2,
            DH, dh0, DX, dx0, accumulate, cst):
    """Backward of mlp_fwd: weight gradients into G, DX (+)= dy-path; DH (M, F) is scratch."""
    mm_tn(Gb, g0, F, DY, d0, N, G, g_W2, N, F, M, N, 1, cst)  # dW2 += g^T dy
    sum_rows_into(G, g_b2, DY, d0, M, N)  # db2 += sum dy
    mm_nt(DY, d0, N, pv, o_W2, N, DH, dh0, F, M, N, F, 0, cst)  # dg = dy W2^T
    gelu_bwd(DH, dh0, Hb, h0, M * F, cst)  # dh = dg gelu'(h)
    mm_tn(X, x0, N, DH, dh0, F, G, g_W1, F, N, M, F, 1, cst)  # dW1 += x^T dh
    sum_rows_into(G, g_b1, DH, dh0, M, F)  # db1 += sum dh
    mm_nt(DH, dh0, F, pv, o_W1, F, DX, dx0, N, M, F, N, accumulate, cst)  # dx (+)= dh W1^T
