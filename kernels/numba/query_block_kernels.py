"""The Numba kernel of the one-block fast path (host side and algebra: kernels.numba.query_block).

Shape legend: T tokens, D token width, S key tokens, H heads, K key size, HK = H K, F MLP width,
NL tasks per group (8 in float64, 16 in float32; kernels.numba.lsa_lanes), NW the widest row
(max(D, HK, F, S, 6)). Every per-task vector is a row of lane tuples: V[r, i, :] holds entry i of
row r for the NL tasks of a group, so every product is one packed multiply-add of tuples.

The rows of the workspace V (RW(H), NW, NL), heads h = 0 .. H-1:
    Q q = x_q W_q (HK)          KQ+h W_k^h q^h (D)      P+h scores, then weights (S)
    XB+h sum_s P_s x_s (D)      O o (HK)                Z pre-clip query row (D)
    H1 clipped query row (D)    XH LN2's x-hat (D)      MIN the MLP's input (D)
    HID x W1 + b1 (F)           TH tanh of GELU (F)     A GELU (F)
    SC per lane: 0 rstd, 1 the query label, 2 d loss / d label, 3 target, 4 task (1) or padding (0),
       5 d (MLP output label)
    DH d query row (D)          DM d MLP input (D)      DHID d hidden (F)
    DATT d attention output (D) DO d o (HK)             DQ d q (HK)
    WV+h W_v^h do^h (D)         DP+h d weights, then d scores (S)    XS+h sum_s dscore_s x_s (D)
Lane accumulators (per chunk): GQ, GK, GV (D, HK, NL), GP (HK, D, NL), G1 (D, F, NL) and GVEC
(5, NW, NL): rows b1 (F), W2[:, D-1] (F), ln2 scale (D), ln2 offset (D), b2[D-1] (entry 0).

Kernel (`@njit(cache=True, parallel=True)`): `query_block_kernel`, prange over chunks of groups.
"""
import math

from numba import njit, prange

from kernels.numba.lsa_kernels import load_group
from kernels.numba.lsa_lanes import (add, clip_lanes, fma, fma_scalar, lanes, mul, nlanes, scale, store,
                                     unclipped)
from kernels.numba.lsa_products import shared_column
from kernels.numba.ops import C_LN_EPS, C_ONE, C_ZERO, G_A, G_C, G_HALF, G_ONE, gelu_consts, gelu_tanh

R_Q, R_KQ = 0, 1  # rows of V; the per-head rows are offsets in H (row_layout)


@njit(cache=True, inline="always")
def row_layout(H):
    """(P, XB, O, Z, H1, XH, MIN, HID, TH, A, SC, DH, DM, DHID, DATT, DO, DQ, WV, DP, XS) rows of V."""
    P = R_KQ + H
    XB = P + H
    O = XB + H
    WV = O + 17
    return (P, XB, O, O + 1, O + 2, O + 3, O + 4, O + 5, O + 6, O + 7, O + 8, O + 9, O + 10, O + 11,
            O + 12, O + 13, O + 14, WV, WV + H, WV + 2 * H)


def num_rows(H):
    """RW(H): the rows of V (host side)."""
    return R_KQ + 6 * H + 17


@njit(inline="always", fastmath={"contract"})
def dot_shared_row(W, i, c0, n, V, r, c1):
    """sum_{k < n} W[i, c0 + k] V[r, c1 + k] per lane (a row of a shared matrix times a lane row)."""
    a = scale(lanes(V, r, c1), W[i, c0])
    for k in range(1, n):
        a = fma_scalar(a, lanes(V, r, c1 + k), W[i, c0 + k])
    return a


@njit(inline="always", fastmath={"contract"})
def dot_rows(X, s, V, r, n):
    """sum_{i < n} X[s, i] V[r, i] per lane."""
    a = mul(lanes(X, s, 0), lanes(V, r, 0))
    for i in range(1, n):
        a = fma(a, lanes(X, s, i), lanes(V, r, i))
    return a


@njit(inline="always", fastmath={"contract"})
def weighted_rows(w, r, X, S, D, out, ro):
    """out[ro, i] = sum_{s < S} w[r, s] X[s, i] per lane, i < D."""
    for i in range(D):
        a = mul(lanes(w, r, 0), lanes(X, 0, i))
        for s in range(1, S):
            a = fma(a, lanes(w, r, s), lanes(X, s, i))
        store(out, ro, i, a)


@njit(inline="always", fastmath={"contract"})
def outer_acc(G, c0, A, ra, n, B, rb, b0, m):
    """G[i, c0 + k] += A[ra, i] B[rb, b0 + k] per lane, i < n, k < m."""
    for i in range(n):
        a = lanes(A, ra, i)
        for k in range(m):
            store(G, i, c0 + k, fma(lanes(G, i, c0 + k), a, lanes(B, rb, b0 + k)))


@njit(inline="always", fastmath={"contract"})
def row_acc(G, rg, V, r, n):
    """G[rg, i] += V[r, i] per lane, i < n."""
    for i in range(n):
        store(G, rg, i, add(lanes(G, rg, i), lanes(V, r, i)))


@njit(inline="always", fastmath={"contract"})
def dot_shared_col(W, k, n, V, r):
    """sum_{f < n} V[r, f] W[f, k] per lane (a lane row times a column of a shared matrix)."""
    a = scale(lanes(V, r, 0), W[0, k])
    for f in range(1, n):
        a = fma_scalar(a, lanes(V, r, f), W[f, k])
    return a


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def block_forward(X, S, H, Wq, Wk, Wv, Wp, sc, off, W1, b1, W2, b2, softmax, sqk, lam, yup, clip, mlp,
                  ln, fd, cst, V):
    """The query row of the block for one group: V's forward rows and V[SC, 1], the query label."""
    NL = nlanes(X)
    T, D = X.shape[0], X.shape[1]
    HK, F = Wq.shape[1], W1.shape[1]
    K = HK // H
    P, XB, O, Z, H1, XH, MIN, HID, TH, A, SC = row_layout(H)[:11]
    for c in range(HK):
        shared_column(X, T - 1, Wq, c, V, R_Q, False)  # q = x_q W_q
    for h in range(H):
        for i in range(D):  # W_k^h q^h: the scores x_s . (W_k^h q^h) need no keys
            store(V, R_KQ + h, i, dot_shared_row(Wk, i, h * K, K, V, R_Q, h * K))
        for s in range(S):
            store(V, P + h, s, dot_rows(X, s, V, R_KQ + h, D))
        if softmax:  # refimpl.attention: (q . k_s) / sqrt(K), row max taken off, exp, normalised
            for j in range(NL):
                mx = V[P + h, 0, j] / sqk
                for s in range(S):
                    v = V[P + h, s, j] / sqk
                    V[P + h, s, j] = v
                    mx = v if v > mx else mx
                tot = cst[C_ZERO]
                for s in range(S):
                    e = math.exp(V[P + h, s, j] - mx)
                    V[P + h, s, j] = e
                    tot += e
                for s in range(S):
                    V[P + h, s, j] = V[P + h, s, j] / tot
        weighted_rows(V, P + h, X, S, D, V, XB + h)  # sum_s P_s x_s
        for k in range(K):  # o^h = (sum_s P_s x_s) W_v^h: no values either
            shared_column(V, XB + h, Wv, h * K + k, V, O, False)
    for i in range(D):
        shared_column(V, O, Wp, i, V, Z, False)  # the attention output o W_p, then the residual
        xq = lanes(X, T - 1, i)
        z = xq if yup and i < D - 1 else fma_scalar(xq, lanes(V, Z, i), lam)
        store(V, Z, i, z)
        store(V, H1, i, clip_lanes(z, clip) if clip > 0 else z)
    for j in range(NL):
        V[SC, 1, j] = V[H1, D - 1, j]
    if not mlp:
        return
    if ln:  # refimpl.layers.layernorm_forward of the query row
        for j in range(NL):
            mean = V[H1, 0, j]
            for i in range(1, D):
                mean += V[H1, i, j]
            mean = mean / fd
            var = cst[C_ZERO]
            for i in range(D):
                xc = V[H1, i, j] - mean
                V[XH, i, j] = xc
                var += xc * xc
            rstd = cst[C_ONE] / math.sqrt(var / fd + cst[C_LN_EPS])
            V[SC, 0, j] = rstd
            for i in range(D):
                xh = V[XH, i, j] * rstd
                V[XH, i, j] = xh
                V[MIN, i, j] = xh * sc[i] + off[i]
    else:
        for i in range(D):
            store(V, MIN, i, lanes(V, H1, i))
    for f in range(F):
        shared_column(V, MIN, W1, f, V, HID, False)
        for j in range(NL):
            V[HID, f, j] = V[HID, f, j] + b1[f]
    g = gelu_consts(cst)
    NW = V.shape[1]
    hid, th, act = V[HID].reshape(NW * NL), V[TH].reshape(NW * NL), V[A].reshape(NW * NL)
    for i in range(F * NL):  # one flat loop over the (F, NL) entries: it vectorises
        x = hid[i]
        t = gelu_tanh(x, g)
        th[i] = t
        act[i] = g[G_HALF] * x * (g[G_ONE] + t)
    m = dot_shared_col(W2, D - 1, F, V, A)  # only the label column of the MLP reaches the read-out
    for j in range(NL):
        V[SC, 1, j] = V[SC, 1, j] + lam * (m[j] + b2[D - 1])


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def block_backward(X, S, H, Wq, Wk, Wv, Wp, sc, W1, W2, softmax, sqk, lam, yup, clip, mlp, ln, fd, cst, V,
                   GQ, GK, GV, GP, G1, GVEC):
    """Backward of block_forward from V[SC, 2] (d loss / d query label): the lane accumulators
    gain the group's parameter gradients."""
    NL = nlanes(X)
    T, D = X.shape[0], X.shape[1]
    HK, F = Wq.shape[1], W1.shape[1]
    K = HK // H
    (P, XB, O, Z, H1, XH, MIN, HID, TH, A, SC, DH, DM, DHID, DATT, DO, DQ, WV, DP, XS) = row_layout(H)
    for i in range(D):
        for j in range(NL):
            V[DH, i, j] = V[SC, 2, j] if i == D - 1 else cst[C_ZERO]  # the read-out's residual path
    if mlp:
        for j in range(NL):
            V[SC, 5, j] = lam * V[SC, 2, j]  # d (the MLP output's label)
            GVEC[4, 0, j] += V[SC, 5, j]  # b2[D-1]
        for f in range(F):
            w = W2[f, D - 1]
            for j in range(NL):
                GVEC[1, f, j] += V[A, f, j] * V[SC, 5, j]  # W2[:, D-1]
                V[DHID, f, j] = w * V[SC, 5, j]  # d GELU output
        g = gelu_consts(cst)
        a3 = g[G_A] + g[G_A] + g[G_A]
        NW = V.shape[1]
        hid, th, dhid = V[HID].reshape(NW * NL), V[TH].reshape(NW * NL), V[DHID].reshape(NW * NL)
        for i in range(F * NL):  # times GELU' (refimpl.layers.gelu_backward), one flat loop
            x, t = hid[i], th[i]
            du = g[G_C] * (g[G_ONE] + a3 * (x * x))
            dhid[i] = dhid[i] * (g[G_HALF] * (g[G_ONE] + t) + g[G_HALF] * x * (g[G_ONE] - t * t) * du)
        for f in range(F):
            store(GVEC, 0, f, add(lanes(GVEC, 0, f), lanes(V, DHID, f)))  # b1
        outer_acc(G1, 0, V, MIN, D, V, DHID, 0, F)  # W1 += m_in dhid^T
        for i in range(D):
            store(V, DM, i, dot_shared_row(W1, i, 0, F, V, DHID, 0))  # d m_in = W1 dhid
        if ln:  # refimpl.layers.layernorm_backward
            for j in range(NL):
                m1, m2 = cst[C_ZERO], cst[C_ZERO]
                for i in range(D):
                    dmi, xh = V[DM, i, j], V[XH, i, j]
                    GVEC[2, i, j] += dmi * xh
                    GVEC[3, i, j] += dmi
                    dxh = dmi * sc[i]
                    V[DM, i, j] = dxh
                    m1 += dxh
                    m2 += dxh * xh
                m1, m2 = m1 / fd, m2 / fd
                for i in range(D):
                    V[DH, i, j] += V[SC, 0, j] * (V[DM, i, j] - m1 - V[XH, i, j] * m2)
        else:
            for i in range(D):
                store(V, DH, i, add(lanes(V, DH, i), lanes(V, DM, i)))
    for i in range(D):  # clipping, then the attention's share: lam, the label column alone with y_update
        dz = unclipped(lanes(V, DH, i), lanes(V, Z, i), clip) if clip > 0 else lanes(V, DH, i)
        store(V, DATT, i, scale(dz, cst[C_ZERO]) if yup and i < D - 1 else scale(dz, lam))
    outer_acc(GP, 0, V, O, HK, V, DATT, 0, D)  # W_p += o datt^T
    for c in range(HK):
        store(V, DO, c, dot_shared_row(Wp, c, 0, D, V, DATT, 0))  # do = W_p datt
    for h in range(H):
        for i in range(D):
            store(V, WV + h, i, dot_shared_row(Wv, i, h * K, K, V, DO, h * K))  # W_v^h do^h
        for s in range(S):
            store(V, DP + h, s, dot_rows(X, s, V, WV + h, D))  # d P_s = v_s . do^h
        outer_acc(GV, h * K, V, XB + h, D, V, DO, h * K, K)  # W_v^h += (sum_s P_s x_s) do^h^T
        if softmax:
            for j in range(NL):
                sdp = cst[C_ZERO]
                for s in range(S):
                    sdp += V[DP + h, s, j] * V[P + h, s, j]
                for s in range(S):
                    V[DP + h, s, j] = V[P + h, s, j] * (V[DP + h, s, j] - sdp) / sqk
        weighted_rows(V, DP + h, X, S, D, V, XS + h)  # sum_s dscore_s x_s
        outer_acc(GK, h * K, V, XS + h, D, V, R_Q, h * K, K)  # W_k^h += xs q^h^T
        for k in range(K):
            shared_column(V, XS + h, Wk, h * K + k, V, DQ, False)  # dq^h = xs W_k^h
    outer_acc(GQ, 0, X, T - 1, D, V, DQ, 0, HK)  # W_q += x_q dq^T


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def sum_lanes_into(G, row):
    """row[...] = G summed over its last (lane) axis, in lane order; G (n, m, NL), row (n, m)."""
    for i in range(G.shape[0]):
        for k in range(G.shape[1]):
            a = G[i, k, 0]
            for j in range(1, G.shape[2]):
                a += G[i, k, j]
            row[i, k] = a


@njit(cache=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def query_block_kernel(tok, y, S, H, Wq, Wk, Wv, Wp, sc, off, W1, b1, W2, b2, softmax, sqk, lam, yup,
                       clip, mlp, ln, fd, inv_b, cst, gpc, Xs, Vs, GQ, GK, GV, GP, G1, GVEC, RQ, RK, RV, RP,
                       R1, RVEC, SQ):
    """Loss and parameter gradients of a one-block model over all tasks. tok (B, T, D), y (B,).
    Per chunk c: Xs[c] (T, D, NL) the group's tokens, Vs[c] the rows, G*[c] the lane
    accumulators; out: R*[c] the chunk's gradient rows (lanes summed), SQ[c] its squared errors."""
    NL = nlanes(Xs)
    B = tok.shape[0]
    groups = (B + NL - 1) // NL
    nch = SQ.shape[0]
    SCR = row_layout(H)[10]
    for c in prange(nch):
        X, V = Xs[c], Vs[c]
        GQ[c][...] = 0
        GK[c][...] = 0
        GV[c][...] = 0
        GP[c][...] = 0
        G1[c][...] = 0
        GVEC[c][...] = 0
        sq = cst[C_ZERO]
        for gi in range(c * gpc, min(groups, (c + 1) * gpc)):
            load_group(tok, y, gi * NL, X, V[SCR, 3], V[SCR, 4])
            block_forward(X, S, H, Wq, Wk, Wv, Wp, sc, off, W1, b1, W2, b2, softmax, sqk, lam, yup,
                          clip, mlp, ln, fd, cst, V)
            for j in range(NL):  # read-out -label; d loss / d label = -(read-out - y) / B
                e = -V[SCR, 1, j] - V[SCR, 3, j]
                if V[SCR, 4, j] > 0:
                    sq += e * e
                    V[SCR, 2, j] = -(inv_b * e)
                else:
                    V[SCR, 2, j] = cst[C_ZERO]
            block_backward(X, S, H, Wq, Wk, Wv, Wp, sc, W1, W2, softmax, sqk, lam, yup, clip, mlp, ln,
                           fd, cst, V, GQ[c], GK[c], GV[c], GP[c], G1[c], GVEC[c])
        SQ[c] = sq
        sum_lanes_into(GQ[c], RQ[c])
        sum_lanes_into(GK[c], RK[c])
        sum_lanes_into(GV[c], RV[c])
        sum_lanes_into(GP[c], RP[c])
        sum_lanes_into(G1[c], R1[c])
        sum_lanes_into(GVEC[c], RVEC[c])
