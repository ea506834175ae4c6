// block.cu -- one transformer block (SPEC 2.3) per task, forward and backward, fused:
//   A = LN1(X); X1 = clip(X + lam * mask_y * Attn(A)); X2 = X1 + lam * MLP(LN2(X1))
// with softmax or linear attention (causal option), LayerNorm (eps 1e-5) and the GELU (tanh) MLP
// each optional. The softmax experiments run layer by layer through these kernels.
// Mirrors: the body of the layer loop of refimpl/model.py model_forward / model_backward, built of
//   refimpl/layers.py layernorm_*, mlp_* (gelu_*), clip_* and refimpl/attention.py.
// Launch shape (kernels/cupy/build.py block_launch, _task_launch): block 32 * warps_per_block
//   threads (at most 16 warps, as the opt-in shared memory allows), grid ceil(B / (warps_per_block
//   * tasks_per_warp)) for block_backward (one task per warp, ceil(B / warps_per_block) blocks, for
//   block_forward), dynamic shared memory warps_per_block * block_warp_bytes (at least 8 bytes per
//   thread); block_add_partials: grid ceil(G / SUM_COLUMNS), 256 threads. Compiled for the one
//   real type a run uses.
// Versions: 1 -- one warp per task; block_forward writes X2; block_backward recomputes the forward
//   of its task, runs the backward, adds the task's parameter gradients into the warp's
//   shared-memory accumulator (tasks in order), sums warps and then blocks by fixed pairwise trees
//   (last block by an integer ticket; no float atomics) and ADDS the result into grads (so a
//   weight-tied block sums its applications in layer order).
//   2 -- (current) 2 x 2 register tiles in the products (common.cuh warp_matmul); the blocks' partial
//   rows summed column-parallel in a fixed order (common.cuh block_sum_columns) by the last block,
//   or, above kernels/cupy/build.py REDUCE_IN_KERNEL_ENTRIES partial entries, by a second launch
//   (block_add_partials, many blocks of SUM_COLUMNS columns, the same order of sums).
// Parameters: one set, packed in refimpl.params.param_shapes order: [ln1.scale, ln1.offset (D)],
//   W_q, W_k, W_v (D, HK), W_p (HK, D), [ln2.scale, ln2.offset (D)], [W1 (D, F), b1 (F), W2 (F, D),
//   b2 (D)] -- bracketed parts present when the layer has them.
#include "attention.cuh"

struct BlockDims {
    int T, D, H, K, S, F;
    int softmax, causal, y_update, ln1, mlp, ln2;
    double lam, clip;
};

struct BlockLayout { int ln1s, ln1o, Wq, Wk, Wv, Wp, ln2s, ln2o, W1, b1, W2, b2, total; };

HD BlockLayout block_param_layout(const BlockDims& b) {
    const int HK = b.H * b.K;
    BlockLayout p;
    int o = 0;
    p.ln1s = o; o += b.ln1 ? b.D : 0;
    p.ln1o = o; o += b.ln1 ? b.D : 0;
    p.Wq = o; o += b.D * HK;
    p.Wk = o; o += b.D * HK;
    p.Wv = o; o += b.D * HK;
    p.Wp = o; o += HK * b.D;
    p.ln2s = o; o += b.ln2 ? b.D : 0;
    p.ln2o = o; o += b.ln2 ? b.D : 0;
    p.W1 = o; o += b.mlp ? b.D * b.F : 0;
    p.b1 = o; o += b.mlp ? b.F : 0;
    p.W2 = o; o += b.mlp ? b.F * b.D : 0;
    p.b2 = o; o += b.mlp ? b.D : 0;
    p.total = o;
    return p;
}

struct BlockWorkspace {
    int X, A, xhat1, rstd1, Q, Kt, V, P, O, U, X1, Min, xhat2, rstd2, Hh, Gg, Mo,
        dX2, dMo, dG, dH, dMin, dX1, dU, dO, dP, dQ, dK, dV, dA, gacc, total;
};

HD BlockWorkspace block_workspace(const BlockDims& b) {
    const int TD = b.T * b.D, HK = b.H * b.K, HTS = b.H * b.T * b.S, TF = b.T * b.F;
    BlockWorkspace w;
    int o = 0;
    w.X = o; o += TD;  w.A = o; o += TD;  w.xhat1 = o; o += TD;  w.rstd1 = o; o += b.T;
    w.Q = o; o += b.T * HK;  w.Kt = o; o += b.S * HK;  w.V = o; o += b.S * HK;
    w.P = o; o += HTS;  w.O = o; o += b.T * HK;  w.U = o; o += TD;  w.X1 = o; o += TD;
    w.Min = o; o += TD;  w.xhat2 = o; o += TD;  w.rstd2 = o; o += b.T;
    w.Hh = o; o += TF;  w.Gg = o; o += TF;  w.Mo = o; o += TD;
    w.dX2 = o; o += TD;  w.dMo = o; o += TD;  w.dG = o; o += TF;  w.dH = o; o += TF;
    w.dMin = o; o += TD;  w.dX1 = o; o += TD;  w.dU = o; o += TD;  w.dO = o; o += b.T * HK;
    w.dP = o; o += HTS;  w.dQ = o; o += b.T * HK;  w.dK = o; o += b.S * HK;  w.dV = o; o += b.S * HK;
    w.dA = o; o += TD;
    w.gacc = o; o += block_param_layout(b).total;
    w.total = o;
    return w;
}

HD int block_warp_bytes(const BlockDims& b, int real_size) {
    return (real_size * block_workspace(b).total + 15) / 16 * 16;
}

// LayerNorm over each of the T rows (lane per row): out = xhat * scale + offset.
template <typename real>
HD void warp_layernorm(int ln, int nl, int T, int D, const real* X, const real* scale,
                       const real* offset, real* xhat, real* rstd, real* out) {
    for (int t = ln; t < T; t += nl) {
        const real* x = X + t * D;
        real mean = real(0);
        for (int i = 0; i < D; ++i) mean += x[i];
        mean = mean / (real)D;
        real var = real(0);
        for (int i = 0; i < D; ++i) var += (x[i] - mean) * (x[i] - mean);
        var = var / (real)D;
        const real r = real(1) / sqrt(var + (real)1e-5);
        rstd[t] = r;
        for (int i = 0; i < D; ++i) {
            const real xh = (x[i] - mean) * r;
            xhat[t * D + i] = xh;
            out[t * D + i] = xh * scale[i] + offset[i];
        }
    }
}

// dout (T, D) -> dx (T, D); adds sum_t dout * xhat and sum_t dout to gscale, goffset.
template <typename real>
HD void warp_layernorm_backward(int ln, int nl, int T, int D, const real* dout, const real* xhat,
                                const real* rstd, const real* scale, real* gscale, real* goffset,
                                real* dx) {
    for (int i = ln; i < D; i += nl) {  // parameter gradients: lane per column
        real gs = real(0), go = real(0);
        for (int t = 0; t < T; ++t) { gs += dout[t * D + i] * xhat[t * D + i]; go += dout[t * D + i]; }
        gscale[i] += gs;
        goffset[i] += go;
    }
    for (int t = ln; t < T; t += nl) {  // input gradient: lane per row
        real m1 = real(0), m2 = real(0);
        for (int i = 0; i < D; ++i) {
            const real g = dout[t * D + i] * scale[i];
            m1 += g;
            m2 += g * xhat[t * D + i];
        }
        m1 = m1 / (real)D;
        m2 = m2 / (real)D;
        for (int i = 0; i < D; ++i) {
            const real g = dout[t * D + i] * scale[i];
            dx[t * D + i] = rstd[t] * (g - m1 - xhat[t * D + i] * m2);
        }
    }
}

// C (M, N) = A (M, Kd) @ W (Kd, N) + b (N)
template <typename real>
HD void warp_linear(int ln, int nl, int M, int N, int Kd, const real* A, const real* W,
                    const real* b, real* C) {
    for (int e = ln; e < M * N; e += nl) {
        const int m = e / N, n = e % N;
        real acc = real(0);
        for (int k = 0; k < Kd; ++k) acc += A[m * Kd + k] * W[k * N + n];
        C[e] = acc + b[n];
    }
}

#define GELU_C 0.7978845608028654  // sqrt(2 / pi)

template <typename real>
HD void block_task_forward(int ln, int nl, const BlockDims& b, const real* W, real* ws) {
    const BlockWorkspace w = block_workspace(b);
    const BlockLayout p = block_param_layout(b);
    const int TD = b.T * b.D;
    AttnDims a;
    a.T = b.T; a.D = b.D; a.H = b.H; a.K = b.K; a.S = b.S; a.softmax = b.softmax; a.causal = b.causal;
    a.q0 = 0;  // every row feeds the next layer
    const real* A = ws + w.X;
    if (b.ln1) {
        warp_layernorm<real>(ln, nl, b.T, b.D, ws + w.X, W + p.ln1s, W + p.ln1o, ws + w.xhat1,
                             ws + w.rstd1, ws + w.A);
        warp_sync();
        A = ws + w.A;
    }
    attention_forward<real>(ln, nl, a, A, W + p.Wq, W + p.Wk, W + p.Wv, W + p.Wp, ws + w.Q,
                            ws + w.Kt, ws + w.V, ws + w.P, ws + w.O, ws + w.U);
    const real lam = (real)b.lam, c = (real)b.clip;
    for (int e = ln; e < TD; e += nl) {
        const real mask = (!b.y_update || e % b.D == b.D - 1) ? real(1) : real(0);
        real x = ws[w.X + e] + lam * (ws[w.U + e] * mask);
        if (b.clip > 0) x = x < -c ? -c : (x > c ? c : x);
        ws[w.X1 + e] = x;
    }
    warp_sync();
    if (!b.mlp) return;
    const real* Min = ws + w.X1;
    if (b.ln2) {
        warp_layernorm<real>(ln, nl, b.T, b.D, ws + w.X1, W + p.ln2s, W + p.ln2o, ws + w.xhat2,
                             ws + w.rstd2, ws + w.Min);
        warp_sync();
        Min = ws + w.Min;
    }
    warp_linear<real>(ln, nl, b.T, b.F, b.D, Min, W + p.W1, W + p.b1, ws + w.Hh);
    warp_sync();
    for (int e = ln; e < b.T * b.F; e += nl) {  // GELU, tanh approximation
        const real x = ws[w.Hh + e];
        const real t = tanh((real)GELU_C * (x + (real)0.044715 * (x * x * x)));
        ws[w.Gg + e] = (real(0.5) * x) * (real(1) + t);
    }
    warp_sync();
    warp_linear<real>(ln, nl, b.T, b.D, b.F, ws + w.Gg, W + p.W2, W + p.b2, ws + w.Mo);
    warp_sync();
}

// The block's output: X1 without an MLP, X1 + lam * Mo with one.
template <typename real>
HD real block_output(const BlockDims& b, const real* ws, int e) {
    const BlockWorkspace w = block_workspace(b);
    return b.mlp ? ws[w.X1 + e] + (real)b.lam * ws[w.Mo + e] : ws[w.X1 + e];
}

// dX2 in ws + w.dX2 -> dX (written to dx_out, T*D); parameter gradients added to ws + w.gacc.
template <typename real>
HD void block_task_backward(int ln, int nl, const BlockDims& b, const real* W, real* ws, real* dx_out) {
    const BlockWorkspace w = block_workspace(b);
    const BlockLayout p = block_param_layout(b);
    const int TD = b.T * b.D, T = b.T, D = b.D, F = b.F;
    real* G = ws + w.gacc;
    const real lam = (real)b.lam, c = (real)b.clip;
    if (b.mlp) {
        for (int e = ln; e < TD; e += nl) ws[w.dMo + e] = lam * ws[w.dX2 + e];
        warp_sync();
        warp_matmul<real>(ln, nl, F, D, T, ws + w.Gg, 1, F, ws + w.dMo, D, 1, G + p.W2, D, true);
        for (int i = ln; i < D; i += nl) {
            real s = real(0);
            for (int t = 0; t < T; ++t) s += ws[w.dMo + t * D + i];
            G[p.b2 + i] += s;
        }
        warp_matmul<real>(ln, nl, T, F, D, ws + w.dMo, D, 1, W + p.W2, 1, D, ws + w.dG, F, false);
        warp_sync();
        for (int e = ln; e < T * F; e += nl) {  // GELU derivative
            const real x = ws[w.Hh + e];
            const real t = tanh((real)GELU_C * (x + (real)0.044715 * (x * x * x)));
            const real du = (real)GELU_C * (real(1) + (real)(3 * 0.044715) * (x * x));
            const real dg = real(0.5) * (real(1) + t) + ((real(0.5) * x) * (real(1) - t * t)) * du;
            ws[w.dH + e] = ws[w.dG + e] * dg;
        }
        warp_sync();
        const real* Min = b.ln2 ? ws + w.Min : ws + w.X1;
        warp_matmul<real>(ln, nl, D, F, T, Min, 1, D, ws + w.dH, F, 1, G + p.W1, F, true);
        for (int j = ln; j < F; j += nl) {
            real s = real(0);
            for (int t = 0; t < T; ++t) s += ws[w.dH + t * F + j];
            G[p.b1 + j] += s;
        }
        warp_matmul<real>(ln, nl, T, D, F, ws + w.dH, F, 1, W + p.W1, 1, F, ws + w.dMin, D, false);
        warp_sync();
        if (b.ln2) {
            warp_layernorm_backward<real>(ln, nl, T, D, ws + w.dMin, ws + w.xhat2, ws + w.rstd2,
                                          W + p.ln2s, G + p.ln2s, G + p.ln2o, ws + w.dU);
            warp_sync();
            for (int e = ln; e < TD; e += nl) ws[w.dX1 + e] = ws[w.dX2 + e] + ws[w.dU + e];
        } else {
            for (int e = ln; e < TD; e += nl) ws[w.dX1 + e] = ws[w.dX2 + e] + ws[w.dMin + e];
        }
    } else {
        for (int e = ln; e < TD; e += nl) ws[w.dX1 + e] = ws[w.dX2 + e];
    }
    warp_sync();
    for (int e = ln; e < TD; e += nl) {
        const real mask = (!b.y_update || e % D == D - 1) ? real(1) : real(0);
        real dx = ws[w.dX1 + e];
        if (b.clip > 0) {
            const real x = ws[w.X + e] + lam * (ws[w.U + e] * mask);
            const real ax = x < real(0) ? -x : x;
            dx = ax <= c ? dx : real(0);
            ws[w.dX1 + e] = dx;
        }
        ws[w.dU + e] = (lam * dx) * mask;
    }
    warp_sync();
    AttnDims a;
    a.T = b.T; a.D = b.D; a.H = b.H; a.K = b.K; a.S = b.S; a.softmax = b.softmax; a.causal = b.causal;
    a.q0 = 0;  // every row feeds the next layer
    const real* A = b.ln1 ? ws + w.A : ws + w.X;
    attention_backward<real>(ln, nl, a, A, W + p.Wq, W + p.Wk, W + p.Wv, W + p.Wp, ws + w.Q,
                             ws + w.Kt, ws + w.V, ws + w.P, ws + w.O, ws + w.dU, ws + w.dO,
                             ws + w.dP, ws + w.dQ, ws + w.dK, ws + w.dV, G + p.Wq, G + p.Wk,
                             G + p.Wv, G + p.Wp, ws + w.dA);
    if (b.ln1) {
        warp_layernorm_backward<real>(ln, nl, T, D, ws + w.dA, ws + w.xhat1, ws + w.rstd1,
                                      W + p.ln1s, G + p.ln1s, G + p.ln1o, ws + w.dMin);
        warp_sync();
        for (int e = ln; e < TD; e += nl) dx_out[e] = ws[w.dX1 + e] + ws[w.dMin + e];
    } else {
        for (int e = ln; e < TD; e += nl) dx_out[e] = ws[w.dX1 + e] + ws[w.dA + e];
    }
    warp_sync();
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define BLOCK_DIMS_ARGS                                                                          \
    int T, int D, int H, int K, int S, int F, int softmax, int causal, int y_update, int ln1,   \
        int mlp, int ln2, double lam, double clip
#define BLOCK_DIMS_SET(b)                                                                        \
    b.T = T; b.D = D; b.H = H; b.K = K; b.S = S; b.F = F; b.softmax = softmax; b.causal = causal; \
    b.y_update = y_update; b.ln1 = ln1; b.mlp = mlp; b.ln2 = ln2; b.lam = lam; b.clip = clip

template <typename real>
__global__ void block_forward(BLOCK_DIMS_ARGS, int B, const real* __restrict__ X,
                              const real* __restrict__ W, real* __restrict__ Xout) {
    extern __shared__ __align__(16) unsigned char smem[];
    BlockDims bd;
    BLOCK_DIMS_SET(bd);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int task = blockIdx.x * (blockDim.x / 32) + warp;
    if (task >= B) return;
    real* ws = (real*)(smem + warp * block_warp_bytes(bd, sizeof(real)));
    const int TD = T * D;
    const BlockWorkspace w = block_workspace(bd);
    for (int e = lane; e < TD; e += 32) ws[w.X + e] = X[(size_t)task * TD + e];
    __syncwarp();
    block_task_forward<real>(lane, 32, bd, W, ws);
    for (int e = lane; e < TD; e += 32) Xout[(size_t)task * TD + e] = block_output<real>(bd, ws, e);
}

template <typename real>
__global__ void block_backward(BLOCK_DIMS_ARGS, int B, int tasks_per_warp,
                               const real* __restrict__ X, const real* __restrict__ W,
                               const real* __restrict__ dXout, real* __restrict__ dX,
                               real* __restrict__ partials, unsigned int* __restrict__ ticket,
                               int finish, real* __restrict__ grads) {
    extern __shared__ __align__(16) unsigned char smem[];
    BlockDims bd;
    BLOCK_DIMS_SET(bd);
    const int wpb = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_bytes = block_warp_bytes(bd, sizeof(real));
    real* ws = (real*)(smem + warp * warp_bytes);
    const BlockWorkspace w = block_workspace(bd);
    const int TD = T * D, G = block_param_layout(bd).total;
    for (int e = lane; e < G; e += 32) ws[w.gacc + e] = real(0);
    __syncwarp();
    for (int it = 0; it < tasks_per_warp; ++it) {
        const int task = (blockIdx.x * wpb + warp) * tasks_per_warp + it;
        if (task >= B) break;  // warp-uniform
        for (int e = lane; e < TD; e += 32) {
            ws[w.X + e] = X[(size_t)task * TD + e];
            ws[w.dX2 + e] = dXout[(size_t)task * TD + e];
        }
        __syncwarp();
        block_task_forward<real>(lane, 32, bd, W, ws);
        block_task_backward<real>(lane, 32, bd, W, ws, dX + (size_t)task * TD);
    }
    __syncthreads();
    {
        real* base = (real*)smem + w.gacc;
        shared_tree_sum_rows<real>(base, wpb, warp_bytes / (int)sizeof(real), G);
        for (int e = threadIdx.x; e < G; e += blockDim.x) partials[(size_t)blockIdx.x * G + e] = base[e];
    }
    // finish = 0: block_add_partials sums the rows (too many entries for one block)
    if (!finish || !last_block_done(ticket)) return;
    block_sum_columns<real>(partials, gridDim.x, G, 0, G, (real*)smem);  // column-parallel, in order
    for (int e = threadIdx.x; e < G; e += blockDim.x) grads[e] = grads[e] + LOAD_CG(partials + e);
}

// grads[c] += sum over the rows of partials (rows, G)[:, c]: the multi-block form of the end of
// block_backward (the same order of sums). Launch: grid ceil(G / SUM_COLUMNS), block 256 threads.
template <typename real>
__global__ void block_add_partials(int rows, int G, real* __restrict__ partials,
                                   real* __restrict__ grads) {
    __shared__ double scratch[256];  // blockDim.x <= 256 reals
    grid_sum_columns<real>(partials, rows, G, (real*)scratch);
    const int c0 = blockIdx.x * SUM_COLUMNS;
    for (int c = c0 + threadIdx.x; c < G && c < c0 + SUM_COLUMNS; c += blockDim.x)
        grads[c] = grads[c] + LOAD_CG(partials + c);
}
#endif
