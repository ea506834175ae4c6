"""The Numba kernels of the linear-self-attention fast path (host side, algebra: kernels.numba.lsa).

Shape legend: T tokens, D token width, S key tokens, H heads, L applications, Lp parameter sets,
LANES tasks per group. Per head: W_KQ = W_q W_k^T and W_PV = W_v W_p (D, D), shared by all tasks;
A = C^T C (D, D, LANES) per task. A layer is U_h = X W_KQ^h, V_h = U_h A, O = sum_h V_h W_PV^h.

Kernel (`@njit(cache=True, parallel=True)`): `lsa_kernel`, prange over chunks of groups; every
other function here works on one group of LANES tasks. One kernel serves training (the loss and
its parameter gradients) and evaluation (every application's read-out and the input gradient of
the final read-out at the query token), so an evaluation compiles nothing more.
"""
from numba import njit, prange

from kernels.numba.lsa_lanes import LANES, add_at_b, gram, lanes_column, mul_lanes, mul_shared, shared_column


@njit(cache=True)
def load_group(tok, y, b0, X, yl, real):
    """Tasks b0 .. b0+LANES-1 into lanes (zeros beyond B); real[j] = 1 for a task, 0 for padding."""
    B, T, D = tok.shape
    for j in range(LANES):
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
    (Xn = Z when clip = 0). W_KQ, W_PV (H, D, D); U, V (H, T, D, LANES)."""
    T, D = X.shape[0], X.shape[1]
    gram(X, S, A)
    for h in range(W_KQ.shape[0]):
        mul_shared(X, T, W_KQ[h], U[h], False)
        mul_lanes(U[h], T, A, V[h], False)
        mul_shared(V[h], T, W_PV[h], O, h > 0)
    for t in range(T):
        for i in range(D):
            if yup and i < D - 1:
                for j in range(LANES):
                    Z[t, i, j] = X[t, i, j]
            else:
                for j in range(LANES):
                    Z[t, i, j] = X[t, i, j] + lam * O[t, i, j]
            if clip > 0:
                for j in range(LANES):
                    Xn[t, i, j] = min(max(Z[t, i, j], -clip), clip)
            else:
                for j in range(LANES):
                    Xn[t, i, j] = Z[t, i, j]


@njit(cache=True, fastmath={"contract"})
def full_backward(X, S, W_KQ_T, W_PV_T, lam, yup, clip, A, U, V, Z, dX, need_dx, dO, dV, dU, dA,
                  dW_KQ, dW_PV):
    """Backward of full_forward. dX (T, D, LANES): on entry d Xn, on exit d X (when need_dx).
    dW_KQ, dW_PV (H, D, D, LANES) gain this group's parameter-space gradients."""
    T, D = X.shape[0], X.shape[1]
    for t in range(T):
        for i in range(D):
            if clip > 0:
                for j in range(LANES):
                    if abs(Z[t, i, j]) > clip:
                        dX[t, i, j] = 0  # clipped: no gradient (refimpl.layers.clip_backward)
            if yup and i < D - 1:
                for j in range(LANES):
                    dO[t, i, j] = 0  # y_update: the attention output's x part is dropped
            else:
                for j in range(LANES):
                    dO[t, i, j] = lam * dX[t, i, j]
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
                for j in range(LANES):
                    s = dA[i, k, j] + dA[k, i, j]
                    dA[i, k, j] = s
                    dA[k, i, j] = s
        mul_lanes(X, S, dA, dX, True)  # dX[:S] += C (dA + dA^T)


@njit(cache=True, fastmath={"contract"})
def readout_forward(X, S, W_KQ, W_PV, lam, A, U, V, z):
    """The last application, query label only: z = X[T-1, D-1] + lam sum_h (A (W_KQ^h^T q)) .
    W_PV^h[:, -1]; returns nothing, fills A, row 0 of U and V (H, T, D, LANES) with u = q W_KQ^h
    and v = A u, and z (LANES,) (pre-clip)."""
    T, D = X.shape[0], X.shape[1]
    gram(X, S, A)
    for j in range(LANES):
        z[j] = 0
    for h in range(W_KQ.shape[0]):
        u, v = U[h], V[h]  # row 0: (T, D, LANES)
        for k in range(D):  # one column at a time (the blocked products compile far longer)
            shared_column(X, T - 1, W_KQ[h], k, u, 0, False)  # u = q W_KQ^h
        for k in range(D):
            lanes_column(u, 0, A, k, v, 0, False)  # v = u A = A u (A symmetric)
        for k in range(D):
            p = W_PV[h, k, D - 1]
            for j in range(LANES):
                z[j] += v[0, k, j] * p
    for j in range(LANES):
        z[j] = X[T - 1, D - 1, j] + lam * z[j]


@njit(cache=True, fastmath={"contract"})
def readout_backward(X, S, W_KQ_T, W_PV, lam, A, U, V, dz, need_dx, dX, cs, dv, du, dW_KQ, dW_PV):
    """Backward of readout_forward from dz (LANES,), the gradient of the pre-clip query label;
    W_KQ_T (H, D, D) holds W_KQ^h^T; cs (2, LANES), dv and du (1, D, LANES) are scratch. With
    need_dx, dX (T, D, LANES) is overwritten with d X."""
    T, D = X.shape[0], X.shape[1]
    if need_dx:
        dX[...] = 0
        for j in range(LANES):
            dX[T - 1, D - 1, j] = dz[j]  # residual
    for h in range(W_KQ_T.shape[0]):
        u, v = U[h, 0], V[h, 0]  # (D, LANES)
        for k in range(D):
            p = W_PV[h, k, D - 1]
            for j in range(LANES):
                do = lam * dz[j]
                dW_PV[h, k, D - 1, j] += do * v[k, j]  # dW_PV[:, -1] += do v
                dv[0, k, j] = do * p  # dv = do W_PV[:, -1]
        for k in range(D):
            lanes_column(dv, 0, A, k, du, 0, False)  # du = dv A = A dv
        for i in range(D):
            for k in range(D):
                for j in range(LANES):
                    dW_KQ[h, i, k, j] += X[T - 1, i, j] * du[0, k, j]  # dW_KQ += q du^T
        if need_dx:
            for k in range(D):
                shared_column(du, 0, W_KQ_T[h], k, dX, T - 1, True)  # dq += W_KQ du
            # dA = u dv^T: dX[:S] += C (dA + dA^T) = (C u) dv^T + (C dv) u^T
            for s in range(S):
                for j in range(LANES):
                    cs[0, j] = 0
                    cs[1, j] = 0
                for i in range(D):
                    for j in range(LANES):
                        cs[0, j] += X[s, i, j] * u[i, j]
                        cs[1, j] += X[s, i, j] * dv[0, i, j]
                for i in range(D):
                    for j in range(LANES):
                        dX[s, i, j] += cs[0, j] * dv[0, i, j] + cs[1, j] * u[i, j]


@njit(cache=True, fastmath={"contract"})
def readout_loss(X, z, yl, real, clip, inv_b, sq, dz):
    """Squared read-out errors of the group's real tasks into sq (L,) (application l reads out
    -X[l + 1] query label, the last one -clip(z)), and dz (LANES,) = d loss / d z."""
    T, D = X.shape[1], X.shape[2]
    L = sq.shape[0]
    for j in range(LANES):
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
    Lp, H, D = dW_KQ.shape[0], dW_KQ.shape[1], dW_KQ.shape[2]
    for p in range(Lp):
        for h in range(H):
            for i in range(D):
                for k in range(D):
                    s_kq = dW_KQ[p, h, i, k, 0]
                    s_pv = dW_PV[p, h, i, k, 0]
                    for j in range(1, LANES):
                        s_kq += dW_KQ[p, h, i, k, j]
                        s_pv += dW_PV[p, h, i, k, j]
                    row_KQ[p, h, i, k] = s_kq
                    row_PV[p, h, i, k] = s_pv


@njit(cache=True, fastmath={"contract"})
def readout_gradient(X, z, clip, real, b0, RD, dz):
    """Evaluation: the group's read-outs into RD (L, B) (application l reads out -X[l + 1] query
    label, the last one -clip(z)) and dz (LANES,) = d (final read-out) / d z."""
    T, D = X.shape[1], X.shape[2]
    L = RD.shape[0]
    for j in range(LANES):
        if real[j] > 0:
            for l in range(L - 1):
                RD[l, b0 + j] = -X[l + 1, T - 1, D - 1, j]
            RD[L - 1, b0 + j] = -(min(max(z[j], -clip), clip) if clip > 0 else z[j])
            dz[j] = 0 if clip > 0 and abs(z[j]) > clip else -1
        else:
            dz[j] = 0


@njit(cache=True, parallel=True, fastmath={"contract"})
def lsa_kernel(tok, y, W_KQ, W_PV, W_PV_T, W_KQ_T, players, S, lam, yup, clip, inv_b, gpc,
               Xs, Zs, As, Us, Vs, tmp, dA, small, dW_KQ_lanes, dW_PV_lanes, dW_KQ_rows,
               dW_PV_rows, SQ, evaluate, RD, DQ):
    """evaluate = 0 (TRAIN): loss and parameter-space gradients of a linear-attention model over
    all tasks; evaluate = 1 (READOUTS_AND_QUERY_GRADIENT), instead, every application's read-out RD
    (L, B) and the gradient of the final read-out with respect to the query token DQ (B, D) (y
    unused; the gradient rows are scratch); evaluate = 2 (READOUTS): RD alone, no backward.

    tok (B, T, D), y (B,); W_KQ, W_PV, W_PV_T, W_KQ_T (Lp, H, D, D): W_KQ^h, W_PV^h and their
    transposes per parameter set; players (L,) parameter set of each application. Per chunk c
    (workspace leading index c): Xs (L+1, T, D, LANES) layer inputs, Zs (L, T, D, LANES) pre-clip
    values or None for a one-application model (Numba then prunes the deep layers' code, which
    is most of the kernel's first-run compile time), As (L, D, D, LANES), Us/Vs (L, H, T, D, LANES), tmp (4, T, D, LANES), dA (D, D, LANES),
    small (5, max(D, 4), LANES), dW_KQ_lanes/dW_PV_lanes (Lp, H, D, D, LANES) lane accumulators.
    Out: dW_KQ_rows/dW_PV_rows (nch, Lp, H, D, D) chunk rows of d loss / d W_KQ^h and d W_PV^h,
    SQ (nch, L) sums of squared read-out errors per application.
    """
    B = tok.shape[0]
    L = players.shape[0]
    groups = (B + LANES - 1) // LANES
    nch = dW_KQ_rows.shape[0]
    for c in prange(nch):
        X, Ac, U, V, tm, dAc, sm = Xs[c], As[c], Us[c], Vs[c], tmp[c], dA[c], small[c]
        dKQ, dPV = dW_KQ_lanes[c], dW_PV_lanes[c]
        dKQ[...] = 0
        dPV[...] = 0
        SQ[c] = 0
        yl, real, z, dz = sm[0, 0], sm[0, 1], sm[0, 2], sm[0, 3]
        for g in range(c * gpc, min(groups, (c + 1) * gpc)):
            load_group(tok, y, g * LANES, X[0], yl, real)
            if Zs is not None:  # pruned when compiling for one application (Zs None)
                for l in range(L - 1):
                    p = players[l]
                    full_forward(X[l], S, W_KQ[p], W_PV[p], lam, yup, clip, Ac[l], U[l], V[l], tm[0],
                                 Zs[c, l], X[l + 1])
            p = players[L - 1]
            readout_forward(X[L - 1], S, W_KQ[p], W_PV[p], lam, Ac[L - 1], U[L - 1], V[L - 1], z)
            if evaluate > 0:
                readout_gradient(X, z, clip, real, g * LANES, RD, dz)
            else:
                readout_loss(X, z, yl, real, clip, inv_b, SQ[c], dz)
            if evaluate == 2:  # read-outs only: no backward
                continue
            readout_backward(X[L - 1], S, W_KQ_T[p], W_PV[p], lam, Ac[L - 1], U[L - 1], V[L - 1], dz,
                             L > 1 or evaluate > 0, tm[0], sm[1], sm[2:3], sm[3:4], dKQ[p], dPV[p])
            if Zs is not None:
                for l in range(L - 2, -1, -1):
                    p = players[l]
                    full_backward(X[l], S, W_KQ_T[p], W_PV_T[p], lam, yup, clip, Ac[l], U[l], V[l],
                                  Zs[c, l], tm[0], l > 0 or evaluate > 0, tm[1], tm[2], tm[3], dAc, dKQ[p],
                                  dPV[p])
            if evaluate == 1:  # tm[0] holds d (final read-out) / d X[0], the group's tokens
                Dm = tm.shape[2]
                for j in range(LANES):
                    if real[j] > 0:
                        for i in range(Dm):
                            DQ[g * LANES + j, i] = tm[0, tm.shape[1] - 1, i, j]
        sum_lanes(dKQ, dPV, dW_KQ_rows[c], dW_PV_rows[c])
