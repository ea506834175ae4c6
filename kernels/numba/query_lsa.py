"""Linear attention for the query row alone (the last block), forward and backward, per task.

Mirrors refimpl.attention.lsa_forward/lsa_backward restricted to the output row of the query token
t = T-1, which is all that reaches a read-out in the last block. Shape legend: S key tokens, D width,
H heads, K key size; C = AIN[:S] (S, D) the key tokens, q_h (K,) the query of head h.
With one query row, keys and values never need to be formed:
    u_h = W_k^h q_h           (D,)    so that the scores are a_h = K^h q_h = C u_h       (S,)
    z_h = C^T a_h             (D,)    so that o_h = V^h^T a_h = W_v^h^T z_h               (K,)
and the gradients of K^h = C W_k^h and V^h = C W_v^h are rank one (dK^h = dA_h q_h^T,
dV^h = a_h dO_h^T), so their weight gradients are outer products:
    dW_v^h += z_h dO_h^T      dW_k^h += g_h q_h^T   with w_h = W_v^h dO_h, dA_h = C w_h, g_h = C^T dA_h
Cost O(H S D + D H K) per task instead of O(S D H K). Same numbers as the oracle up to rounding.
Every function is `@njit(cache=True)`, so the CUDA backend compiles it as a device function.
"""
from numba import njit

from kernels.numba.layout import (I_B_AIN, I_B_O, I_B_PK, I_B_Q, I_B_U, I_B_Z, I_D, I_H, I_K, I_S, I_T,
                           I_W_DA, I_W_DG, I_W_DO, I_W_DP, I_W_DQ, I_W_DU, I_W_DW, Y_WK, Y_WP, Y_WQ,
                           Y_WV)
from kernels.numba.ops import C_ZERO, fill, mm_nn, mm_nt, mm_tn


@njit(cache=True)
def query_lsa_forward(l, pv, ii, lay, cst, ws, base, out, o0):
    """out[T-1] (D,) = concat_h o_h @ W_p; caches q (B_Q row T-1), a_h (B_PK row T-1 of head h),
    u_h (B_U) and z_h (B_Z), o (B_O row T-1)."""
    T, S, D, H, K = ii[I_T], ii[I_S], ii[I_D], ii[I_H], ii[I_K]
    HK, q0 = H * K, T - 1
    ain = base + ii[I_B_AIN]  # (T, D): rows 0..S-1 are C
    q, o = base + ii[I_B_Q] + q0 * HK, base + ii[I_B_O] + q0 * HK  # (HK,) rows of Q and O
    u, z, pk = base + ii[I_B_U], base + ii[I_B_Z], base + ii[I_B_PK]
    wq, wk, wv = lay[l, Y_WQ], lay[l, Y_WK], lay[l, Y_WV]  # (D, HK) each
    mm_nn(ws, ain + q0 * D, D, pv, wq, HK, ws, q, HK, 1, D, HK, 0, cst)  # q = x_q W_q (HK,)
    for h in range(H):
        hk, uh, zh, ah = h * K, u + h * D, z + h * D, pk + h * T * S + q0 * S
        mm_nt(pv, wk + hk, HK, ws, q + hk, K, ws, uh, 1, D, K, 1, 0, cst)  # u_h = W_k^h q_h (D,)
        mm_nt(ws, ain, D, ws, uh, D, ws, ah, 1, S, D, 1, 0, cst)  # a_h = C u_h (S,)
        mm_tn(ws, ah, 1, ws, ain, D, ws, zh, D, 1, S, D, 0, cst)  # z_h = C^T a_h (D,)
        mm_nn(ws, zh, D, pv, wv + hk, HK, ws, o + hk, HK, 1, D, K, 0, cst)  # o_h = z_h W_v^h (K,)
    mm_nn(ws, o, HK, pv, lay[l, Y_WP], D, out, o0 + q0 * D, D, 1, HK, D, 0, cst)  # (D,)


@njit(cache=True)
def query_lsa_backward(l, pv, ii, lay, cst, ws, w0, base, G, g0, need_dain):
    """From da (W_DA row T-1) to the weight gradients (accumulated into G) and, if need_dain,
    dAIN (T, D) into W_DU (rows S..T-2 zero: tokens that are neither keys nor the query)."""
    T, S, D, H, K = ii[I_T], ii[I_S], ii[I_D], ii[I_H], ii[I_K]
    HK, q0 = H * K, T - 1
    ain = base + ii[I_B_AIN]  # (T, D)
    q, o = base + ii[I_B_Q] + q0 * HK, base + ii[I_B_O] + q0 * HK  # (HK,)
    u, z, pk = base + ii[I_B_U], base + ii[I_B_Z], base + ii[I_B_PK]
    da, do, dq = w0 + ii[I_W_DA] + q0 * D, w0 + ii[I_W_DO], w0 + ii[I_W_DQ]  # (D,) (HK,) (HK,)
    dw, dg, dsc, du = w0 + ii[I_W_DW], w0 + ii[I_W_DG], w0 + ii[I_W_DP], w0 + ii[I_W_DU]
    wk, wv = lay[l, Y_WK], lay[l, Y_WV]
    gk, gv = g0 + wk, g0 + wv
    mm_tn(ws, o, HK, ws, da, D, G, g0 + lay[l, Y_WP], D, HK, 1, D, 1, cst)  # dW_p += o da^T
    mm_nt(ws, da, D, pv, lay[l, Y_WP], D, ws, do, HK, 1, D, HK, 0, cst)  # dO = da W_p^T (HK,)
    for h in range(H):
        hk, zh, wh, gh, dah = h * K, z + h * D, dw + h * D, dg + h * D, dsc + h * S
        mm_tn(ws, zh, D, ws, do + hk, HK, G, gv + hk, HK, D, 1, K, 1, cst)  # dW_v^h += z_h dO_h^T
        mm_nt(ws, do + hk, HK, pv, wv + hk, HK, ws, wh, D, 1, K, D, 0, cst)  # w_h = W_v^h dO_h
        mm_nt(ws, ain, D, ws, wh, D, ws, dah, 1, S, D, 1, 0, cst)  # dA_h = C w_h (S,)
        mm_tn(ws, dah, 1, ws, ain, D, ws, gh, D, 1, S, D, 0, cst)  # g_h = C^T dA_h (D,)
        mm_nn(ws, gh, D, pv, wk + hk, HK, ws, dq + hk, HK, 1, D, K, 0, cst)  # dq_h = g_h W_k^h
        mm_tn(ws, gh, D, ws, q + hk, HK, G, gk + hk, HK, D, 1, K, 1, cst)  # dW_k^h += g_h q_h^T
    mm_tn(ws, ain + q0 * D, D, ws, dq, HK, G, g0 + lay[l, Y_WQ], HK, D, 1, HK, 1, cst)  # dW_q
    if need_dain == 1:
        fill(ws, du, T * D, cst[C_ZERO])
        for h in range(H):  # key tokens: dC = dA_h u_h^T + a_h w_h^T
            ah = pk + h * T * S + q0 * S
            mm_nn(ws, dsc + h * S, 1, ws, u + h * D, D, ws, du, D, S, 1, D, 1, cst)
            mm_nn(ws, ah, 1, ws, dw + h * D, D, ws, du, D, S, 1, D, 1, cst)
        mm_nt(ws, dq, HK, pv, lay[l, Y_WQ], HK, ws, du + q0 * D, D, 1, HK, D, 1, cst)  # the query
