// attention.cuh -- one task's multi-head self-attention, linear (SPEC 2.1) or softmax (SPEC 2.2),
// forward and backward, by the lanes of one warp on shared-memory buffers.
// Mirrors refimpl/attention.py lsa_forward/backward and softmax_attention_forward/backward.
// Layouts (row-major): X (T, D); Q (T, HK); Kt, V (S, HK); P (H, T, S) scores or probabilities;
// O (T, HK); U = O W_p (T, D). Weights (in, out): W_q, W_k, W_v (D, HK); W_p (HK, D).
// Query rows: only rows t >= q0 of Q, P, O, U (forward) and of dO, dP, dQ (backward) are computed
// (q0 = 0: all). The last layer of a model needs only its query row (q0 = T - 1): the keys and
// values are full, every query-side product is one row, and the backward takes dU = 0 on the
// rows it skips (true there: only the query's label reaches the loss).
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
