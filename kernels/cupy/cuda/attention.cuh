// attention.cuh -- one task's multi-head self-attention, linear (SPEC 2.1) or softmax (SPEC 2.2),
// forward and backward, by the lanes of one warp on shared-memory buffers.
// Mirrors refimpl/attention.py lsa_forward/backward and softmax_attention_forward/backward.
// Layouts (row-major): X (T, D); Q (T, HK); Kt, V (S, HK); P (H, T, S) scores or probabilities;
// O (T, HK); U = O W_p (T, D). Weights (in, out): W_q, W_k, W_v (D, HK); W_p (HK, D).
// Query rows: only rows t >= q0 of Q, P, O, U (forward) and of dO, dP, dQ (backward) are computed
// (q0 = 0: all). The last layer of a model needs only its query row (q0 = T - 1): the keys and
// values are full, every query-side product is one row, and the backward takes dU = 0 on the
// rows it skips (true there: only the query's label reaches the loss).
// query_lsa_forward/backward: the query row of LINEAR attention alone in rank-one form (the same
// algebra as kernels/numba/query_lsa.py): the keys and values are never formed, only vectors of
// length D, S and K per head.
#pragma once
#include "common.cuh"

struct AttnDims {
    int T, D, H, K, S;  // tokens, width, heads, key size, keys (the first S tokens)
    int softmax;        // 0: linear attention, 1: softmax over keys with scores / sqrt(K)
    int causal;         // softmax only: query t sees keys s <= t
    int q0;             // first query row computed (0: all T rows)
};

template <typename real>
HD void attention_forward(int ln, int nl, const AttnDims& a, const real* X,
                          const real* Wq, const real* Wk, const real* Wv, const real* Wp,
                          real* Q, real* Kt, real* V, real* P, real* O, real* U) {
    const int HK = a.H * a.K, T = a.T, S = a.S, K = a.K, q0 = a.q0, TQ = a.T - a.q0;
    warp_matmul<real>(ln, nl, TQ, HK, a.D, X + q0 * a.D, a.D, 1, Wq, HK, 1, Q + q0 * HK, HK, false);  // Q = X W_q
    warp_matmul<real>(ln, nl, S, HK, a.D, X, a.D, 1, Wk, HK, 1, Kt, HK, false);  // K = C W_k
    warp_matmul<real>(ln, nl, S, HK, a.D, X, a.D, 1, Wv, HK, 1, V, HK, false);   // V = C W_v
    warp_sync();
    for (int h = 0; h < a.H; ++h)  // scores^h = Q^h K^h^T (T, S), rows q0..
        warp_matmul<real>(ln, nl, TQ, S, K, Q + q0 * HK + h * K, HK, 1, Kt + h * K, 1, HK,
                          P + h * T * S + q0 * S, S, false);
    warp_sync();
    if (a.softmax) {
        const real sq = (real)sqrt((double)K);
        for (int r = ln; r < a.H * TQ; r += nl) {
            const int h = r / TQ, t = q0 + r % TQ;
            real* row = P + (h * T + t) * S;
            const int n = a.causal ? (t + 1 < S ? t + 1 : S) : S;  // visible keys
            real mx = row[0] / sq;
            for (int s = 0; s < n; ++s) { row[s] = row[s] / sq; mx = row[s] > mx ? row[s] : mx; }
            real sum = real(0);
            for (int s = 0; s < n; ++s) { row[s] = exp(row[s] - mx); sum += row[s]; }
            for (int s = 0; s < n; ++s) row[s] = row[s] / sum;
            for (int s = n; s < S; ++s) row[s] = real(0);
        }
        warp_sync();
    }
    for (int h = 0; h < a.H; ++h)  // O^h = P^h V^h (T, K), rows q0..
        warp_matmul<real>(ln, nl, TQ, K, S, P + h * T * S + q0 * S, S, 1, V + h * K, HK, 1,
                          O + q0 * HK + h * K, HK, false);
    warp_sync();
    warp_matmul<real>(ln, nl, TQ, a.D, HK, O + q0 * HK, HK, 1, Wp, a.D, 1, U + q0 * a.D, a.D, false);  // U = O W_p
    warp_sync();
}

// dU (T, D) -> dXin (T, D); adds this task's weight gradients to gWq, gWk, gWv (D, HK), gWp (HK, D).
template <typename real>
HD void attention_backward(int ln, int nl, const AttnDims& a, const real* X,
                           const real* Wq, const real* Wk, const real* Wv, const real* Wp,
                           const real* Q, const real* Kt, const real* V, const real* P, const real* O,
                           const real* dU, real* dO, real* dP, real* dQ, real* dK, real* dV,
                           real* gWq, real* gWk, real* gWv, real* gWp, real* dXin) {
    const int HK = a.H * a.K, T = a.T, S = a.S, K = a.K, D = a.D, q0 = a.q0, TQ = a.T - a.q0;
    const real* Oq = O + q0 * HK;
    const real* dUq = dU + q0 * D;
    real* dOq = dO + q0 * HK;
    warp_matmul<real>(ln, nl, HK, D, TQ, Oq, 1, HK, dUq, D, 1, gWp, D, true);   // dW_p += O^T dU
    warp_matmul<real>(ln, nl, TQ, HK, D, dUq, D, 1, Wp, 1, D, dOq, HK, false);  // dO = dU W_p^T
    warp_sync();
    for (int h = 0; h < a.H; ++h) {
        const real* Pq = P + h * T * S + q0 * S;
        warp_matmul<real>(ln, nl, TQ, S, K, dOq + h * K, HK, 1, V + h * K, 1, HK, dP + h * T * S + q0 * S,
                          S, false);                                                  // dP = dO V^T
        warp_matmul<real>(ln, nl, S, K, TQ, Pq, 1, S, dOq + h * K, HK, 1, dV + h * K, HK, false);  // dV = P^T dO
    }
    warp_sync();
    if (a.softmax) {  // dS = P (dP - sum_s dP P) / sqrt(K); masked keys have P = 0
        const real sq = (real)sqrt((double)K);
        for (int r = ln; r < a.H * TQ; r += nl) {
            const int row = (r / TQ) * T + q0 + r % TQ;
            const real* p = P + row * S;
            real* g = dP + row * S;
            real dot = real(0);
            for (int s = 0; s < S; ++s) dot += g[s] * p[s];
            for (int s = 0; s < S; ++s) g[s] = (p[s] * (g[s] - dot)) / sq;
        }
        warp_sync();
    }
    for (int h = 0; h < a.H; ++h) {
        const real* dPq = dP + h * T * S + q0 * S;
        warp_matmul<real>(ln, nl, TQ, K, S, dPq, S, 1, Kt + h * K, HK, 1, dQ + q0 * HK + h * K, HK, false);
        warp_matmul<real>(ln, nl, S, K, TQ, dPq, 1, S, Q + q0 * HK + h * K, HK, 1, dK + h * K, HK, false);
    }
    warp_sync();
    warp_matmul<real>(ln, nl, D, HK, TQ, X + q0 * D, 1, D, dQ + q0 * HK, HK, 1, gWq, HK, true);  // dW_q += X^T dQ
    warp_matmul<real>(ln, nl, D, HK, S, X, 1, D, dK, HK, 1, gWk, HK, true);  // dW_k += C^T dK
    warp_matmul<real>(ln, nl, D, HK, S, X, 1, D, dV, HK, 1, gWv, HK, true);  // dW_v += C^T dV
    for (int e = ln; e < T * D; e += nl) {  // dX = dQ W_q^T (query rows) + dK W_k^T + dV W_v^T (keys)
        const int t = e / D, i = e % D;
        real acc = real(0);
        if (t >= q0)
            for (int j = 0; j < HK; ++j) acc += dQ[t * HK + j] * Wq[i * HK + j];
        if (t < S) {
            real kv = real(0);
            for (int j = 0; j < HK; ++j) kv += dK[t * HK + j] * Wk[i * HK + j];
            real vv = real(0);
            for (int j = 0; j < HK; ++j) vv += dV[t * HK + j] * Wv[i * HK + j];
            acc = acc + kv + vv;
        }
        dXin[e] = acc;
    }
    warp_sync();
}

// ----------------------------------------------------------------------------------------------
// The query row (q0 = T - 1) of linear attention in rank-one form. C = X[:S] (S, D) the key
// tokens (the query among them when S = T), q = x_q W_q (HK,) the query row; per head h:
//   u_h = W_k^h q_h (D,)   so that the scores a_h = K^h q_h = C u_h       (S,)
//   z_h = C^T a_h   (D,)   so that o_h = V^h^T a_h = W_v^h^T z_h           (K,)
// then U[q0] = o W_p. Writes q (row q0 of Q), a_h (row q0 of P's head h), o (row q0 of O),
// U[q0] (D,) and u, z (H, D); rows t < q0 are left as they are. Same numbers as
// attention_forward's query row up to rounding.
template <typename real>
HD void query_lsa_forward(int ln, int nl, const AttnDims& a, const real* X, const real* Wq,
                          const real* Wk, const real* Wv, const real* Wp, real* Q, real* P, real* O,
                          real* U, real* u, real* z) {
    const int HK = a.H * a.K, D = a.D, S = a.S, K = a.K, TS = a.T * a.S, q0 = a.T - 1;
    real* q = Q + q0 * HK;  // (HK,)
    real* aq = P + q0 * S;  // a_h at aq + h T S (S,)
    real* o = O + q0 * HK;  // (HK,)
    warp_matvecs<real>(ln, nl, 1, HK, D, Wq, 0, 1, HK, X + q0 * D, 0, 1, q, 0);  // q = x_q W_q
    warp_sync();
    warp_matvecs<real>(ln, nl, a.H, D, K, Wk, K, HK, 1, q, K, 1, u, D);  // u_h = W_k^h q_h
    warp_sync();
    warp_matvecs<real>(ln, nl, a.H, S, D, X, 0, D, 1, u, D, 1, aq, TS);  // a_h = C u_h
    warp_sync();
    warp_matvecs<real>(ln, nl, a.H, D, S, X, 0, 1, D, aq, TS, 1, z, D);  // z_h = C^T a_h
    warp_sync();
    warp_matvecs<real>(ln, nl, a.H, K, D, Wv, K, 1, HK, z, D, 1, o, K);  // o_h = W_v^h^T z_h
    warp_sync();
    warp_matvecs<real>(ln, nl, 1, D, HK, Wp, 0, 1, D, o, 0, 1, U + q0 * D, 0);  // U[q0] = o W_p
    warp_sync();
}

// dU[q0] (D,) -> dXin (T, D); adds this task's weight gradients to gWq, gWk, gWv (D, HK), gWp (HK, D).
// The gradients of K^h = C W_k^h and V^h = C W_v^h are rank one (dK^h = dA_h q_h^T,
// dV^h = a_h dO_h^T), so every product is a matrix-vector or an outer product:
//   dW_p += o du^T;  dO = du W_p^T;  w_h = W_v^h dO_h;  dA_h = C w_h;  g_h = C^T dA_h;
//   dq_h = g_h W_k^h;  dW_v^h += z_h dO_h^T;  dW_k^h += g_h q_h^T;  dW_q += x_q dq^T;
//   dXin = sum_h (dA_h u_h^T + a_h w_h^T) on the key rows t < S, + dq W_q^T on the query row,
//   zero on the rows that are neither. Writes dO, dA_h (row q0 of dP's head h), dq (row q0 of dQ)
// and w, g (H, D).
template <typename real>
HD void query_lsa_backward(int ln, int nl, const AttnDims& a, const real* X, const real* Wq,
                           const real* Wk, const real* Wv, const real* Wp, const real* Q,
                           const real* P, const real* O, const real* u, const real* z,
                           const real* dU, real* dO, real* dP, real* dQ, real* w, real* g,
                           real* gWq, real* gWk, real* gWv, real* gWp, real* dXin) {
    const int HK = a.H * a.K, D = a.D, S = a.S, K = a.K, TS = a.T * a.S, q0 = a.T - 1;
    const real* q = Q + q0 * HK;   // (HK,)
    const real* aq = P + q0 * S;   // a_h at aq + h T S (S,)
    const real* o = O + q0 * HK;   // (HK,)
    const real* du = dU + q0 * D;  // (D,)
    const real* xq = X + q0 * D;   // (D,)
    real* daq = dP + q0 * S;       // dA_h at daq + h T S (S,)
    real* dq = dQ + q0 * HK;       // (HK,)
    for (int e = ln; e < HK * D; e += nl) gWp[e] += o[e / D] * du[e % D];  // dW_p += o du^T
    warp_matvecs<real>(ln, nl, 1, HK, D, Wp, 0, D, 1, du, 0, 1, dO, 0);      // dO = du W_p^T
    warp_sync();
    warp_matvecs<real>(ln, nl, a.H, D, K, Wv, K, HK, 1, dO, K, 1, w, D);  // w_h = W_v^h dO_h
    warp_sync();
    warp_matvecs<real>(ln, nl, a.H, S, D, X, 0, D, 1, w, D, 1, daq, TS);  // dA_h = C w_h
    warp_sync();
    warp_matvecs<real>(ln, nl, a.H, D, S, X, 0, 1, D, daq, TS, 1, g, D);  // g_h = C^T dA_h
    warp_sync();
    warp_matvecs<real>(ln, nl, a.H, K, D, Wk, K, 1, HK, g, D, 1, dq, K);  // dq_h = g_h W_k^h
    warp_sync();
    for (int e = ln; e < D * HK; e += nl) {  // the outer products, entry (i, j) of head h = j / K
        const int i = e / HK, j = e - i * HK, h = j / K;
        gWv[e] += z[h * D + i] * dO[j];  // dW_v^h += z_h dO_h^T
        gWk[e] += g[h * D + i] * q[j];   // dW_k^h += g_h q_h^T
        gWq[e] += xq[i] * dq[j];         // dW_q += x_q dq^T
    }
    for (int e = ln; e < a.T * D; e += nl) {  // dXin: key rows through u and w, the query row through W_q
        const int t = e / D, i = e - t * D;
        real acc = real(0);
        if (t == q0)
            for (int j = 0; j < HK; ++j) acc += dq[j] * Wq[i * HK + j];
        if (t < S)
            for (int h = 0; h < a.H; ++h)
                acc += daq[h * TS + t] * u[h * D + i] + aq[h * TS + t] * w[h * D + i];
        dXin[e] = acc;
    }
    warp_sync();
}
