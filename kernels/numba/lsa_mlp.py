"""The MLP of the linear-attention lane kernel (kernels.numba.lsa_kernels), and its last
application's read-out when there is one.

Shape legend as kernels.numba.lsa: T tokens, D token width, S key tokens, H heads, F MLP width,
NL tasks per group. With an MLP (and no LayerNorm), a block is
    Z = X + lam O,  Xc = clip(Z),  hid = Xc W1 + b1,  a = gelu(hid),  X' = Xc + lam (a W2 + b2)
(refimpl.block). Per task the MLP is two products with shared weights, so it runs on the lane
products of kernels.numba.lsa_products (mul_shared, add_at_b) for every token of a deep layer and for
the query row alone in the last application, whose read-out is the query label of X' (no clip
after the MLP). GELU and its derivative run as flat loops over the (rows, F, NL) entries, which
vectorise. The last application needs the whole query row of its attention output here (the MLP
mixes every column into the label), so its backward starts from a D-vector, not the label alone.
"""
from numba import njit

from kernels.numba.lsa_lanes import (add, clip_lanes, fma, fma_scalar, lanes, mul, nlanes, scale, store,
                                     unclipped)
from kernels.numba.lsa_products import add_at_b, check_lanes, lanes_column, mul_shared, shared_column
from kernels.numba.ops import G_A, G_C, G_HALF, G_ONE, gelu_tanh

OPTS = {"cache": True, "fastmath": {"contract"}, "error_model": "numpy"}


@njit(**OPTS)
def mlp_forward(Xc, rows, W1, b1, W2, b2, lam, HID, TH, ACT, Xout, g):
    """Xout[t] = Xc[t] + lam (gelu(Xc[t] W1 + b1) W2 + b2) for t < rows; keeps hid and tanh
    (HID, TH (rows, F, NL)) for the backward; ACT is scratch. g = ops.gelu_consts(cst)."""
    NL = nlanes(Xc)
    D, F = W1.shape[0], W1.shape[1]
    check_lanes(Xc, HID, Xout)
    mul_shared(Xc, rows, W1, HID, False)
    for t in range(rows):
        for f in range(F):
            for j in range(NL):
                HID[t, f, j] = HID[t, f, j] + b1[f]
    _gelu(HID, TH, ACT, rows, g)
    mul_shared(ACT, rows, W2, Xout, False)
    for t in range(rows):
        for i in range(D):
            for j in range(NL):
                Xout[t, i, j] = Xc[t, i, j] + lam * (Xout[t, i, j] + b2[i])


@njit(**OPTS)
def _gelu(HID, TH, ACT, rows, g):
    """TH = tanh part of GELU(HID), ACT = GELU(HID) (refimpl.layers.gelu_forward), flat."""
    n = rows * HID.shape[1] * HID.shape[2]
    h, th, a = HID.reshape(HID.size), TH.reshape(TH.size), ACT.reshape(ACT.size)
    for i in range(n):
        x = h[i]
        t = gelu_tanh(x, g)
        th[i] = t
        a[i] = g[G_HALF] * x * (g[G_ONE] + t)


@njit(**OPTS)
def mlp_backward(Xc, rows, W1T, W2T, lam, HID, TH, ACT, dX, dM, dHID, dW1, db1, dW2, db2, g):
    """Backward of mlp_forward. dX (rows, D, NL): on entry d Xout, on exit d Xc (the residual and
    the MLP's share). The lane accumulators dW1 (D, F, NL), db1 (1, F, NL), dW2 (F, D, NL),
    db2 (1, D, NL) gain the group's gradients; ACT, dM, dHID are scratch."""
    NL = nlanes(Xc)
    D, F = W2T.shape[0], W2T.shape[1]
    for t in range(rows):
        for i in range(D):
            d = scale(lanes(dX, t, i), lam)  # d (a W2 + b2)
            store(dM, t, i, d)
            store(db2, 0, i, add(lanes(db2, 0, i), d))
    _gelu(HID, TH, ACT, rows, g)  # a again, the same bits
    add_at_b(ACT, dM, rows, dW2)  # dW2 += a^T dm
    mul_shared(dM, rows, W2T, dHID, False)  # da = dm W2^T
    a3 = g[G_A] + g[G_A] + g[G_A]
    n = rows * F * NL
    h, th, dh = HID.reshape(HID.size), TH.reshape(TH.size), dHID.reshape(dHID.size)
    for i in range(n):  # times GELU' (refimpl.layers.gelu_backward)
        x, t = h[i], th[i]
        du = g[G_C] * (g[G_ONE] + a3 * (x * x))
        dh[i] = dh[i] * (g[G_HALF] * (g[G_ONE] + t) + g[G_HALF] * x * (g[G_ONE] - t * t) * du)
    for t in range(rows):
        for f in range(F):
            store(db1, 0, f, add(lanes(db1, 0, f), lanes(dHID, t, f)))
    add_at_b(Xc, dHID, rows, dW1)  # dW1 += Xc^T dhid
    mul_shared(dHID, rows, W1T, dX, True)  # d Xc = d Xout + dhid W1^T


@njit(**OPTS)
def readout_row_forward(X, W_PV, lam, yup, clip, V, Zq, Xcq):
    """After kernels.numba.lsa_kernels.readout_forward (which leaves v_h = A (W_KQ^h^T q) in row 0
    of V[h]): the query row Zq (1, D, NL) = x_q + lam sum_h v_h W_PV^h (the label column alone
    with y_update) and Xcq = clip(Zq), the MLP's input."""
    T, D = X.shape[0], X.shape[1]
    for h in range(W_PV.shape[0]):
        for i in range(D):
            shared_column(V[h], 0, W_PV[h], i, Zq, 0, h > 0)
    for i in range(D):
        xq = lanes(X, T - 1, i)
        z = xq if yup and i < D - 1 else fma_scalar(xq, lanes(Zq, 0, i), lam)
        store(Zq, 0, i, z)
        store(Xcq, 0, i, clip_lanes(z, clip) if clip > 0 else z)


@njit(**OPTS)
def readout_row_backward(X, S, W_KQ_T, W_PV_T, lam, yup, clip, A, U, V, Zq, dq, need_dx, dX, dO, dv, du,
                         dW_KQ, dW_PV):
    """Backward of readout_row_forward and of the attention's query row from dq (1, D, NL), the
    gradient of Xcq: dW_KQ, dW_PV (H, D, D, NL) gain the group's share; with need_dx, dX (T, D, NL)
    is overwritten with d X. dO, dv, du (1, D, NL) are scratch."""
    T, D = X.shape[0], X.shape[1]
    if need_dx:
        dX[...] = 0
    for i in range(D):
        d = unclipped(lanes(dq, 0, i), lanes(Zq, 0, i), clip) if clip > 0 else lanes(dq, 0, i)
        if need_dx:
            store(dX, T - 1, i, d)  # residual
        store(dO, 0, i, scale(d, lam - lam) if yup and i < D - 1 else scale(d, lam))
    for h in range(W_KQ_T.shape[0]):
        v = V[h]  # row 0: v_h
        for k in range(D):  # dW_PV^h += v dO^T, dv = W_PV^h dO
            vk = lanes(v, 0, k)
            for i in range(D):
                store(dW_PV[h], k, i, fma(lanes(dW_PV[h], k, i), vk, lanes(dO, 0, i)))
            shared_column(dO, 0, W_PV_T[h], k, dv, 0, False)
        query_head_backward(X, S, W_KQ_T[h], A, U[h], dv, du, dW_KQ[h], need_dx, dX)


@njit(inline="always", fastmath={"contract"})
def query_head_backward(X, S, W_KQ_T_h, A, Uh, dv, du, dW_KQ_h, need_dx, dX):
    """The read-out's attention backward for head h from dv (1, D, NL), the gradient of
    v_h = A u_h (row 0 of Uh is u_h = W_KQ^h^T q): du = A dv, dW_KQ^h += q du^T and, with need_dx,
    d q += W_KQ^h du and dX[:S] += C (dA + dA^T) = (C u) dv^T + (C dv) u^T (dA = u dv^T). Shared by
    both read-outs (lsa_kernels.readout_backward, readout_row_backward)."""
    T, D = X.shape[0], X.shape[1]
    check_lanes(X, A, Uh)
    check_lanes(dv, du, dW_KQ_h)
    check_lanes(dX, dX, dX)
    for k in range(D):
        lanes_column(dv, 0, A, k, du, 0, False)  # du = dv A = A dv (A symmetric)
    for i in range(D):  # dW_KQ += q du^T
        q = lanes(X, T - 1, i)
        for k in range(D):
            store(dW_KQ_h, i, k, fma(lanes(dW_KQ_h, i, k), q, lanes(du, 0, k)))
    if need_dx:
        for k in range(D):
            shared_column(du, 0, W_KQ_T_h, k, dX, T - 1, True)  # dq += W_KQ du
        for s in range(S):  # lane tuples: c0 = x_s . u, c1 = x_s . dv
            c0, c1 = mul(lanes(X, s, 0), lanes(Uh, 0, 0)), mul(lanes(X, s, 0), lanes(dv, 0, 0))
            for i in range(1, D):
                x = lanes(X, s, i)
                c0, c1 = fma(c0, x, lanes(Uh, 0, i)), fma(c1, x, lanes(dv, 0, i))
            for i in range(D):
                store(dX, s, i, add(lanes(dX, s, i), fma(mul(c1, lanes(Uh, 0, i)), c0, lanes(dv, 0, i))))
