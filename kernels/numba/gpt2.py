"""numba-cpu for the GPT-2 style in-context model (refimpl.gpt2, SPEC 2.7): forward, backward and
the loss gradient on all B*T tokens at once.

Mirrors refimpl.gpt2.gpt2_forward / gpt2_backward / loss_and_grads (float64: equal to rounding;
float32 computed in float32). The host side (the order of the steps, the buffers) is in
kernels/numba/gpt2_host.py; this file holds the kernels it calls.

Shape legend: B prompts, T tokens per prompt, M = B*T token rows, R = B*T/2 read-out rows (the x
positions), E model width, nh heads, K = E / nh head size, F = 4E MLP width, N a product's
output width. Every linear layer is one product over all rows, split into row blocks.

Kernels (`@njit(cache=True, parallel=True)`; launch shape: `prange` over row blocks, row chunks or
(prompt, head) pairs; the host hands the iterations out one at a time):
    linear_forward_kernel      C = A W + b, or C += A W + b (a residual branch)   refimpl.layers.linear_forward
                               prange over nblk row blocks, each one BLAS product (np.dot)
    linear_backward_kernel     dW = A^T dY and db = sum of dY's rows, in nch row chunks summed in
                               chunk order; dX = dY W^T in nblk row blocks       refimpl.layers.linear_backward
    layernorm_forward_kernel   Y = xhat * scale + offset, xhat and rstd kept      refimpl.layers.layernorm_forward
    layernorm_backward_kernel  dX (+)= ..., dscale and doffset in nch chunks     refimpl.layers.layernorm_backward
    attention_forward_kernel   causal softmax P and P V per (prompt, head)        refimpl.gpt2.causal_attention_forward
    attention_backward_kernel  dQ, dK, dV per (prompt, head)                      refimpl.gpt2.causal_attention_backward
The GELU is kernels.numba.front's (gelu_kernel, gelu_backward_kernel), element blocks in parallel.
Determinism: every row block, chunk and (prompt, head) is fixed by the shapes alone, each output
entry is written by one iteration, and partial sums are added in chunk order: the same bits
whatever the number of threads. The BLAS products run one per thread (gpt2_host sets the BLAS
that Numba calls to one thread).
"""
import math

import numpy as np
from numba import get_thread_id, njit, prange

from kernels.numba.ops import C_LN_EPS, C_NEG_INF, C_ONE, C_SQRT_K, C_ZERO, MM_FLAGS, count_as


@njit(cache=True)
def _rows(i, count, M):
    """Rows [r0, r1) of part i of `count` near-equal parts of M rows (non-empty when count <= M)."""
    return i * M // count, (i + 1) * M // count


# ------------------------------------------------------------------------------ linear
@njit(cache=True, parallel=True)
def linear_forward_kernel(A, W, b, C, S, accumulate, nblk):
    """A (M, D) W (D, N) b (N,) or (0,): accumulate 0: C = A W + b; 1: C = C + (A W + b) with the
    product in the scratch S (M, N)."""
    M, N = A.shape[0], W.shape[1]
    nb = b.shape[0]
    for blk in prange(nblk):
        r0, r1 = _rows(blk, nblk, M)
        if accumulate == 0:
            np.dot(A[r0:r1], W, C[r0:r1])  # (rows, N)
            if nb:
                for i in range(r0, r1):
                    for j in range(N):
                        C[i, j] += b[j]
        else:
            np.dot(A[r0:r1], W, S[r0:r1])  # (rows, N)
            for i in range(r0, r1):
                for j in range(N):
                    C[i, j] = C[i, j] + (S[i, j] + b[j])


@njit(cache=True, parallel=True)
def linear_backward_kernel(A, Wt, dY, dX, P, dW, Pb, db, nblk):
    """A (M, D) the layer's input, Wt (N, D) = W^T, dY (M, N): dW (D, N) = A^T dY from the
    partials P (nch, D, N) of nch row chunks; db (N,) from the partials Pb (nch, N) (db of size 0:
    no bias); dX (M, D) = dY W^T in nblk row blocks (nblk 0: no input gradient)."""
    M, D, N = A.shape[0], A.shape[1], dY.shape[1]
    nch = P.shape[0]
    nb = db.shape[0]
    for task in prange(nch + nblk):
        if task < nch:
            r0, r1 = _rows(task, nch, M)
            np.dot(A[r0:r1].T, dY[r0:r1], P[task])  # (D, N)
            if nb:
                for j in range(N):
                    Pb[task, j] = dY[r0, j]
                for i in range(r0 + 1, r1):
                    for j in range(N):
                        Pb[task, j] += dY[i, j]
        else:
            r0, r1 = _rows(task - nch, nblk, M)
            np.dot(dY[r0:r1], Wt, dX[r0:r1])  # (rows, D)
    for i in prange(D):
        for j in range(N):
            s = P[0, i, j]
            for c in range(1, nch):
                s += P[c, i, j]
            dW[i, j] = s
    for j in range(nb):
        s = Pb[0, j]
        for c in range(1, nch):
            s += Pb[c, j]
        db[j] = s


# ------------------------------------------------------------------------------ LayerNorm
@njit(cache=True, parallel=True)
def layernorm_forward_kernel(X, scale, offset, Y, XH, R, nblk, cst):
    """Rows of X (M, N): Y = xhat * scale + offset, xhat = (x - mean) rstd kept in XH (M, N),
    rstd = 1 / sqrt(var + eps) in R (M,)."""
    M, N = X.shape
    n = count_as(N, cst)
    for blk in prange(nblk):
        r0, r1 = _rows(blk, nblk, M)
        for i in range(r0, r1):
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


@njit(cache=True, parallel=True)
def layernorm_backward_kernel(dY, XH, R, scale, dX, accumulate, Pg, dscale, doffset, cst):
    """dY (M, N) at the LayerNorm's output: dX (M, N) = (accumulate 1: dX +) rstd (dxhat -
    mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dY scale; dscale = sum of dY xhat and
    doffset = sum of dY over rows, from the partials Pg (nch, 2, N) of nch row chunks."""
    M, N = dY.shape
    nch = Pg.shape[0]
    n = count_as(N, cst)
    for c in prange(nch):
        r0, r1 = _rows(c, nch, M)
        for j in range(N):
            Pg[c, 0, j] = cst[C_ZERO]
            Pg[c, 1, j] = cst[C_ZERO]
        for i in range(r0, r1):
            m1 = cst[C_ZERO]
            m2 = cst[C_ZERO]
            for j in range(N):
                dy = dY[i, j]
                xh = XH[i, j]
                Pg[c, 0, j] += dy * xh
                Pg[c, 1, j] += dy
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
    for j in range(N):
        s, o = Pg[0, 0, j], Pg[0, 1, j]
        for c in range(1, nch):
            s += Pg[c, 0, j]
            o += Pg[c, 1, j]
        dscale[j] = s
        doffset[j] = o


# ------------------------------------------------------------------------------ attention
@njit(cache=True)
def _head_in(X, r0, c0, dst):
    """dst (T, K) = X[r0:r0 + T, c0:c0 + K]: one head's rows, contiguous for the loops below."""
    T, K = dst.shape
    for t in range(T):
        for k in range(K):
            dst[t, k] = X[r0 + t, c0 + k]


@njit(cache=True)
def _head_out(src, X, r0, c0):
    """X[r0:r0 + T, c0:c0 + K] = src (T, K)."""
    T, K = src.shape
    for t in range(T):
        for k in range(K):
            X[r0 + t, c0 + k] = src[t, k]


@njit(cache=True, parallel=True, fastmath=MM_FLAGS)
def attention_forward_kernel(QKV, P, O, Ws, cst):
    """QKV (M, 3E) = [q | k | v] with biases, P (B, nh, T, T), O (M, E); Ws (threads, 7, T, K)
    scratch. Per (prompt b, head h): P[b, h, t, s] = softmax_s(q_t . k_s / sqrt(K)) over s <= t
    (0 for s > t), O_t = sum_s P_ts v_s."""
    B, nh, T = P.shape[0], P.shape[1], P.shape[2]
    E = O.shape[1]
    K = E // nh
    for task in prange(B * nh):
        b, h = task // nh, task % nh
        W = Ws[get_thread_id()]
        Q, Kh, V, Oh, Pm = W[0, :T], W[1, :T], W[2, :T], W[3, :T], P[b, h]  # (T, K), (T, T)
        _head_in(QKV, b * T, h * K, Q)
        _head_in(QKV, b * T, E + h * K, Kh)
        _head_in(QKV, b * T, 2 * E + h * K, V)
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
        _head_out(Oh, O, b * T, h * K)


@njit(cache=True, parallel=True, fastmath=MM_FLAGS)
def attention_backward_kernel(dO, QKV, P, dQKV, Ws, Wr, cst):
    """dO (M, E) at the heads' output -> dQKV (M, 3E) = [dq | dk | dv]; Ws (threads, 7, T, K) and
    Wr (threads, T) scratch. Per (b, h) and query t: dP_ts = dO_t . v_s, dscore_ts = P_ts (dP_ts -
    sum_s' dP_ts' P_ts') / sqrt(K), dq_t = sum_s dscore_ts k_s, dk_s += dscore_ts q_t, dv_s += P_ts dO_t."""
    B, nh, T = P.shape[0], P.shape[1], P.shape[2]
    E = dO.shape[1]
    K = E // nh
    for task in prange(B * nh):
        b, h = task // nh, task % nh
        W, ds = Ws[get_thread_id()], Wr[get_thread_id()]  # ds (T,): dP_t, then dscore_t
        Q, Kh, V, dOh, dQ, dK, dV = W[0, :T], W[1, :T], W[2, :T], W[3, :T], W[4, :T], W[5, :T], W[6, :T]
        Pm = P[b, h]  # (T, T)
        _head_in(QKV, b * T, h * K, Q)
        _head_in(QKV, b * T, E + h * K, Kh)
        _head_in(QKV, b * T, 2 * E + h * K, V)
        _head_in(dO, b * T, h * K, dOh)
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
            for s in range(t + 1):
                p = Pm[t, s]
                d = p * (ds[s] - dot) / cst[C_SQRT_K]
                for k in range(K):
                    dQ[t, k] += d * Kh[s, k]
                    dK[s, k] += d * Q[t, k]
                    dV[s, k] += p * dOh[t, k]
        _head_out(dQ, dQKV, b * T, h * K)
        _head_out(dK, dQKV, b * T, E + h * K)
        _head_out(dV, dQKV, b * T, 2 * E + h * K)


KERNELS = (linear_forward_kernel, linear_backward_kernel, layernorm_forward_kernel, layernorm_backward_kernel,
           attention_forward_kernel, attention_backward_kernel)
