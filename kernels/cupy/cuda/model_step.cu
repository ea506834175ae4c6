// model_step.cu -- the whole training step of an attention-only model (the paper's LSA; softmax
// layers too) in ONE launch: draw or read the task, forward through all L layers, backward, per-task
// gradients reduced deterministically over tasks, then (optionally) global-norm clipping and Adam.
// Mirrors: refimpl/loss.py loss_and_grads (model_forward + mse + model_backward of refimpl/model.py)
//          followed by refimpl/optim.py adam_update; tasks from kernels/cupy/philox.py (SPEC 1.1).
// Model options covered: linear or softmax attention per layer (first_layer_softmax, causal),
//   H heads, key size K, include_query, weight-tied or deep, dampening, y_update, token_clip.
//   (No LayerNorm / MLP / front end: those models run layer by layer in block.cu.)
// Launch shape (kernels/cupy/build.py model_step_launch, _task_launch): block 32 * warps_per_block
//   threads (at most WARPS_PER_SM = 16 warps, as many as the device's opt-in shared memory holds),
//   grid ceil(B / (warps_per_block * tasks_per_warp)) blocks, all resident at once, tasks_per_warp
//   the fewest that fit B into ~16 warps per SM; dynamic shared memory warps_per_block *
//   model_step_warp_bytes (at least 8 bytes per thread: the last block's scratch); partials
//   (grid, P + L). model_step_finish: grid ceil((P + L) / SUM_COLUMNS), FINISH_THREADS threads.
//   Compiled for the one real type a run uses (float or double).
// Versions: 1 -- one warp per task, each warp runs `tasks_per_warp` consecutive tasks and adds their
//   gradients in task order into its own shared-memory accumulator; warps are summed by a fixed
//   pairwise tree; each block writes one partial row; the last block to finish (integer ticket, no
//   float atomics) sums the partial rows by a fixed pairwise tree and applies Adam.
//   2 -- the last layer computes only its query row (attention.cuh q0 = T - 1: one row of
//   Q, scores, O, U and of their gradients: at fig2's shapes 8 646 multiply-adds per task for
//   the layer's forward and backward instead of 22 506; keys and values stay full); the
//   products use 2 x 2 register tiles (common.cuh warp_matmul); the partial rows are summed
//   column-parallel with eight loads in flight per thread (common.cuh block_sum_columns), by the
//   last block when rows x (P + L) <= kernels/cupy/build.py REDUCE_IN_KERNEL_ENTRIES, else by a
//   second launch, model_step_finish (many blocks, SUM_COLUMNS columns each), which also applies
//   Adam. Every sum has a fixed order: the result depends only on B and the launch shape, which
//   depends only on the model's shapes and the device's SM count and shared memory. The backend
//   compiles the source once per model shape with its sizes and flags as constants (MS_* macros,
//   kernels/cupy/build.py model_step_defines; without them the sizes are read at run time).
//   3 -- (current) a LINEAR last layer runs in rank-one form (attention.cuh query_lsa_forward /
//   query_lsa_backward, the algebra of kernels/numba/query_lsa.py): keys, values and their
//   gradients are never formed, only matrix-vector and outer products with vectors of D, S or K
//   per head (u_h = W_k^h q_h, a_h = C u_h, z_h = C^T a_h; backward w_h, dA_h, g_h); at fig2's
//   shapes 2 112 multiply-adds per task for the layer's forward and backward (704 + 1 408)
//   instead of 8 646. u, z, w, g (H, D) each end the workspace (no room when the last layer is
//   softmax, which keeps version 2's query row); a_h and dA_h sit in the query rows of P and dP.
// Parameters are one packed vector in refimpl.params.param_shapes order: per parameter set
//   p (p = 0 when weight-tied): W_q, W_k, W_v (D, HK), W_p (HK, D).
#include "attention.cuh"
#include "philox.cuh"

struct ModelDims {
    int T, D, H, K, S, L;
    int tied;           // one parameter set for all L applications
    int first_softmax;  // layer 0 is softmax attention
    int softmax;        // every layer is softmax attention
    int causal;
    int y_update;       // only the last column receives the attention update
    double lam;         // dampening
    double clip;        // token clipping bound, 0 = off
};

HD int model_set_size(const ModelDims& m) { return 4 * m.D * m.H * m.K; }
HD int model_num_params(const ModelDims& m) { return (m.tied ? 1 : m.L) * model_set_size(m); }

HD AttnDims layer_attention(const ModelDims& m, int l) {
    AttnDims a;
    a.T = m.T; a.D = m.D; a.H = m.H; a.K = m.K; a.S = m.S;
    a.softmax = (m.softmax || (l == 0 && m.first_softmax)) ? 1 : 0;
    a.causal = m.causal;
    a.q0 = l == m.L - 1 ? m.T - 1 : 0;  // the last layer: only the query row reaches the loss
    return a;
}

// A linear last layer runs in rank-one form (attention.cuh query_lsa_forward / _backward).
HD bool last_layer_rank_one(const ModelDims& m) { return !layer_attention(m, m.L - 1).softmax; }

// Offsets (in reals) of one warp's buffers; the warp's region starts with `d_draw` doubles of
// scratch for the task draw, then these reals. The buffers up to `target` are the layout
// kernels/numba/gpu_warp.py shares; qu, qz, qw, qg (u, z, w, g of the rank-one last layer) end it.
struct StepWorkspace {
    int Xs, Xc, Q, Kt, V, P, O, U, dX, dU, dO, dP, dQ, dK, dV, dXin, gacc, readout, target,
        qu, qz, qw, qg, total;
};

HD StepWorkspace model_step_workspace(const ModelDims& m) {
    const int TD = m.T * m.D, HK = m.H * m.K, HTS = m.H * m.T * m.S;
    StepWorkspace w;
    int o = 0;
    w.Xs = o; o += m.L * TD;  // layer inputs; Xs[0] = the tokens
    w.Xc = o; o += TD;        // output of the last layer
    w.Q = o; o += m.T * HK;
    w.Kt = o; o += m.S * HK;
    w.V = o; o += m.S * HK;
    w.P = o; o += HTS;
    w.O = o; o += m.T * HK;
    w.U = o; o += TD;
    w.dX = o; o += TD;
    w.dU = o; o += TD;
    w.dO = o; o += m.T * HK;
    w.dP = o; o += HTS;
    w.dQ = o; o += m.T * HK;
    w.dK = o; o += m.S * HK;
    w.dV = o; o += m.S * HK;
    w.dXin = o; o += TD;
    w.gacc = o; o += model_num_params(m) + m.L;  // gradients, then sum_b 0.5 r_l^2 per layer
    w.readout = o; o += m.L;
    w.target = o; o += 1;
    const int R = last_layer_rank_one(m) ? m.H * m.D : 0;  // (H, D) each
    w.qu = o; o += R;
    w.qz = o; o += R;
    w.qw = o; o += R;
    w.qg = o; o += R;
    w.total = o;
    return w;
}

// Bytes of one warp's region: d doubles of draw scratch, then the reals, rounded up to 16 bytes.
HD int model_step_warp_bytes(const ModelDims& m, int d, int real_size) {
    const int bytes = 8 * d + real_size * model_step_workspace(m).total;
    return (bytes + 15) / 16 * 16;
}

// x_out = clip(x_in + lam * mask * U) on rows q0.. (the rows the next layer or the readout reads).
template <typename real>
HD void residual_update(int ln, int nl, const ModelDims& m, int q0, const real* Xin, const real* U,
                        real* Xout) {
    const real lam = (real)m.lam, c = (real)m.clip;
    for (int e = q0 * m.D + ln; e < m.T * m.D; e += nl) {
        const real mask = (!m.y_update || e % m.D == m.D - 1) ? real(1) : real(0);
        real x = Xin[e] + lam * (U[e] * mask);
        if (m.clip > 0) x = x < -c ? -c : (x > c ? c : x);
        Xout[e] = x;
    }
}

// One task: forward, loss, backward; adds its gradients and 0.5 r_l^2 to `gacc`. The tokens are in
// ws + w.Xs and the target in ws[w.target]. inv_batch = 1 / B (the mean of the loss).
template <typename real>
HD void model_task_step(int ln, int nl, const ModelDims& m, const real* params, real* ws,
                        real inv_batch) {
    const StepWorkspace w = model_step_workspace(m);
    const int TD = m.T * m.D, HK = m.H * m.K, DHK = m.D * HK, set = model_set_size(m);
    real* gacc = ws + w.gacc;
    for (int l = 0; l < m.L; ++l) {  // forward
        const real* W = params + (m.tied ? 0 : l) * set;
        const real* Xin = ws + w.Xs + l * TD;
        real* Xout = (l + 1 < m.L) ? ws + w.Xs + (l + 1) * TD : ws + w.Xc;
        const AttnDims a = layer_attention(m, l);
        if (l == m.L - 1 && last_layer_rank_one(m))
            query_lsa_forward<real>(ln, nl, a, Xin, W, W + DHK, W + 2 * DHK, W + 3 * DHK, ws + w.Q,
                                    ws + w.P, ws + w.O, ws + w.U, ws + w.qu, ws + w.qz);
        else
            attention_forward<real>(ln, nl, a, Xin, W, W + DHK, W + 2 * DHK, W + 3 * DHK,
                                    ws + w.Q, ws + w.Kt, ws + w.V, ws + w.P, ws + w.O, ws + w.U);
        residual_update<real>(ln, nl, m, a.q0, Xin, ws + w.U, Xout);
        warp_sync();
        if (ln == 0) ws[w.readout + l] = -Xout[TD - 1];  // SPEC 2.6: y_hat = -H[query, -1]
    }
    warp_sync();
    const real target = ws[w.target];
    if (ln == 0) {
        for (int l = 0; l < m.L; ++l) {
            const real r = ws[w.readout + l] - target;
            gacc[model_num_params(m) + l] += real(0.5) * (r * r);
        }
    }
    const real dread = inv_batch * (ws[w.readout + m.L - 1] - target);  // d loss / d y_hat
    for (int e = ln; e < TD; e += nl) ws[w.dX + e] = (e == TD - 1) ? -dread : real(0);
    warp_sync();
    for (int l = m.L - 1; l >= 0; --l) {  // backward
        const real* W = params + (m.tied ? 0 : l) * set;
        real* G = gacc + (m.tied ? 0 : l) * set;
        const real* Xin = ws + w.Xs + l * TD;
        const AttnDims a = layer_attention(m, l);
        if (l < m.L - 1)  // recompute this layer's attention (the last one is still in place)
            attention_forward<real>(ln, nl, a, Xin, W, W + DHK, W + 2 * DHK, W + 3 * DHK,
                                    ws + w.Q, ws + w.Kt, ws + w.V, ws + w.P, ws + w.O, ws + w.U);
        const real lam = (real)m.lam, c = (real)m.clip;
        // rows below q0 (the last layer's context rows): their incoming gradient is zero and
        // attention_backward / query_lsa_backward read no dU there
        for (int e = a.q0 * m.D + ln; e < TD; e += nl) {
            const real mask = (!m.y_update || e % m.D == m.D - 1) ? real(1) : real(0);
            real dx = ws[w.dX + e];
            if (m.clip > 0) {  // the gradient passes where the pre-clip value was inside
                const real x = Xin[e] + lam * (ws[w.U + e] * mask);
                const real ax = x < real(0) ? -x : x;
                dx = ax <= c ? dx : real(0);
                ws[w.dX + e] = dx;
            }
            ws[w.dU + e] = (lam * dx) * mask;
        }
        warp_sync();
        if (l == m.L - 1 && last_layer_rank_one(m))
            query_lsa_backward<real>(ln, nl, a, Xin, W, W + DHK, W + 2 * DHK, W + 3 * DHK, ws + w.Q,
                                     ws + w.P, ws + w.O, ws + w.qu, ws + w.qz, ws + w.dU,
                                     ws + w.dO, ws + w.dP, ws + w.dQ, ws + w.qw, ws + w.qg,
                                     G, G + DHK, G + 2 * DHK, G + 3 * DHK, ws + w.dXin);
        else
            attention_backward<real>(ln, nl, a, Xin, W, W + DHK, W + 2 * DHK, W + 3 * DHK,
                                     ws + w.Q, ws + w.Kt, ws + w.V, ws + w.P, ws + w.O, ws + w.dU,
                                     ws + w.dO, ws + w.dP, ws + w.dQ, ws + w.dK, ws + w.dV,
                                     G, G + DHK, G + 2 * DHK, G + 3 * DHK, ws + w.dXin);
        for (int e = ln; e < TD; e += nl) ws[w.dX + e] = ws[w.dX + e] + ws[w.dXin + e];
        warp_sync();
    }
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// The step's outputs from the summed row g = (gradients (P), sum_b 0.5 r_l^2 (L)) and its norm:
// grads_out, stats (per-layer losses, norm), then clipping and Adam on all P entries. Run by the
// threads of one block.
template <typename real>
__device__ void step_outputs(const real* g, int P, int L, int B, double norm, real* grads_out,
                             real* stats, int apply, real* params, real* adam_m, real* adam_v,
                             int* step, int t_step, double lr, double b1, double b2, double eps,
                             double grad_clip) {
    if (grads_out)
        for (int e = threadIdx.x; e < P; e += blockDim.x) grads_out[e] = LOAD_CG(g + e);
    for (int l = threadIdx.x; l < L; l += blockDim.x) stats[l] = LOAD_CG(g + P + l) / (real)B;
    if (threadIdx.x == 0) stats[L] = (real)norm;
    if (!apply) return;
    const int t = t_step + 1;
    const bool clipping = grad_clip > 0 && norm > grad_clip;
    const real factor = (real)(grad_clip / norm);
    const real bc1 = (real)(1.0 - pow(b1, (double)t)), bc2 = (real)(1.0 - pow(b2, (double)t));
    for (int e = threadIdx.x; e < P; e += blockDim.x) {
        real ge = LOAD_CG(g + e);
        if (clipping) ge = ge * factor;
        adam_entry<real>(params + e, adam_m + e, adam_v + e, ge, (real)lr, (real)b1, (real)(1.0 - b1),
                         (real)b2, (real)(1.0 - b2), (real)eps, bc1, bc2);
    }
    __syncthreads();
    if (threadIdx.x == 0) *step = t;
}

// Sum of g[0:P]^2 in float64 by the block's threads (strided, then block_tree_sum): the same
// order on every run.
template <typename real>
__device__ double block_sumsq(const real* g, int e0, int e1, double* scratch) {
    double sq = 0.0;
    for (int e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
        const double ge = (double)LOAD_CG(g + e);
        sq += ge * ge;
    }
    return block_tree_sum(sq, scratch);
}

template <typename real>
__global__ void model_step(
    // model
    int T, int D, int H, int K, int S, int L, int tied, int first_softmax, int softmax, int causal,
    int y_update, double lam, double clip,
    // batch: B tasks, read from tokens (B, T, D) / targets (B,), or drawn at step *step
    int B, int tasks_per_warp, const real* __restrict__ tokens, const real* __restrict__ targets,
    int draw, unsigned long long seed, int N, int d, double input_range, double weight_scale,
    // parameters (P,) and reduction buffers: partials (gridDim.x, P + L), ticket (1,);
    // finish = 0: stop after writing partials (model_step_finish completes the step)
    real* __restrict__ params, real* __restrict__ partials, unsigned int* __restrict__ ticket,
    int finish,
    // outputs: grads (P,) or null; stats (L + 1,): per-layer losses, then the gradient norm
    real* __restrict__ grads_out, real* __restrict__ stats,
    // Adam (apply = 0: gradients only)
    int apply, real* __restrict__ adam_m, real* __restrict__ adam_v, int* __restrict__ step,
    double lr, double b1, double b2, double eps, double grad_clip) {
    extern __shared__ __align__(16) unsigned char smem[];
    ModelDims m;
#ifdef MS_T
    // Compiled for one model (kernels/cupy/build.py model_step_defines): its sizes and flags are
    // compile-time constants, which the inlined per-task code folds into every loop bound and
    // offset. A launch with other shapes stops the kernel rather than compute with the wrong ones.
    if (T != MS_T || D != MS_D || H != MS_H || K != MS_K || S != MS_S || L != MS_L ||
        tied != MS_TIED || first_softmax != MS_FSOFT || softmax != MS_SOFT || causal != MS_CAUSAL ||
        y_update != MS_YUP)
        __trap();
    m.T = MS_T; m.D = MS_D; m.H = MS_H; m.K = MS_K; m.S = MS_S; m.L = MS_L; m.tied = MS_TIED;
    m.first_softmax = MS_FSOFT; m.softmax = MS_SOFT; m.causal = MS_CAUSAL; m.y_update = MS_YUP;
#else
    m.T = T; m.D = D; m.H = H; m.K = K; m.S = S; m.L = L; m.tied = tied;
    m.first_softmax = first_softmax; m.softmax = softmax; m.causal = causal; m.y_update = y_update;
#endif
    m.lam = lam; m.clip = clip;
    const StepWorkspace w = model_step_workspace(m);
    const int warp_bytes = model_step_warp_bytes(m, d, sizeof(real));
    const int wpb = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    double* wdraw = (double*)(smem + warp * warp_bytes);
    real* ws = (real*)(smem + warp * warp_bytes + 8 * d);
    const int P = model_num_params(m), G = P + m.L;
    const int TD = m.T * m.D;
    const int t_step = *step;

    for (int e = lane; e < G; e += 32) ws[w.gacc + e] = real(0);
    __syncwarp();
    for (int it = 0; it < tasks_per_warp; ++it) {
        const int b = (blockIdx.x * wpb + warp) * tasks_per_warp + it;
        if (b >= B) break;  // warp-uniform
        if (draw) {
            draw_linear_regression_task<real>(lane, 32, seed, (uint32_t)t_step, (uint32_t)b, N, d,
                                              input_range, weight_scale, wdraw, ws + w.Xs,
                                              ws + w.target);
        } else {
            for (int e = lane; e < TD; e += 32) ws[w.Xs + e] = tokens[(size_t)b * TD + e];
            if (lane == 0) ws[w.target] = targets[b];
            __syncwarp();
        }
        model_task_step<real>(lane, 32, m, params, ws, (real)(1.0 / B));
    }
    __syncthreads();
    // warps -> one row per block: fixed pairwise tree over the warps' accumulators
    {
        real* base = (real*)(smem + 8 * d) + w.gacc;
        shared_tree_sum_rows<real>(base, wpb, warp_bytes / (int)sizeof(real), G);
        for (int e = threadIdx.x; e < G; e += blockDim.x) partials[(size_t)blockIdx.x * G + e] = base[e];
    }
    if (!finish || !last_block_done(ticket)) return;
    // the last block: blocks -> row 0 of partials (column-parallel), then the outputs and Adam;
    // the warps' shared memory is free now and serves as scratch (blockDim.x reals, then doubles)
    block_sum_columns<real>(partials, gridDim.x, G, 0, G, (real*)smem);
    const double norm = sqrt(block_sumsq<real>(partials, 0, P, (double*)smem));
    step_outputs<real>(partials, P, m.L, B, norm, grads_out, stats, apply, params, adam_m, adam_v,
                       step, t_step, lr, b1, b2, eps, grad_clip);
}

// The end of a step whose partial rows are too many for one block (kernels/cupy/build.py
// REDUCE_IN_KERNEL_ENTRIES): block j sums columns [32 j, 32 j + 32) of partials (rows, P + L) into
// row 0 and the float64 sum of squares of its gradient columns into block_sums[j]; the last block
// (integer ticket) adds block_sums in order for the norm and writes the outputs and the Adam step.
// Launch: grid ceil((P + L) / SUM_COLUMNS), block FINISH_THREADS threads, no dynamic shared memory.
#define FINISH_THREADS 256
template <typename real>
__global__ void model_step_finish(int P, int L, int B, int rows, real* __restrict__ partials,
                                  double* __restrict__ block_sums, unsigned int* __restrict__ ticket,
                                  real* __restrict__ grads_out, real* __restrict__ stats, int apply,
                                  real* __restrict__ params, real* __restrict__ adam_m,
                                  real* __restrict__ adam_v, int* __restrict__ step, double lr,
                                  double b1, double b2, double eps, double grad_clip) {
    __shared__ double scratch[FINISH_THREADS];  // blockDim.x == FINISH_THREADS
    const int G = P + L;
    grid_sum_columns<real>(partials, rows, G, (real*)scratch);
    const int c0 = blockIdx.x * SUM_COLUMNS, c1 = c0 + SUM_COLUMNS < P ? c0 + SUM_COLUMNS : P;
    const double sq = block_sumsq<real>(partials, c0, c1 > c0 ? c1 : c0, scratch);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = sq;
    if (!last_block_done(ticket)) return;
    double total = 0.0;  // blocks in order
    for (int j = 0; j < (int)gridDim.x; ++j) total += LOAD_CG(block_sums + j);
    step_outputs<real>(partials, P, L, B, sqrt(total), grads_out, stats, apply, params, adam_m,
                       adam_v, step, *step, lr, b1, b2, eps, grad_clip);
}
#endif
