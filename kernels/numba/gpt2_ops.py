"""Building blocks of the numba-cpu GPT-2 kernels (kernels/numba/gpt2.py): plain `@njit` functions
of one chunk of prompts, and the layout of the flat parameter vector and constants they read.

    linear_fwd/bwd   refimpl.layers.linear_forward / linear_backward (one BLAS product, np.dot)
    ln_fwd/bwd       refimpl.layers.layernorm_forward / layernorm_backward, per row
    gelu_fwd/bwd     refimpl.layers.gelu_forward / gelu_backward (tanh form), with an exp built from
                     a polynomial and the exponent bits so that its loops vectorise
    head_fwd/bwd     refimpl.gpt2.causal_attention_forward / backward for one prompt and head
Shapes as in kernels/numba/gpt2.py. `error_model="numpy"`: a division is the CPU's (as NumPy's),
without Python's zero test, which would keep every loop with a division from vectorising.
"""
import math

import numpy as np
from numba import njit

from kernels.numba.ops import (C_GELU_A, C_GELU_C, C_HALF, C_LN_EPS, C_NEG_INF, C_ONE, C_SQRT_K, C_ZERO,
                               EXP_DEGREE, MM_FLAGS, NUM_CONSTS, count_as)

# parameter offsets into the flat vector: `off` (L + 1, 16), row l for block l, row L for the rest
(O_LN1S, O_LN1O, O_WQ, O_BQ, O_WK, O_BK, O_WV, O_BV, O_WP, O_BP, O_LN2S, O_LN2O, O_W1, O_B1, O_W2,
 O_B2) = range(16)
G_WIN, G_BIN, G_POS, G_LNFS, G_LNFO, G_WOUT, G_BOUT = range(7)
G_POS_ROWS = 7  # row L, column 7: the rows of pos (2n, the most tokens)
BLOCK_NAMES = ("ln1.scale", "ln1.offset", "attn.W_q", "attn.b_q", "attn.W_k", "attn.b_k", "attn.W_v", "attn.b_v",
               "attn.W_p", "attn.b_p", "ln2.scale", "ln2.offset", "mlp.W1", "mlp.b1", "mlp.W2", "mlp.b2")
GLOBAL_NAMES = ("read_in.W", "read_in.b", "pos", "ln_f.scale", "ln_f.offset", "read_out.W", "read_out.b")
# the exp of gelu_fwd: constants after kernels.numba.ops' in the constants vector (gpt2_host.constants)
E_LOG2E, E_LN2_HI, E_LN2_LO, E_LIM, E_BIAS, E_SHIFT, E_POLY = range(NUM_CONSTS, NUM_CONSTS + 7)
NUM_GPT2_CONSTS = E_POLY + EXP_DEGREE + 1


@njit(cache=True, error_model="numpy")
def _part(i, count, n):
    """[start, end) of part i of `count` near-equal parts of range(n)."""
    return i * n // count, (i + 1) * n // count


@njit(cache=True, error_model="numpy")
def _mat(v, o, D, N):
    """The (D, N) parameter at offset o of the flat vector v (a view)."""
    return v[o:o + D * N].reshape((D, N))


# ------------------------------------------------------------------------------ linear
@njit(cache=True, error_model="numpy")
def linear_fwd(A, W, b, C, S, accumulate):
    """A (m, D) W (D, N) b (N,): C = A W + b (accumulate 0), or C = C + (A W + b) with the product
    in S (m, N) (accumulate 1: a residual branch)."""
    m, N = C.shape
    if accumulate == 0:
        np.dot(A, W, C)
        for i in range(m):
            for j in range(N):
                C[i, j] += b[j]
    else:
        np.dot(A, W, S)
        for i in range(m):
            for j in range(N):
                C[i, j] = C[i, j] + (S[i, j] + b[j])


@njit(cache=True, error_model="numpy")
def linear_bwd(A, Wt, dY, dX, dW, db, input_grad):
    """A (m, D) the input, Wt = W^T (N, D), dY (m, N): dW = A^T dY (D, N), db = sum of dY's rows,
    and (input_grad) dX = dY W^T (m, D)."""
    m, N = dY.shape
    np.dot(A.T, dY, dW)
    for j in range(N):
        db[j] = dY[0, j]
    for i in range(1, m):
        for j in range(N):
            db[j] += dY[i, j]
    if input_grad:
        np.dot(dY, Wt, dX)


# ------------------------------------------------------------------------------ LayerNorm, GELU
@njit(cache=True, error_model="numpy")
def ln_fwd(X, scale, offset, Y, XH, R, cst):
    """Rows of X (m, N): Y = xhat scale + offset with xhat = (x - mean) rstd kept in XH (m, N) and
    rstd = 1 / sqrt(var + eps) in R (m,)."""
    m, N = X.shape
    n = count_as(N, cst)
    for i in range(m):
        mean = cst[C_ZERO]
        for j in range(N):
            mean += X[i, j]
        mean = mean / n
        var = cst[C_ZERO]
        for j in range(N):
            c = X[i, j] - mean
            var += c * c
        var = var / n
        rstd = cst[C_ONE] / math.sqrt(var + cst[C_LN_EPS])
        R[i] = rstd
        for j in range(N):
            xh = (X[i, j] - mean) * rstd
            XH[i, j] = xh
            Y[i, j] = xh * scale[j] + offset[j]


@njit(cache=True, error_model="numpy")
def ln_bwd(dY, XH, R, scale, dX, accumulate, dscale, doffset, cst):
    """dY (m, N) at the output: dX (+)= rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) with
    dxhat = dY scale; dscale = sum of dY xhat, doffset = sum of dY over the rows."""
    m, N = dY.shape
    n = count_as(N, cst)
    for j in range(N):
        dscale[j] = cst[C_ZERO]
        doffset[j] = cst[C_ZERO]
    for i in range(m):
        m1 = cst[C_ZERO]
        m2 = cst[C_ZERO]
        for j in range(N):
            dy = dY[i, j]
            xh = XH[i, j]
            dscale[j] += dy * xh
            doffset[j] += dy
            dxh = dy * scale[j]
            m1 += dxh
            m2 += dxh * xh
        m1 = m1 / n
        m2 = m2 / n
        rstd = R[i]
        for j in range(N):
            v = rstd * (dY[i, j] * scale[j] - m1 - XH[i, j] * m2)
            if accumulate == 0:
                dX[i, j] = v
            else:
                dX[i, j] += v


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def gelu_fwd(Hh, G, Tt, Ib, Fb, cst):
    """G = gelu(h) and Tt = tanh(u), u = c (h + a h^3) (m, F), as kernels.numba.front.gelu_kernel:
    tanh u = 1 - 2 / (e^2u + 1). e^2u = 2^k e^r with k = round(2u / ln 2), r = 2u - k ln 2 (two
    parts of ln 2, Cody and Waite) and e^r its Taylor polynomial; 2^k is built in the exponent bits
    of Ib (F,) (int64 or int32), read as Fb (F,), the same memory as the data's dtype. So every
    loop vectorises (math.exp does not), and the polynomial's multiply-adds may fuse (FMA). 2u is
    clamped to [-40, 40] first: there tanh is already +-1 to the last bit (e^-40 < eps / 2), in
    float32 and float64."""
    m, F = Hh.shape
    two = cst[C_ONE] + cst[C_ONE]  # in the data's dtype
    bias, shift = np.int64(cst[E_BIAS]), np.int64(cst[E_SHIFT])
    for i in range(m):
        for j in range(F):
            x = Hh[i, j]
            v = two * (cst[C_GELU_C] * (x + cst[C_GELU_A] * (x * x * x)))  # 2u
            v = min(max(v, -cst[E_LIM]), cst[E_LIM])
            k = np.floor(v * cst[E_LOG2E] + cst[C_HALF])
            r = (v - k * cst[E_LN2_HI]) - k * cst[E_LN2_LO]  # |r| <= ln(2) / 2
            p = cst[E_POLY]
            for q in range(E_POLY + 1, E_POLY + EXP_DEGREE + 1):
                p = p * r + cst[q]
            Tt[i, j] = p  # e^r
            Ib[j] = (np.int64(np.int32(k)) + bias) << shift  # the bits of 2^k
        for j in range(F):
            ti = cst[C_ONE] - two / (Tt[i, j] * Fb[j] + cst[C_ONE])  # e^2u = e^r 2^k
            Tt[i, j] = ti
            G[i, j] = cst[C_HALF] * Hh[i, j] * (cst[C_ONE] + ti)


@njit(cache=True, error_model="numpy")
def gelu_bwd(dG, Hh, Tt, cst):
    """dG (m, F) <- dG gelu'(h), with the forward's tanh Tt (kernels.numba.front.gelu_backward_kernel)."""
    m, F = Hh.shape
    a3 = cst[C_GELU_A] + cst[C_GELU_A] + cst[C_GELU_A]
    for i in range(m):
        for j in range(F):
            x = Hh[i, j]
            ti = Tt[i, j]
            du = cst[C_GELU_C] * (cst[C_ONE] + a3 * (x * x))
            dG[i, j] = dG[i, j] * (cst[C_HALF] * (cst[C_ONE] + ti) + cst[C_HALF] * x * (cst[C_ONE] - ti * ti) * du)


# ------------------------------------------------------------------------------ attention, one prompt and head
@njit(cache=True, error_model="numpy")
def _head_in(X, r0, c0, dst):
    """dst (T, K) = X[r0:r0 + T, c0:c0 + K], contiguous for the loops below."""
    T, K = dst.shape
    for t in range(T):
        for k in range(K):
            dst[t, k] = X[r0 + t, c0 + k]


@njit(cache=True, error_model="numpy")
def _head_out(src, X, r0, c0):
    T, K = src.shape
    for t in range(T):
        for k in range(K):
            X[r0 + t, c0 + k] = src[t, k]


@njit(cache=True, error_model="numpy", fastmath=MM_FLAGS)
def head_fwd(QKV, Pm, O, r0, c0, W, cst):
    """One prompt (rows r0...) and head (columns c0 = h K of q, E + c0 of k, 2E + c0 of v):
    Pm (T, T) = softmax_s(q_t . k_s / sqrt(K)) over s <= t (0 for s > t), O_t = sum_s Pm_ts v_s.
    W (7, T, K) scratch."""
    T, E = Pm.shape[0], O.shape[1]
    Q, Kh, V, Oh = W[0, :T], W[1, :T], W[2, :T], W[3, :T]  # (T, K)
    K = Q.shape[1]
    _head_in(QKV, r0, c0, Q)
    _head_in(QKV, r0, E + c0, Kh)
    _head_in(QKV, r0, 2 * E + c0, V)
    for t in range(T):
        mx = cst[C_NEG_INF]
        for s in range(t + 1):
            acc = cst[C_ZERO]
            for k in range(K):
                acc += Q[t, k] * Kh[s, k]
            sc = acc / cst[C_SQRT_K]
            Pm[t, s] = sc
            mx = max(mx, sc)
        tot = cst[C_ZERO]
        for s in range(t + 1):
            e = math.exp(Pm[t, s] - mx)
            Pm[t, s] = e
            tot += e
        for s in range(t + 1):
            Pm[t, s] = Pm[t, s] / tot
        for s in range(t + 1, T):
            Pm[t, s] = cst[C_ZERO]
        for k in range(K):
            Oh[t, k] = cst[C_ZERO]
        for s in range(t + 1):
            p = Pm[t, s]
            for k in range(K):
                Oh[t, k] += p * V[s, k]
    _head_out(Oh, O, r0, c0)


@njit(cache=True, error_model="numpy", fastmath=MM_FLAGS)
def head_bwd(dO, QKV, Pm, dQKV, r0, c0, W, ds, cst):
    """dO at the head's output -> its dq, dk, dv columns of dQKV; W (7, T, K) and ds (T,) scratch.
    For query t: dP_ts = dO_t . v_s, dscore_ts = P_ts (dP_ts - sum_s' dP_ts' P_ts') / sqrt(K),
    dq_t = sum_s dscore_ts k_s, dk_s += dscore_ts q_t, dv_s += P_ts dO_t."""
    T, E = Pm.shape[0], dO.shape[1]
    Q, Kh, V, dOh, dQ, dK, dV = W[0, :T], W[1, :T], W[2, :T], W[3, :T], W[4, :T], W[5, :T], W[6, :T]
    K = Q.shape[1]
    _head_in(QKV, r0, c0, Q)
    _head_in(QKV, r0, E + c0, Kh)
    _head_in(QKV, r0, 2 * E + c0, V)
    _head_in(dO, r0, c0, dOh)
    for s in range(T):
        for k in range(K):
            dK[s, k] = cst[C_ZERO]
            dV[s, k] = cst[C_ZERO]
    for t in range(T):
        dot = cst[C_ZERO]
        for s in range(t + 1):
            acc = cst[C_ZERO]
            for k in range(K):
                acc += dOh[t, k] * V[s, k]
            ds[s] = acc  # dP_ts
            dot += acc * Pm[t, s]
        for k in range(K):
            dQ[t, k] = cst[C_ZERO]
        for s in range(t + 1):  # one array updated per loop: each vectorises on its own
            p = Pm[t, s]
            d = p * (ds[s] - dot) / cst[C_SQRT_K]
            for k in range(K):
                dQ[t, k] += d * Kh[s, k]
            for k in range(K):
                dK[s, k] += d * Q[t, k]
            for k in range(K):
                dV[s, k] += p * dOh[t, k]
    _head_out(dQ, dQKV, r0, c0)
    _head_out(dK, dQKV, r0, E + c0)
    _head_out(dV, dQKV, r0, 2 * E + c0)


# ------------------------------------------------------------------------------ one chunk of prompts
