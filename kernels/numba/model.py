"""One task through the whole model, forward and backward, for the Numba backends.

Mirrors refimpl/model.py (front end, blocks, per-layer read-outs) and refimpl/attention.py, for
task b only: the CPU backend runs it in a `prange` over chunks of tasks, the CUDA backend in one
thread per task. Everything is `@njit(cache=True)` (a CUDA kernel compiles it as a device function).

Arguments, shared by every function: tok (B, T, D_in) tokens; pv flat parameters; ii, lay, cst, pe
from kernels/numba/layout.py; ws a flat workspace with this task's part at offset w0; G a flat
gradient row (same layout as pv) that the backward ACCUMULATES into.
Linear attention uses the associativity O^h = Q^h (K^h^T V^h) ((K, K) per head instead of (T, S))
where every token is a query, and (Q^h K^h^T) V^h where only one is (the cheaper order then).
Only the query token of the last block reaches a read-out, so the last block computes queries,
outputs, clipping and MLP for that row alone, and its backward starts from that one row: the same
numbers as the oracle's full computation. Linear attention there never forms keys and values
(kernels/numba/query_lsa.py); softmax attention still does, for every key token.
"""
from numba import njit

from kernels.numba.layout import (I_B_AIN, I_B_KT, I_B_MG, I_B_MH, I_B_MIN, I_B_O, I_B_PK, I_B_Q, I_B_R1,
                           I_B_R2, I_B_V, I_B_X, I_B_XC, I_B_XH1, I_B_XH2, I_B_XM, I_CAUSAL, I_CLIP,
                           I_D, I_DF, I_DIN, I_E, I_EMB, I_F, I_FI, I_H, I_IMLP, I_K, I_L, I_LN2,
                           I_MLP, I_P_EMB, I_P_IB1, I_P_IB2, I_P_IW1, I_P_IW2, I_POS, I_PW, I_S, I_T,
                           I_W_DA, I_W_DH, I_W_DK, I_W_DO, I_W_DP, I_W_DQ, I_W_DT, I_W_DU, I_W_DV,
                           I_W_DX, I_W_IG, I_W_IH, I_W_LAYER, I_W_LSTRIDE, I_W_XE, I_W_XF, I_YUP,
                           Y_B1, Y_B2, Y_LN1, Y_LN1O, Y_LN1S, Y_LN2O, Y_LN2S, Y_SOFTMAX, Y_W1, Y_W2,
                           Y_WK, Y_WP, Y_WQ, Y_WV)
from kernels.numba.ops import (C_CLIP, C_INV_B, C_LAM, C_SQRT_K, C_ZERO, copy, fill, layernorm_bwd,
                        layernorm_fwd, mlp_bwd, mlp_fwd, mm_nn, mm_nt, mm_tn)
from kernels.numba.query_lsa import query_lsa_backward, query_lsa_forward
import math

POS_ADD, POS_CONCAT = 1, 2


@njit(cache=True)
def block_base(ii, w0, l):
    return w0 + ii[I_W_LAYER] + l * ii[I_W_LSTRIDE]


@njit(cache=True)
def uses_query_lsa(l, q0, ii, lay):
    """Linear attention read out at the query row alone: kernels/numba/query_lsa.py (rank one)."""
    return lay[l, Y_SOFTMAX] == 0 and q0 == ii[I_T] - 1


# ----------------------------------------------------------------------------------------------
@njit(cache=True)
def front_forward(tok, b, pv, ii, cst, pe, ws, w0):
    """tokens -> [concat encoding] -> [embedding] -> [+ input MLP] -> [+ encoding] = block 0's x."""
    T, DIN, DF, D, PW = ii[I_T], ii[I_DIN], ii[I_DF], ii[I_D], ii[I_PW]
    xf = w0 + ii[I_W_XF]  # (T, DF)
    lead = PW if ii[I_POS] == POS_CONCAT else 0
    for t in range(T):
        for j in range(lead):
            ws[xf + t * DF + j] = pe[t, j]
        for j in range(DIN):
            ws[xf + t * DF + lead + j] = tok[b, t, j]
    x0 = block_base(ii, w0, 0) + ii[I_B_X]  # (T, D)
    if ii[I_EMB] == 1:
        E = ii[I_E]
        xe = w0 + ii[I_W_XE]  # (T, E)
        mm_nn(ws, xf, DF, pv, ii[I_P_EMB], E, ws, xe, E, T, DF, E, 0, cst)
        if ii[I_IMLP] == 1:
            mlp_fwd(ws, xe, T, E, ii[I_FI], pv, ii[I_P_IW1], ii[I_P_IB1], ii[I_P_IW2], ii[I_P_IB2],
                    ws, w0 + ii[I_W_IH], ws, w0 + ii[I_W_IG], ws, x0, 0, cst)  # m (T, E)
            for i in range(T * E):
                ws[x0 + i] = ws[xe + i] + ws[x0 + i]  # x + m
        else:
            copy(ws, xe, ws, x0, T * E)
    else:
        copy(ws, xf, ws, x0, T * DF)
    if ii[I_POS] == POS_ADD:
        for t in range(T):
            for j in range(D):
                ws[x0 + t * D + j] += pe[t, j]


@njit(cache=True)
def layer_attention_forward(l, q0, pv, ii, lay, cst, ws, base, out, o0):
    """Layer l's attention, refimpl.attention.softmax_attention_forward or lsa_forward by
    lay[l, Y_SOFTMAX]: out (T, D) = concat_h(attention) @ W_p, from AIN; caches Q, K, V, P|KV, O.
    Only query rows q0..T-1 are computed (keys and values always use all S key tokens)."""
    T, S, D, H, K = ii[I_T], ii[I_S], ii[I_D], ii[I_H], ii[I_K]
    HK, nr = H * K, T - q0
    ain, q, kt, v = base + ii[I_B_AIN], base + ii[I_B_Q], base + ii[I_B_KT], base + ii[I_B_V]
    pk, o = base + ii[I_B_PK], base + ii[I_B_O]
    mm_nn(ws, ain + q0 * D, D, pv, lay[l, Y_WQ], HK, ws, q + q0 * HK, HK, nr, D, HK, 0, cst)  # Q
    mm_nn(ws, ain, D, pv, lay[l, Y_WK], HK, ws, kt, HK, S, D, HK, 0, cst)  # K (S, HK)
    mm_nn(ws, ain, D, pv, lay[l, Y_WV], HK, ws, v, HK, S, D, HK, 0, cst)  # V (S, HK)
    softmax = lay[l, Y_SOFTMAX] == 1
    if softmax or q0 > 0:  # scores first: (Q^h K^h^T) V^h; for linear attention when few queries
        for h in range(H):
            p = pk + h * T * S  # P^h (T, S), or A^h for linear attention
            mm_nt(ws, q + q0 * HK + h * K, HK, ws, kt + h * K, HK, ws, p + q0 * S, S, nr, K, S, 0, cst)
            for t in range(q0, T if softmax else q0):
                smax = cst[C_ZERO]
                first = True
                for s in range(S):
                    if ii[I_CAUSAL] == 1 and s > t:
                        continue
                    sc = ws[p + t * S + s] / cst[C_SQRT_K]
                    ws[p + t * S + s] = sc
                    if first or sc > smax:
                        smax = sc
                        first = False
                tot = cst[C_ZERO]
                for s in range(S):
                    if ii[I_CAUSAL] == 1 and s > t:
                        ws[p + t * S + s] = cst[C_ZERO]
                    else:
                        e = math.exp(ws[p + t * S + s] - smax)
                        ws[p + t * S + s] = e
                        tot += e
                for s in range(S):
                    ws[p + t * S + s] = ws[p + t * S + s] / tot
            mm_nn(ws, p + q0 * S, S, ws, v + h * K, HK, ws, o + q0 * HK + h * K, HK, nr, S, K, 0,
                  cst)  # O^h = P^h V^h
    else:
        for h in range(H):
            kv = pk + h * K * K  # K^h^T V^h (K, K)
            mm_tn(ws, kt + h * K, HK, ws, v + h * K, HK, ws, kv, K, K, S, K, 0, cst)
            mm_nn(ws, q + q0 * HK + h * K, HK, ws, kv, K, ws, o + q0 * HK + h * K, HK, nr, K, K, 0,
                  cst)  # O^h = Q^h KV^h
    mm_nn(ws, o + q0 * HK, HK, pv, lay[l, Y_WP], D, out, o0 + q0 * D, D, nr, HK, D, 0, cst)


@njit(cache=True)
def layer_forward(l, q0, pv, ii, lay, cst, ws, w0):
    """Block l: x + lam Attn(LN1 x) [y only] -> clip -> + lam MLP(LN2 x); writes block l+1's x.
    Rows q0..T-1 only after the attention's keys and values (q0 = T-1 in the last block: only
    the query token reaches a read-out)."""
    T, D = ii[I_T], ii[I_D]
    nr = T - q0
    base = block_base(ii, w0, l)
    x, ain, xm, xc = base + ii[I_B_X], base + ii[I_B_AIN], base + ii[I_B_XM], base + ii[I_B_XC]
    xn = block_base(ii, w0, l + 1) + ii[I_B_X]
    tmp = w0 + ii[I_W_DT]  # (T, D) the branch output
    lam = cst[C_LAM]
    if lay[l, Y_LN1] == 1:
        layernorm_fwd(ws, x, T, D, pv, lay[l, Y_LN1S], lay[l, Y_LN1O], ws, base + ii[I_B_XH1],
                      ws, base + ii[I_B_R1], ws, ain, cst)
    else:
        copy(ws, x, ws, ain, T * D)
    if uses_query_lsa(l, q0, ii, lay):
        query_lsa_forward(l, pv, ii, lay, cst, ws, base, ws, tmp)
    else:
        layer_attention_forward(l, q0, pv, ii, lay, cst, ws, base, ws, tmp)
    for t in range(q0, T):
        for j in range(D):
            i = t * D + j
            if ii[I_YUP] == 1 and j != D - 1:
                ws[xm + i] = ws[x + i]  # x part frozen
            else:
                ws[xm + i] = ws[x + i] + lam * ws[tmp + i]
    if ii[I_CLIP] == 1:
        c = cst[C_CLIP]
        for i in range(q0 * D, T * D):
            ws[xc + i] = min(max(ws[xm + i], -c), c)
    else:
        copy(ws, xm + q0 * D, ws, xc + q0 * D, nr * D)
    if ii[I_MLP] == 1:
        F = ii[I_F]
        mi = base + ii[I_B_MIN]
        if ii[I_LN2] == 1:
            layernorm_fwd(ws, xc + q0 * D, nr, D, pv, lay[l, Y_LN2S], lay[l, Y_LN2O], ws,
                          base + ii[I_B_XH2] + q0 * D, ws, base + ii[I_B_R2] + q0, ws, mi + q0 * D, cst)
        else:
            copy(ws, xc + q0 * D, ws, mi + q0 * D, nr * D)
        mlp_fwd(ws, mi + q0 * D, nr, D, F, pv, lay[l, Y_W1], lay[l, Y_B1], lay[l, Y_W2], lay[l, Y_B2],
                ws, base + ii[I_B_MH] + q0 * F, ws, base + ii[I_B_MG] + q0 * F, ws, tmp + q0 * D, 0, cst)
        for i in range(q0 * D, T * D):
            ws[xn + i] = ws[xc + i] + lam * ws[tmp + i]
    else:
        copy(ws, xc + q0 * D, ws, xn + q0 * D, nr * D)


@njit(cache=True)
def task_forward(tok, b, pv, ii, lay, cst, pe, ws, w0, rd):
    """Forward of task b; rd[l, b] = -x_l[query, -1] after every application l (SPEC 2.6)."""
    T, D = ii[I_T], ii[I_D]
    front_forward(tok, b, pv, ii, cst, pe, ws, w0)
    L = ii[I_L]
    for l in range(L):
        layer_forward(l, T - 1 if l == L - 1 else 0, pv, ii, lay, cst, ws, w0)
        rd[l, b] = -ws[block_base(ii, w0, l + 1) + ii[I_B_X] + (T - 1) * D + D - 1]


# ----------------------------------------------------------------------------------------------
@njit(cache=True)
def layer_attention_backward(l, q0, pv, ii, lay, cst, ws, w0, base, G, g0, need_dain):
    """softmax_attention_backward or lsa_backward of layer l (layer_attention_forward's caches):
    from da (W_DA rows q0..T-1; the rows above are zero) to the weight gradients and, if
    need_dain, dAIN into W_DU (T, D)."""
    T, S, D, H, K = ii[I_T], ii[I_S], ii[I_D], ii[I_H], ii[I_K]
    HK, nr = H * K, T - q0
    ain, q, kt, v = base + ii[I_B_AIN], base + ii[I_B_Q], base + ii[I_B_KT], base + ii[I_B_V]
    pk, o = base + ii[I_B_PK], base + ii[I_B_O]
    da, do, dq = w0 + ii[I_W_DA], w0 + ii[I_W_DO], w0 + ii[I_W_DQ]
    dk, dv, dp, du = w0 + ii[I_W_DK], w0 + ii[I_W_DV], w0 + ii[I_W_DP], w0 + ii[I_W_DU]
    qo, qd = q0 * HK, q0 * D  # offsets of row q0
    mm_tn(ws, o + qo, HK, ws, da + qd, D, G, g0 + lay[l, Y_WP], D, HK, nr, D, 1, cst)  # dW_p += O^T da
    mm_nt(ws, da + qd, D, pv, lay[l, Y_WP], D, ws, do + qo, HK, nr, D, HK, 0, cst)  # dO = da W_p^T
    softmax = lay[l, Y_SOFTMAX] == 1
    if softmax or q0 > 0:  # the scores path of layer_attention_forward
        for h in range(H):
            p, dph = pk + h * T * S, dp + h * T * S  # (T, S)
            hk = h * K
            mm_nt(ws, do + qo + hk, HK, ws, v + hk, HK, ws, dph + q0 * S, S, nr, K, S, 0, cst)  # dP
            mm_tn(ws, p + q0 * S, S, ws, do + qo + hk, HK, ws, dv + hk, HK, S, nr, K, 0, cst)  # dV
            for t in range(q0, T if softmax else q0):  # dS = P (dP - sum_s dP P) / sqrt(K)
                r = cst[C_ZERO]
                for s in range(S):
                    r += ws[dph + t * S + s] * ws[p + t * S + s]
                for s in range(S):
                    i = t * S + s
                    ws[dph + i] = ws[p + i] * (ws[dph + i] - r) / cst[C_SQRT_K]
            mm_nn(ws, dph + q0 * S, S, ws, kt + hk, HK, ws, dq + qo + hk, HK, nr, S, K, 0, cst)  # dQ
            mm_tn(ws, dph + q0 * S, S, ws, q + qo + hk, HK, ws, dk + hk, HK, S, nr, K, 0, cst)  # dK
    else:
        for h in range(H):
            kv, dkv = pk + h * K * K, dp + h * K * K  # (K, K)
            hk = h * K
            mm_nt(ws, do + qo + hk, HK, ws, kv, K, ws, dq + qo + hk, HK, nr, K, K, 0, cst)  # dQ
            mm_tn(ws, q + qo + hk, HK, ws, do + qo + hk, HK, ws, dkv, K, K, nr, K, 0, cst)  # dKV
            mm_nt(ws, v + hk, HK, ws, dkv, K, ws, dk + hk, HK, S, K, K, 0, cst)  # dK = V dKV^T
            mm_nn(ws, kt + hk, HK, ws, dkv, K, ws, dv + hk, HK, S, K, K, 0, cst)  # dV = K dKV
    mm_tn(ws, ain + qd, D, ws, dq + qo, HK, G, g0 + lay[l, Y_WQ], HK, D, nr, HK, 1, cst)  # dW_q
    mm_tn(ws, ain, D, ws, dk, HK, G, g0 + lay[l, Y_WK], HK, D, S, HK, 1, cst)  # dW_k += C^T dK
    mm_tn(ws, ain, D, ws, dv, HK, G, g0 + lay[l, Y_WV], HK, D, S, HK, 1, cst)  # dW_v += C^T dV
    if need_dain == 1:
        if q0 > 0:
            fill(ws, du, q0 * D, cst[C_ZERO])
        mm_nt(ws, dq + qo, HK, pv, lay[l, Y_WQ], HK, ws, du + qd, D, nr, HK, D, 0, cst)  # queries
        mm_nt(ws, dk, HK, pv, lay[l, Y_WK], HK, ws, du, D, S, HK, D, 1, cst)  # key tokens ...
        mm_nt(ws, dv, HK, pv, lay[l, Y_WV], HK, ws, du, D, S, HK, D, 1, cst)  # ... and values


@njit(cache=True)
def layer_backward(l, q0, pv, ii, lay, cst, ws, w0, G, g0, need_dx):
    """Backward of block l: W_DX holds d(block l+1's x) on entry (zero above row q0) and
    d(block l's x) on exit (for l = 0 only when need_dx)."""
    T, D = ii[I_T], ii[I_D]
    nr = T - q0
    base = block_base(ii, w0, l)
    dx, da, du = w0 + ii[I_W_DX], w0 + ii[I_W_DA], w0 + ii[I_W_DU]
    lam = cst[C_LAM]
    if ii[I_MLP] == 1:
        F = ii[I_F]
        for i in range(q0 * D, T * D):
            ws[da + i] = lam * ws[dx + i]  # d m
        mlp_bwd(ws, da + q0 * D, ws, base + ii[I_B_MIN] + q0 * D, nr, D, F, pv, lay[l, Y_W1],
                lay[l, Y_W2], ws, base + ii[I_B_MH] + q0 * F, ws, base + ii[I_B_MG] + q0 * F, G,
                g0 + lay[l, Y_W1], g0 + lay[l, Y_B1], g0 + lay[l, Y_W2], g0 + lay[l, Y_B2], ws,
                w0 + ii[I_W_DH], ws, du + q0 * D, 0, cst)
        if ii[I_LN2] == 1:
            layernorm_bwd(ws, du + q0 * D, nr, D, pv, lay[l, Y_LN2S], ws, base + ii[I_B_XH2] + q0 * D,
                          ws, base + ii[I_B_R2] + q0, G, g0 + lay[l, Y_LN2S], g0 + lay[l, Y_LN2O], ws,
                          dx + q0 * D, 1, cst)
        else:
            for i in range(q0 * D, T * D):
                ws[dx + i] += ws[du + i]
    if ii[I_CLIP] == 1:
        xm, c = base + ii[I_B_XM], cst[C_CLIP]
        for i in range(q0 * D, T * D):
            if abs(ws[xm + i]) > c:
                ws[dx + i] = cst[C_ZERO]
    for t in range(q0, T):
        for j in range(D):
            i = t * D + j
            if ii[I_YUP] == 1 and j != D - 1:
                ws[da + i] = cst[C_ZERO]
            else:
                ws[da + i] = lam * ws[dx + i]
    # d(attention input) is needed below layer 0, for the front end or dtokens, and for LN1's grads
    need_dain = 1 if (l > 0 or need_dx == 1 or lay[l, Y_LN1] == 1) else 0
    if uses_query_lsa(l, q0, ii, lay):
        query_lsa_backward(l, pv, ii, lay, cst, ws, w0, base, G, g0, need_dain)
    else:
        layer_attention_backward(l, q0, pv, ii, lay, cst, ws, w0, base, G, g0, need_dain)
    if need_dain == 1:
        if lay[l, Y_LN1] == 1:
            layernorm_bwd(ws, du, T, D, pv, lay[l, Y_LN1S], ws, base + ii[I_B_XH1], ws,
                          base + ii[I_B_R1], G, g0 + lay[l, Y_LN1S], g0 + lay[l, Y_LN1O], ws, dx, 1, cst)
        else:
            for i in range(T * D):
                ws[dx + i] += ws[du + i]


@njit(cache=True)
def front_backward(b, pv, ii, cst, ws, w0, G, g0, need_dx, dtok):
    """From d(block 0's x) in W_DX to the front-end gradients and, if need_dx, dtok[b]."""
    T, DIN, DF, PW = ii[I_T], ii[I_DIN], ii[I_DF], ii[I_PW]
    dx, du = w0 + ii[I_W_DX], w0 + ii[I_W_DU]
    src = dx
    if ii[I_EMB] == 1:
        E = ii[I_E]
        xe = w0 + ii[I_W_XE]
        if ii[I_IMLP] == 1:
            mlp_bwd(ws, dx, ws, xe, T, E, ii[I_FI], pv, ii[I_P_IW1], ii[I_P_IW2], ws, w0 + ii[I_W_IH],
                    ws, w0 + ii[I_W_IG], G, g0 + ii[I_P_IW1], g0 + ii[I_P_IB1], g0 + ii[I_P_IW2],
                    g0 + ii[I_P_IB2], ws, w0 + ii[I_W_DH], ws, du, 0, cst)
            for i in range(T * E):
                ws[dx + i] += ws[du + i]  # residual + MLP branch
        mm_tn(ws, w0 + ii[I_W_XF], DF, ws, dx, E, G, g0 + ii[I_P_EMB], E, DF, T, E, 1, cst)
        if need_dx == 1:
            mm_nt(ws, dx, E, pv, ii[I_P_EMB], E, ws, du, DF, T, E, DF, 0, cst)  # (T, DF)
            src = du
    if need_dx == 1:
        lead = PW if ii[I_POS] == POS_CONCAT else 0
        for t in range(T):
            for j in range(DIN):
                dtok[b, t, j] = ws[src + t * DF + lead + j]


@njit(cache=True)
def task_backward(b, dr, pv, ii, lay, cst, ws, w0, G, g0, need_dx, dtok):
    """Backward of task b after task_forward: dr (L, B) read-out gradients; G += parameter grads."""
    T, D = ii[I_T], ii[I_D]
    dx = w0 + ii[I_W_DX]
    fill(ws, dx, T * D, cst[C_ZERO])
    need_x0 = 1 if (need_dx == 1 or ii[I_EMB] == 1) else 0  # d(block 0's x) is used
    for l in range(ii[I_L] - 1, -1, -1):
        ws[dx + (T - 1) * D + D - 1] -= dr[l, b]  # readout[l] = -x[query, -1]
        layer_backward(l, T - 1 if l == ii[I_L] - 1 else 0, pv, ii, lay, cst, ws, w0, G, g0, need_x0)
    if need_x0 == 1:
        front_backward(b, pv, ii, cst, ws, w0, G, g0, need_dx, dtok)


@njit(cache=True)
def task_loss_backward(tok, y, b, pv, ii, lay, cst, pe, ws, w0, rd, dr, G, g0, need_dx, dtok):
    """Forward, the MSE gradient (1/B)(y_hat - y) at the last read-out, backward. Returns (y_hat - y)."""
    L = ii[I_L]
    task_forward(tok, b, pv, ii, lay, cst, pe, ws, w0, rd)
    r = rd[L - 1, b] - y[b]
    for l in range(L - 1):
        dr[l, b] = cst[C_ZERO]
    dr[L - 1, b] = cst[C_INV_B] * r
    task_backward(b, dr, pv, ii, lay, cst, ws, w0, G, g0, need_dx, dtok)
    return r
