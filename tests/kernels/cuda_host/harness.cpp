// CPU build of the per-task routines of kernels/cupy/cuda/*.cu (one lane, warp_sync a no-op), so that
// their arithmetic is checked against the oracle without a GPU (tests/kernels/test_cuda_host.py).
// The loops over tasks and the reductions here are plain sequential sums: only the per-task code,
// the workspace layouts and the Adam entry are the kernels' own.
#include <vector>
#include "model_step.cu"
#include "block.cu"

static ModelDims make_model(const int* dims, const double* fdims) {
    ModelDims m;
    m.T = dims[0]; m.D = dims[1]; m.H = dims[2]; m.K = dims[3]; m.S = dims[4]; m.L = dims[5];
    m.tied = dims[6]; m.first_softmax = dims[7]; m.softmax = dims[8]; m.causal = dims[9];
    m.y_update = dims[10]; m.lam = fdims[0]; m.clip = fdims[1];
    return m;
}

template <typename real>
static void model_loss_grads(const int* dims, const double* fdims, int B, const real* params,
                             const real* tokens, const real* targets, real* grads, real* stats) {
    const ModelDims m = make_model(dims, fdims);
    const StepWorkspace w = model_step_workspace(m);
    const int P = model_num_params(m), TD = m.T * m.D;
    std::vector<real> ws(w.total, real(0));
    for (int b = 0; b < B; ++b) {
        for (int e = 0; e < TD; ++e) ws[w.Xs + e] = tokens[b * TD + e];
        ws[w.target] = targets[b];
        model_task_step<real>(0, 1, m, params, ws.data(), (real)(1.0 / B));
    }
    for (int e = 0; e < P; ++e) grads[e] = ws[w.gacc + e];
    for (int l = 0; l < m.L; ++l) stats[l] = ws[w.gacc + P + l] / (real)B;
}

static BlockDims make_block(const int* dims, const double* fdims) {
    BlockDims b;
    b.T = dims[0]; b.D = dims[1]; b.H = dims[2]; b.K = dims[3]; b.S = dims[4]; b.F = dims[5];
    b.softmax = dims[6]; b.causal = dims[7]; b.y_update = dims[8]; b.ln1 = dims[9]; b.mlp = dims[10];
    b.ln2 = dims[11]; b.lam = fdims[0]; b.clip = fdims[1];
    return b;
}

template <typename real>
static void block_fwd_bwd(const int* dims, const double* fdims, int B, const real* W, const real* X,
                          const real* dXout, real* Xout, real* dX, real* grads) {
    const BlockDims bd = make_block(dims, fdims);
    const BlockWorkspace w = block_workspace(bd);
    const int TD = bd.T * bd.D, G = block_param_layout(bd).total;
    std::vector<real> ws(w.total, real(0));
    for (int b = 0; b < B; ++b) {
        for (int e = 0; e < TD; ++e) { ws[w.X + e] = X[b * TD + e]; ws[w.dX2 + e] = dXout[b * TD + e]; }
        block_task_forward<real>(0, 1, bd, W, ws.data());
        for (int e = 0; e < TD; ++e) Xout[b * TD + e] = block_output<real>(bd, ws.data(), e);
        block_task_backward<real>(0, 1, bd, W, ws.data(), dX + b * TD);
    }
    for (int e = 0; e < G; ++e) grads[e] = ws[w.gacc + e];
}

template <typename real>
static void adam(int n, real* p, real* m, real* v, const real* g, int t, const double* c) {
    // c: lr, b1, b2, eps, grad_clip; the norm and the clipping as in adam.cu
    double s = 0.0;
    for (int e = 0; e < n; ++e) s += (double)g[e] * (double)g[e];
    const double norm = sqrt(s);
    const bool clipping = c[4] > 0 && norm > c[4];
    const real factor = (real)(c[4] / norm);
    const real bc1 = (real)(1.0 - pow(c[1], (double)t)), bc2 = (real)(1.0 - pow(c[2], (double)t));
    for (int e = 0; e < n; ++e) {
        real ge = g[e];
        if (clipping) ge = ge * factor;
        adam_entry<real>(p + e, m + e, v + e, ge, (real)c[0], (real)c[1], (real)(1.0 - c[1]),
                         (real)c[2], (real)(1.0 - c[2]), (real)c[3], bc1, bc2);
    }
}

extern "C" {
void philox_blocks(int n, const uint32_t* counters, uint32_t k0, uint32_t k1, uint32_t* out) {
    for (int i = 0; i < n; ++i) {
        Philox4 c;
        for (int j = 0; j < 4; ++j) c.v[j] = counters[4 * i + j];
        const Philox4 r = philox4x32_10(c, k0, k1);
        for (int j = 0; j < 4; ++j) out[4 * i + j] = r.v[j];
    }
}
void draw_tasks_f64(uint64_t seed, uint32_t step, int B, int N, int d, double r, double s,
                    double* tokens, double* targets) {
    std::vector<double> w(d);
    for (int b = 0; b < B; ++b)
        draw_linear_regression_task<double>(0, 1, seed, step, b, N, d, r, s, w.data(),
                                            tokens + (size_t)b * (N + 1) * (d + 1), targets + b);
}
void draw_tasks_f32(uint64_t seed, uint32_t step, int B, int N, int d, double r, double s,
                    float* tokens, float* targets) {
    std::vector<double> w(d);
    for (int b = 0; b < B; ++b)
        draw_linear_regression_task<float>(0, 1, seed, step, b, N, d, r, s, w.data(),
                                           tokens + (size_t)b * (N + 1) * (d + 1), targets + b);
}
int model_workspace_reals(const int* dims) {
    const double f[2] = {1.0, 0.0};
    return model_step_workspace(make_model(dims, f)).total;
}
int model_workspace_query_row_offset(const int* dims) {  // where u, z, w, g start
    const double f[2] = {1.0, 0.0};
    return model_step_workspace(make_model(dims, f)).qu;
}
void model_workspace_offsets(const int* dims, int* out) {  // StepWorkspace's fields in order
    const double f[2] = {1.0, 0.0};
    const StepWorkspace w = model_step_workspace(make_model(dims, f));
    const int o[] = {w.Xs, w.Xc, w.Q, w.Kt, w.V, w.P, w.O, w.U, w.dX, w.dU, w.dO, w.dP, w.dQ,
                     w.dK, w.dV, w.dXin, w.gacc, w.readout, w.target, w.qu, w.qz, w.qw, w.qg,
                     w.total};
    for (int i = 0; i < (int)(sizeof(o) / sizeof(o[0])); ++i) out[i] = o[i];
}
void model_task_step_f64(const int* dims, const double* fdims, const double* params, double* ws) {
    model_task_step<double>(0, 1, make_model(dims, fdims), params, ws, 1.0);  // one task, B = 1
}
int block_workspace_reals(const int* dims) {
    const double f[2] = {1.0, 0.0};
    return block_workspace(make_block(dims, f)).total;
}
int block_num_params(const int* dims) {
    const double f[2] = {1.0, 0.0};
    return block_param_layout(make_block(dims, f)).total;
}
void model_loss_grads_f64(const int* dims, const double* fdims, int B, const double* params,
                          const double* tokens, const double* targets, double* grads, double* stats) {
    model_loss_grads<double>(dims, fdims, B, params, tokens, targets, grads, stats);
}
void model_loss_grads_f32(const int* dims, const double* fdims, int B, const float* params,
                          const float* tokens, const float* targets, float* grads, float* stats) {
    model_loss_grads<float>(dims, fdims, B, params, tokens, targets, grads, stats);
}
void block_f64(const int* dims, const double* fdims, int B, const double* W, const double* X,
               const double* dXout, double* Xout, double* dX, double* grads) {
    block_fwd_bwd<double>(dims, fdims, B, W, X, dXout, Xout, dX, grads);
}
void block_f32(const int* dims, const double* fdims, int B, const float* W, const float* X,
               const float* dXout, float* Xout, float* dX, float* grads) {
    block_fwd_bwd<float>(dims, fdims, B, W, X, dXout, Xout, dX, grads);
}
void adam_f64(int n, double* p, double* m, double* v, const double* g, int t, const double* c) {
    adam<double>(n, p, m, v, g, t, c);
}
void adam_f32(int n, float* p, float* m, float* v, const float* g, int t, const double* c) {
    adam<float>(n, p, m, v, g, t, c);
}
}
