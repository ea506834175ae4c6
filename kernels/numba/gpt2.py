"""numba-cpu kernels of the GPT-2 style in-context model (refimpl.gpt2, SPEC 2.7): the forward, the
MSE gradient and the backward of a chunk of whole prompts, chunks on threads in parallel.

Mirrors refimpl.gpt2.gpt2_forward / gpt2_backward / loss_and_grads (float64: equal to rounding;
float32 computed in float32). kernels/numba/gpt2_host.py builds the buffers and runs the kernels.

Shape legend: B prompts, n = T/2 read-outs per prompt, T tokens, d token width, M = B*T token rows,
R = B*n read-out rows, E model width, nh heads, K = E / nh head size, F MLP width, L blocks,
P parameters, C chunks. A chunk is prompts [b0, b1): token rows [b0 T, b1 T), read-out rows
[b0 n, b1 n). Every linear layer of a chunk is one BLAS product over the chunk's rows (np.dot).
    H = tokens W_in + b_in + pos[:T]                                  (M, E)  the residual stream
    per block l: a_in = LN1(H); qkv = a_in [W_q W_k W_v] + [b_q b_k b_v] (M, 3E); o = heads(qkv)
                 H += o W_p + b_p; m_in = LN2(H); h = m_in W1 + b1; g = gelu(h) (M, F); H += g W2 + b2
    Hx = H at the x positions (R, E); Hf = LN_f(Hx); pred = Hf w_out + b_out (R, 1)
The three attention input products are one, with [W_q W_k W_v] (E, 3E) concatenated by the host.
Only the x positions are read out, so the final LayerNorm runs on those rows alone (its backward
gives 0 on the others, as the oracle's does). Backward: the same steps in reverse.

Kernels (`@njit(cache=True, nogil=True)`, run by gpt2_host on a pool of threads, one chunk per task):
    chunk_forward   refimpl.gpt2.gpt2_forward on one chunk: its activations and predictions
    chunk_backward  refimpl.gpt2.gpt2_backward on one chunk, from d pred (the host makes it: the
                    oracle's mse_backward, or a given one): its own gradient row Gp[c] (P,) and,
                    when asked, d tokens
    sum_chunks      a piece of the gradient vector: each entry the sum of the C rows in chunk order,
                    and the piece's sum of squares (the global norm's, for the clipping)
    adam_piece      a piece of kernels.numba.adam's clipped Adam step, in place
launch shape: C chunks handed to the threads one at a time (dynamic), forward then backward, then
PIECES fixed pieces of the sum, then of Adam. Each chunk has its own scratch (the attention's, the exp's). The
building blocks below are plain `@njit` functions of one chunk: linear_fwd/bwd
(refimpl.layers.linear_*), ln_fwd/bwd (layernorm_*), gelu_fwd/bwd (gelu_*, with
kernels.numba.front's arithmetic), head_fwd/bwd (refimpl.gpt2.causal_attention_* for one prompt
and head). `error_model="numpy"`: a division is the CPU's (as NumPy's), without Python's zero
test, which would keep every loop with a division from vectorising.
Determinism: chunks are fixed by B alone and pieces by P alone, every entry is written by one
chunk, rows are summed in chunk order and the pieces' squares in piece order: the same bits
whatever the thread count. Each thread's BLAS runs on one
thread (gpt2_host.blas_one_thread).
"""
import math

import numpy as np
from numba import njit

from kernels.numba.adam import adam_element
from kernels.numba.ops import (C_GELU_A, C_GELU_C, C_HALF, C_LN_EPS, C_NEG_INF, C_ONE, C_SQRT_K, C_ZERO,
                               MM_FLAGS, NUM_CONSTS, count_as)

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
EXP_DEGREE = 12  # e^r = sum_k r^k / k! for k <= 12: relative error < 2e-16 for |r| <= ln(2) / 2
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
@njit(cache=True, nogil=True, error_model="numpy")
def chunk_forward(b0, b1, tok, pv, off, Wqkv, bqkv, acts, S, W, Ib, Fb, cst):
    """refimpl.gpt2.gpt2_forward on prompts [b0, b1). acts holds one block's buffers per block, or
    one for all (a forward that keeps nothing: block l uses slot l % slots)."""
    H, a_in, xh1, r1, qkv, P, o, m_in, xh2, r2, hh, tt, gg, Hx, Hf, xhf, rf, pred = acts
    T, d = tok.shape[1], tok.shape[2]
    E, F, nh, L, slots = H.shape[1], hh.shape[2], P.shape[2], off.shape[0] - 1, a_in.shape[0]
    K, n = E // nh, T // 2
    ra, rb, xa, xb = b0 * T, b1 * T, b0 * n, b1 * n
    g = off[L]
    Hc, Sc = H[ra:rb], S[ra:rb]  # (m, E)
    linear_fwd(tok[b0:b1].reshape((rb - ra, d)), _mat(pv, g[G_WIN], d, E), pv[g[G_BIN]:g[G_BIN] + E], Hc, Sc, 0)
    pos = _mat(pv, g[G_POS], g[G_POS_ROWS], E)
    for i in range(rb - ra):
        for j in range(E):
            Hc[i, j] += pos[i % T, j]
    for l in range(L):
        q, k = off[l], l % slots
        ln_fwd(Hc, pv[q[O_LN1S]:q[O_LN1S] + E], pv[q[O_LN1O]:q[O_LN1O] + E], a_in[k, ra:rb], xh1[k, ra:rb],
               r1[k, ra:rb], cst)
        linear_fwd(a_in[k, ra:rb], Wqkv[l], bqkv[l], qkv[k, ra:rb], Sc, 0)
        for b in range(b0, b1):
            for h in range(nh):
                head_fwd(qkv[k], P[k, b, h], o[k], b * T, h * K, W, cst)
        linear_fwd(o[k, ra:rb], _mat(pv, q[O_WP], E, E), pv[q[O_BP]:q[O_BP] + E], Hc, Sc, 1)
        ln_fwd(Hc, pv[q[O_LN2S]:q[O_LN2S] + E], pv[q[O_LN2O]:q[O_LN2O] + E], m_in[k, ra:rb], xh2[k, ra:rb],
               r2[k, ra:rb], cst)
        linear_fwd(m_in[k, ra:rb], _mat(pv, q[O_W1], E, F), pv[q[O_B1]:q[O_B1] + F], hh[k, ra:rb], Sc, 0)
        gelu_fwd(hh[k, ra:rb], gg[k, ra:rb], tt[k, ra:rb], Ib, Fb, cst)
        linear_fwd(gg[k, ra:rb], _mat(pv, q[O_W2], F, E), pv[q[O_B2]:q[O_B2] + E], Hc, Sc, 1)
    for i in range(xb - xa):  # the x positions: token 2i of each prompt
        for j in range(E):
            Hx[xa + i, j] = Hc[2 * i, j]
    ln_fwd(Hx[xa:xb], pv[g[G_LNFS]:g[G_LNFS] + E], pv[g[G_LNFO]:g[G_LNFO] + E], Hf[xa:xb], xhf[xa:xb], rf[xa:xb],
           cst)
    linear_fwd(Hf[xa:xb], _mat(pv, g[G_WOUT], E, 1), pv[g[G_BOUT]:g[G_BOUT] + 1], pred[xa:xb], Sc, 0)


@njit(cache=True, nogil=True, error_model="numpy")
def chunk_backward(b0, b1, dpred, tok, pv, off, Wqkv, acts, scratch, dWqkv, dbqkv, W, ds, Gc, dtok, input_grad, cst):
    """refimpl.gpt2.gpt2_backward on prompts [b0, b1): dpred (R, 1) -> this chunk's gradient row
    Gc (P,) (every entry written) and, when input_grad, dtok[b0:b1]. Steps of chunk_forward in reverse."""
    H, a_in, xh1, r1, qkv, P, o, m_in, xh2, r2, hh, tt, gg, Hx, Hf, xhf, rf, pred = acts
    dH, dE, dF, dQKV, dHf, dHx = scratch
    T, d = tok.shape[1], tok.shape[2]
    E, F, nh, L = H.shape[1], hh.shape[2], P.shape[2], off.shape[0] - 1
    K, n = E // nh, T // 2
    ra, rb, xa, xb = b0 * T, b1 * T, b0 * n, b1 * n
    g = off[L]
    # read-out and final LayerNorm: dHf = dpred w_out^T (one term per entry), then d at the x rows
    w_out = pv[g[G_WOUT]:g[G_WOUT] + E]
    for i in range(xa, xb):
        for j in range(E):
            dHf[i, j] = dpred[i, 0] * w_out[j]
    linear_bwd(Hf[xa:xb], _mat(pv, g[G_WOUT], E, 1).T, dpred[xa:xb], dHf[xa:xb], _mat(Gc, g[G_WOUT], E, 1),
               Gc[g[G_BOUT]:g[G_BOUT] + 1], False)
    ln_bwd(dHf[xa:xb], xhf[xa:xb], rf[xa:xb], pv[g[G_LNFS]:g[G_LNFS] + E], dHx[xa:xb], 0,
           Gc[g[G_LNFS]:g[G_LNFS] + E], Gc[g[G_LNFO]:g[G_LNFO] + E], cst)
    dHc, dEc = dH[ra:rb], dE[ra:rb]  # (m, E)
    for i in range(rb - ra):
        for j in range(E):
            dHc[i, j] = dHx[xa + i // 2, j] if i % 2 == 0 else cst[C_ZERO]  # only x positions are read out
    for l in range(L - 1, -1, -1):
        q = off[l]
        # MLP branch: dH -> dg -> dh -> dm_in; LN2 adds its input gradient to dH
        linear_bwd(gg[l, ra:rb], _mat(pv, q[O_W2], F, E).T, dHc, dF[ra:rb], _mat(Gc, q[O_W2], F, E),
                   Gc[q[O_B2]:q[O_B2] + E], True)
        gelu_bwd(dF[ra:rb], hh[l, ra:rb], tt[l, ra:rb], cst)
        linear_bwd(m_in[l, ra:rb], _mat(pv, q[O_W1], E, F).T, dF[ra:rb], dEc, _mat(Gc, q[O_W1], E, F),
                   Gc[q[O_B1]:q[O_B1] + F], True)
        ln_bwd(dEc, xh2[l, ra:rb], r2[l, ra:rb], pv[q[O_LN2S]:q[O_LN2S] + E], dHc, 1,
               Gc[q[O_LN2S]:q[O_LN2S] + E], Gc[q[O_LN2O]:q[O_LN2O] + E], cst)
        # attention branch: dH -> do -> d[q k v] -> da_in; LN1 adds its input gradient to dH
        linear_bwd(o[l, ra:rb], _mat(pv, q[O_WP], E, E).T, dHc, dEc, _mat(Gc, q[O_WP], E, E),
                   Gc[q[O_BP]:q[O_BP] + E], True)
        for b in range(b0, b1):
            for h in range(nh):
                head_bwd(dE, qkv[l], P[l, b, h], dQKV, b * T, h * K, W, ds, cst)
        linear_bwd(a_in[l, ra:rb], Wqkv[l].T, dQKV[ra:rb], dEc, dWqkv, dbqkv, True)  # da_in: the three in one
        for c, (ow, ob) in enumerate(((O_WQ, O_BQ), (O_WK, O_BK), (O_WV, O_BV))):
            Gw = _mat(Gc, q[ow], E, E)
            for i in range(E):
                for j in range(E):
                    Gw[i, j] = dWqkv[i, c * E + j]
                Gc[q[ob] + i] = dbqkv[c * E + i]
        ln_bwd(dEc, xh1[l, ra:rb], r1[l, ra:rb], pv[q[O_LN1S]:q[O_LN1S] + E], dHc, 1,
               Gc[q[O_LN1S]:q[O_LN1S] + E], Gc[q[O_LN1O]:q[O_LN1O] + E], cst)
    Gpos = _mat(Gc, g[G_POS], g[G_POS_ROWS], E)  # pos[:T] is added to every prompt: the chunk's sum
    for t in range(g[G_POS_ROWS]):
        for j in range(E):
            Gpos[t, j] = cst[C_ZERO]  # positions a shorter prompt does not reach stay 0
    for i in range(rb - ra):
        for j in range(E):
            Gpos[i % T, j] += dHc[i, j]
    linear_bwd(tok[b0:b1].reshape((rb - ra, d)), _mat(pv, g[G_WIN], d, E).T, dHc,
               dtok[b0:b1].reshape((rb - ra, d)) if input_grad else dtok[0], _mat(Gc, g[G_WIN], d, E),
               Gc[g[G_BIN]:g[G_BIN] + E], input_grad)


# ------------------------------------------------------------------------------ the gradient's sum, Adam
@njit(cache=True, nogil=True)
def sum_chunks(Gp, grad, sq, piece, npieces):
    """Piece `piece` of npieces of range(P): grad[j] = sum over chunks of Gp[c, j] in chunk order,
    and sq[piece] = the sum of its grad[j]^2 in float64 (a piece of refimpl.optim.global_norm^2)."""
    j0, j1 = _part(piece, npieces, grad.shape[0])
    acc = 0.0
    for j in range(j0, j1):
        s = Gp[0, j]
        for c in range(1, Gp.shape[0]):
            s += Gp[c, j]
        grad[j] = s
        acc += np.float64(s) * np.float64(s)
    sq[piece] = acc


@njit(cache=True, nogil=True)
def adam_piece(p, g, m, v, h, piece, npieces):
    """kernels.numba.adam.adam_kernel on piece `piece` of npieces of the flat vectors: clipping
    (g * h.clip_factor) and Adam in place."""
    j0, j1 = _part(piece, npieces, p.shape[0])
    for i in range(j0, j1):
        adam_element(p, m, v, i, g[i] * h.clip_factor, h)
