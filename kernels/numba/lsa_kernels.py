"""The Numba kernels of the linear-self-attention fast path (host side, algebra: kernels.numba.lsa).

Shape legend: T tokens, D token width, S key tokens, H heads, L applications, Lp parameter sets,
NL tasks per group. Per head: W_KQ = W_q W_k^T and W_PV = W_v W_p (D, D), shared by all tasks;
A = C^T C (D, D, NL) per task. A layer is U_h = X W_KQ^h, V_h = U_h A, O = sum_h V_h W_PV^h.

Kernel (`@njit(cache=True, parallel=True)`): `lsa_kernel`, prange over chunks of groups; every
other function here works on one group of NL tasks. One kernel serves training (the loss and
its parameter gradients) and evaluation (every application's read-out and the input gradient of
the final read-out at the query token), so an evaluation compiles nothing more.
"""
from numba import njit, prange

from kernels.numba.lsa_lanes import add, clip_lanes, fma_scalar, lanes, nlanes, scale, store, unclipped
from kernels.numba.lsa_products import (add_at_b, check_lanes, gram, lanes_column, mul_lanes, mul_shared,
                                        shared_column)
from kernels.numba.lsa_mlp import (mlp_backward, mlp_forward, query_head_backward, readout_row_backward,
                                   readout_row_forward)
from kernels.numba.ops import gelu_consts


@njit(cache=True)
def load_group(tok, y, b0, X, yl, real):
    """Tasks b0 .. b0+NL-1 into lanes (zeros beyond B); real[j] = 1 for a task, 0 for padding."""
    NL = nlanes(X)  # tasks per group: 8 in float64, 16 in float32
    B, T, D = tok.shape
    for j in range(NL):
        b = b0 + j
        if b < B:
            for t in range(T):
                for i in range(D):
                    X[t, i, j] = tok[b, t, i]
            yl[j] = y[b]
            real[j] = 1
        else:
            for t in range(T):
                for i in range(D):
                    X[t, i, j] = 0
            yl[j] = 0
            real[j] = 0


@njit(cache=True, fastmath={"contract"})
def full_forward(X, S, W_KQ, W_PV, lam, yup, clip, A, U, V, O, Z, Xn):
    """One application that updates every token: A, U_h = X W_KQ^h, V_h = U_h A,
    O = sum_h V_h W_PV^h, Z = X + lam O (label column only with y_update), Xn = clip(Z)
    (Xn = Z when clip = 0). W_KQ, W_PV (H, D, D); U, V (H, T, D, NL)."""
    T, D = X.shape[0], X.shape[1]
    check_lanes(X, Z, Xn)
    check_lanes(O, A, X)
    gram(X, S, A)
    for h in range(W_KQ.shape[0]):
        mul_shared(X, T, W_KQ[h], U[h], False)
        mul_lanes(U[h], T, A, V[h], False)
        mul_shared(V[h], T, W_PV[h], O, h > 0)
    for t in range(T):  # lane tuples: packed adds and clips
        for i in range(D):
            z = lanes(X, t, i) if yup and i < D - 1 else fma_scalar(lanes(X, t, i), lanes(O, t, i), lam)
            store(Z, t, i, z)
            store(Xn, t, i, clip_lanes(z, clip) if clip > 0 else z)


@njit(cache=True, fastmath={"contract"})
def full_backward(X, S, W_KQ_T, W_PV_T, lam, yup, clip, A, U, V, Z, dX, need_dx, dO, dV, dU, dA,
                  dW_KQ, dW_PV):
    """Backward of full_forward. dX (T, D, NL): on entry d Xn, on exit d X (when need_dx).
    dW_KQ, dW_PV (H, D, D, NL) gain this group's parameter-space gradients."""
    NL = nlanes(X)  # tasks per group: 8 in float64, 16 in float32
    T, D = X.shape[0], X.shape[1]
    check_lanes(X, Z, dX)
    check_lanes(dO, dA, X)
    for t in range(T):
        for i in range(D):
            d = lanes(dX, t, i)
            if clip > 0:  # clipped: no gradient (refimpl.layers.clip_backward)
                d = unclipped(d, lanes(Z, t, i), clip)
                store(dX, t, i, d)
            if yup and i < D - 1:
                for j in range(NL):
                    dO[t, i, j] = 0  # y_update: the attention output's x part is dropped
            else:
                store(dO, t, i, scale(d, lam))
    if need_dx:
        dA[...] = 0
    for h in range(W_KQ_T.shape[0]):
        mul_shared(dO, T, W_PV_T[h], dV, False)  # dV = dO W_PV^T
        add_at_b(V[h], dO, T, dW_PV[h])  # dW_PV += V^T dO
        mul_lanes(dV, T, A, dU, False)  # dU = dV A (A symmetric)
        add_at_b(X, dU, T, dW_KQ[h])  # dW_KQ += X^T dU
        if need_dx:
            add_at_b(U[h], dV, T, dA)  # dA += U^T dV
            mul_shared(dU, T, W_KQ_T[h], dX, True)  # dX += dU W_KQ^T
    if need_dx:
        for i in range(D):
            for k in range(i, D):
                a = add(lanes(dA, i, k), lanes(dA, k, i))
                store(dA, i, k, a)
                store(dA, k, i, a)
        mul_lanes(X, S, dA, dX, True)  # dX[:S] += C (dA + dA^T)


@njit(cache=True, fastmath={"contract"})
def readout_forward(X, S, W_KQ, W_PV, lam, A, U, V, z):
    """The last application, query label only: z = X[T-1, D-1] + lam sum_h (A (W_KQ^h^T q)) .
    W_PV^h[:, -1]; returns nothing, fills A, row 0 of U and V (H, T, D, NL) with u = q W_KQ^h
    and v = A u, and z (NL,) (pre-clip)."""
    NL = nlanes(X)  # tasks per group: 8 in float64, 16 in float32
    T, D = X.shape[0], X.shape[1]
    gram(X, S, A)
    for j in range(NL):
        z[j] = 0
    for h in range(W_KQ.shape[0]):
        u, v = U[h], V[h]  # row 0: (T, D, NL)
        check_lanes(u, v, X)
        for k in range(D):  # one column at a time (the blocked products compile far longer)
            shared_column(X, T - 1, W_KQ[h], k, u, 0, False)  # u = q W_KQ^h
        for k in range(D):
            lanes_column(u, 0, A, k, v, 0, False)  # v = u A = A u (A symmetric)
        for k in range(D):
            p = W_PV[h, k, D - 1]
            for j in range(NL):
                z[j] += v[0, k, j] * p
    for j in range(NL):
        z[j] = X[T - 1, D - 1, j] + lam * z[j]


@njit(cache=True, fastmath={"contract"})
def readout_backward(X, S, W_KQ_T, W_PV, lam, A, U, V, dz, need_dx, dX, dv, du, dW_KQ, dW_PV):
    """Backward of readout_forward from dz (NL,), the gradient of the pre-clip query label;
    W_KQ_T (H, D, D) holds W_KQ^h^T; dv and du (1, D, NL) are scratch. With
    need_dx, dX (T, D, NL) is overwritten with d X."""
    NL = nlanes(X)  # tasks per group: 8 in float64, 16 in float32
    T, D = X.shape[0], X.shape[1]
    check_lanes(dv, du, dX)
    if need_dx:
        dX[...] = 0
        for j in range(NL):
            dX[T - 1, D - 1, j] = dz[j]  # residual
    for h in range(W_KQ_T.shape[0]):
        v = V[h, 0]  # (D, NL)
        for k in range(D):
            p = W_PV[h, k, D - 1]
            for j in range(NL):
                do = lam * dz[j]
                dW_PV[h, k, D - 1, j] += do * v[k, j]  # dW_PV[:, -1] += do v
                dv[0, k, j] = do * p  # dv = do W_PV[:, -1]
        query_head_backward(X, S, W_KQ_T[h], A, U[h], dv, du, dW_KQ[h], need_dx, dX)


@njit(cache=True, fastmath={"contract"})
def readout_loss(X, z, yl, real, clip, inv_b, sq, dz):
    """Squared read-out errors of the group's real tasks into sq (L,) (application l reads out
    -X[l + 1] query label, the last one -clip(z)), and dz (NL,) = d loss / d z."""
    NL = nlanes(X)  # tasks per group: 8 in float64, 16 in float32
    T, D = X.shape[1], X.shape[2]
    L = sq.shape[0]
    for j in range(NL):
        zc = min(max(z[j], -clip), clip) if clip > 0 else z[j]
        e = -zc - yl[j]  # read-out - target
        if real[j] > 0:
            for l in range(L - 1):
                el = -X[l + 1, T - 1, D - 1, j] - yl[j]
                sq[l] += el * el
            sq[L - 1] += e * e
            # d loss / d readout = e / B; readout = -clip(z)
            if clip > 0 and abs(z[j]) > clip:
                dz[j] = 0
            else:
                dz[j] = -(inv_b * e)
        else:
            dz[j] = 0


@njit(cache=True, fastmath={"contract"})
def sum_lanes(dW_KQ, dW_PV, row_KQ, row_PV):
    """row_KQ = dW_KQ summed over lanes in lane order (Lp, H, D, D); the same for W_PV."""
    NL = nlanes(dW_KQ)  # tasks per group: 8 in float64, 16 in float32
    Lp, H, D = dW_KQ.shape[0], dW_KQ.shape[1], dW_KQ.shape[2]
    for p in range(Lp):
        for h in range(H):
            for i in range(D):
                for k in range(D):
                    s_kq = dW_KQ[p, h, i, k, 0]
                    s_pv = dW_PV[p, h, i, k, 0]
                    for j in range(1, NL):
                        s_kq += dW_KQ[p, h, i, k, j]
                        s_pv += dW_PV[p, h, i, k, j]
                    row_KQ[p, h, i, k] = s_kq
                    row_PV[p, h, i, k] = s_pv


@njit(cache=True)
def sum_lanes_last(G, row):
    """row = G summed over its last (lane) axis in lane order: G (Lp, n, m, NL), row (Lp, n, m)."""
    for p in range(G.shape[0]):
        for i in range(G.shape[1]):
            for k in range(G.shape[2]):
                a = G[p, i, k, 0]
                for j in range(1, G.shape[3]):
                    a += G[p, i, k, j]
                row[p, i, k] = a


@njit(cache=True, fastmath={"contract"})
def readout_gradient(X, z, clip, real, b0, RD, dz):
    """Evaluation: the group's read-outs into RD (L, B) (application l reads out -X[l + 1] query
    label, the last one -clip(z)) and dz (NL,) = d (final read-out) / d z."""
    NL = nlanes(X)  # tasks per group: 8 in float64, 16 in float32
    T, D = X.shape[1], X.shape[2]
    L = RD.shape[0]
    for j in range(NL):
        if real[j] > 0:
            for l in range(L - 1):
                RD[l, b0 + j] = -X[l + 1, T - 1, D - 1, j]
            RD[L - 1, b0 + j] = -(min(max(z[j], -clip), clip) if clip > 0 else z[j])
            dz[j] = 0 if clip > 0 and abs(z[j]) > clip else -1
        else:
            dz[j] = 0


@njit(cache=True, parallel=True, fastmath={"contract"}, error_model="numpy")
def lsa_kernel(tok, y, W_KQ, W_PV, W_PV_T, W_KQ_T, players, S, lam, yup, clip, inv_b, gpc,
               Xs, Zs, As, Us, Vs, tmp, dA, small, dW_KQ_lanes, dW_PV_lanes, dW_KQ_rows,
               dW_PV_rows, SQ, evaluate, RD, DQ, HIDs, mw, mws, cst):
    """evaluate = 0 (TRAIN): loss and parameter-space gradients of a linear-attention model over
    all tasks; evaluate = 1 (READOUTS_AND_QUERY_GRADIENT), instead, every application's read-out RD
    (L, B) and the gradient of the final read-out with respect to the query token DQ (B, D) (y
    unused; the gradient rows are scratch); evaluate = 2 (READOUTS): RD alone, no backward.

    tok (B, T, D), y (B,); W_KQ, W_PV, W_PV_T, W_KQ_T (Lp, H, D, D): W_KQ^h, W_PV^h and their
    transposes per parameter set; players (L,) parameter set of each application. Per chunk c
    (workspace leading index c): Xs (L+1, T, D, NL) layer inputs, Zs (L, T, D, NL) pre-clip
    values or None for a one-application model (Numba then prunes the deep layers' code, which
    is most of the kernel's first-run compile time), As (L, D, D, NL), Us/Vs (L, H, T, D, NL), tmp (4, T, D, NL), dA (D, D, NL),
    small (3, max(D, 4), NL), dW_KQ_lanes/dW_PV_lanes (Lp, H, D, D, NL) lane accumulators.
    Out: dW_KQ_rows/dW_PV_rows (nch, Lp, H, D, D) chunk rows of d loss / d W_KQ^h and d W_PV^h,
    SQ (nch, L) sums of squared read-out errors per application.
    MLP (kernels.numba.lsa_mlp): HIDs (nch, L, T, F, NL) its hidden values, or None without an MLP
    (Numba then drops its code); mw = (W1 (Lp, D, F), b1 (Lp, F), W2 (Lp, F, D), b2 (Lp, D),
    W1^T, W2^T); mws = (TH like HIDs, Xc (nch, L, T, D, NL) the MLP inputs, ACT and dHID
    (nch, T, F, NL), dM (nch, T, D, NL), QR (nch, 3, D, NL) the last query row before clipping,
    after it and after the MLP, lane accumulators of W1, b1, W2, b2 (nch, Lp, D, F, NL),
    (nch, Lp, 1, F, NL), (nch, Lp, F, D, NL), (nch, Lp, 1, D, NL), and their rows without NL).
    cst: kernels.numba.layout.build_constants (GELU's).
    """
    NL = nlanes(Xs)  # tasks per group: 8 in float64, 16 in float32
    B = tok.shape[0]
    L = players.shape[0]
    groups = (B + NL - 1) // NL
    nch = dW_KQ_rows.shape[0]
    g_mlp = gelu_consts(cst)
    for c in prange(nch):
        X, Ac, U, V, tm, dAc, sm = Xs[c], As[c], Us[c], Vs[c], tmp[c], dA[c], small[c]
        dKQ, dPV = dW_KQ_lanes[c], dW_PV_lanes[c]
        dKQ[...] = 0
        dPV[...] = 0
        SQ[c] = 0
        if HIDs is not None:
            for a in (mws[6][c], mws[7][c], mws[8][c], mws[9][c]):
                a[...] = 0
        yl, real, z, dz = sm[0, 0], sm[0, 1], sm[0, 2], sm[0, 3]
        clip_out = clip if HIDs is None else clip - clip  # the read-out is clipped only without an MLP
        for g in range(c * gpc, min(groups, (c + 1) * gpc)):
            load_group(tok, y, g * NL, X[0], yl, real)
            if Zs is not None:  # pruned when compiling for one application (Zs None)
                for l in range(L - 1):
                    p = players[l]
                    if HIDs is None:
                        full_forward(X[l], S, W_KQ[p], W_PV[p], lam, yup, clip, Ac[l], U[l], V[l], tm[0],
                                     Zs[c, l], X[l + 1])
                    else:
                        full_forward(X[l], S, W_KQ[p], W_PV[p], lam, yup, clip, Ac[l], U[l], V[l], tm[0],
                                     Zs[c, l], mws[1][c, l])
                        mlp_forward(mws[1][c, l], X.shape[1], mw[0][p], mw[1][p], mw[2][p], mw[3][p], lam,
                                    HIDs[c, l], mws[0][c, l], mws[2][c], X[l + 1], g_mlp)
            p = players[L - 1]
            readout_forward(X[L - 1], S, W_KQ[p], W_PV[p], lam, Ac[L - 1], U[L - 1], V[L - 1], z)
            if HIDs is not None:  # the query row through clipping and the MLP: its label is the read-out
                QR = mws[5][c]
                readout_row_forward(X[L - 1], W_PV[p], lam, yup, clip, V[L - 1], QR[0:1], QR[1:2])
                mlp_forward(QR[1:2], 1, mw[0][p], mw[1][p], mw[2][p], mw[3][p], lam, HIDs[c, L - 1],
                            mws[0][c, L - 1], mws[2][c], QR[2:3], g_mlp)
                for j in range(NL):
                    z[j] = QR[2, QR.shape[1] - 1, j]
            if evaluate > 0:
                readout_gradient(X, z, clip_out, real, g * NL, RD, dz)
            else:
                readout_loss(X, z, yl, real, clip_out, inv_b, SQ[c], dz)
            if evaluate == 2:  # read-outs only: no backward
                continue
            if HIDs is None:
                readout_backward(X[L - 1], S, W_KQ_T[p], W_PV[p], lam, Ac[L - 1], U[L - 1], V[L - 1], dz,
                                 L > 1 or evaluate > 0, tm[0], sm[1:2], sm[2:3], dKQ[p], dPV[p])
            else:
                QR, dq = mws[5][c], tm[2][0:1]
                dq[...] = 0
                for j in range(NL):
                    dq[0, dq.shape[1] - 1, j] = dz[j]
                mlp_backward(QR[1:2], 1, mw[4][p], mw[5][p], lam, HIDs[c, L - 1], mws[0][c, L - 1], mws[2][c],
                             dq, mws[4][c], mws[3][c], mws[6][c, p], mws[7][c, p], mws[8][c, p],
                             mws[9][c, p], g_mlp)
                readout_row_backward(X[L - 1], S, W_KQ_T[p], W_PV_T[p], lam, yup, clip, Ac[L - 1], U[L - 1],
                                     V[L - 1], QR[0:1], dq, L > 1 or evaluate > 0, tm[0], tm[1][0:1], sm[1:2],
                                     sm[2:3], dKQ[p], dPV[p])
            if Zs is not None:
                for l in range(L - 2, -1, -1):
                    p = players[l]
                    if HIDs is not None:  # tm[0]: d X[l + 1] in, d (MLP input) out
                        mlp_backward(mws[1][c, l], X.shape[1], mw[4][p], mw[5][p], lam, HIDs[c, l],
                                     mws[0][c, l], mws[2][c], tm[0], mws[4][c], mws[3][c], mws[6][c, p],
                                     mws[7][c, p], mws[8][c, p], mws[9][c, p], g_mlp)
                    full_backward(X[l], S, W_KQ_T[p], W_PV_T[p], lam, yup, clip, Ac[l], U[l], V[l],
                                  Zs[c, l], tm[0], l > 0 or evaluate > 0, tm[1], tm[2], tm[3], dAc, dKQ[p],
                                  dPV[p])
            if evaluate == 1:  # tm[0] holds d (final read-out) / d X[0], the group's tokens
                Dm = tm.shape[2]
                for j in range(NL):
                    if real[j] > 0:
                        for i in range(Dm):
                            DQ[g * NL + j, i] = tm[0, tm.shape[1] - 1, i, j]
        sum_lanes(dKQ, dPV, dW_KQ_rows[c], dW_PV_rows[c])
        if HIDs is not None:
            sum_lanes_last(mws[6][c], mws[10][c])
            sum_lanes_last(mws[7][c], mws[11][c])
            sum_lanes_last(mws[8][c], mws[12][c])
            sum_lanes_last(mws[9][c], mws[13][c])
