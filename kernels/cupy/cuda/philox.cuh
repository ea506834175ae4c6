// philox.cuh -- Philox4x32-10 (Salmon et al. 2011; Random123, cuRAND) and the linear-regression
// task batch it draws (SPEC 1.1). Host mirror: kernels/cupy/philox.py (checked against Random123's
// known answers and numpy.random.Philox); the g++ build of this header is checked against that
// mirror in tests/kernels/test_cuda_host.py.
//
// Task stream: key = (seed lo, seed hi), counter = (j, task b, step, stream); stream 0 draws w,
// stream 1 draws x; one block of 4 words gives 2 float64 uniforms with 53 random bits each.
//   w[2j + k] = s * BoxMuller(u0, u1)[k],  x[e = 2j + k] = -r/2 + r * u_k,  y_t = sum_i w_i x_ti.
#pragma once
#include "common.cuh"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define TASK_STREAM_W 0u
#define TASK_STREAM_X 1u

struct Philox4 { uint32_t v[4]; };

HD uint32_t mulhi32(uint32_t a, uint32_t b) {
    return (uint32_t)(((uint64_t)a * (uint64_t)b) >> 32);
}

HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) { k0 += PHILOX_W0; k1 += PHILOX_W1; }
        const uint32_t hi0 = mulhi32(PHILOX_M0, c.v[0]), lo0 = PHILOX_M0 * c.v[0];
        const uint32_t hi1 = mulhi32(PHILOX_M1, c.v[2]), lo1 = PHILOX_M1 * c.v[2];
        Philox4 n;
        n.v[0] = hi1 ^ c.v[1] ^ k0;
        n.v[1] = lo1;
        n.v[2] = hi0 ^ c.v[3] ^ k1;
        n.v[3] = lo0;
        c = n;
    }
    return c;
}

// Two uniforms in [0, 1) with 53 bits each from words (a0, b0) and (a1, b1).
HD void uniforms53(const Philox4& r, double* u0, double* u1) {
    *u0 = ((double)(r.v[0] >> 5) * 67108864.0 + (double)(r.v[1] >> 6)) * (1.0 / 9007199254740992.0);
    *u1 = ((double)(r.v[2] >> 5) * 67108864.0 + (double)(r.v[3] >> 6)) * (1.0 / 9007199254740992.0);
}

HD Philox4 task_block(uint64_t seed, uint32_t step, uint32_t task, uint32_t stream, uint32_t j) {
    Philox4 c;
    c.v[0] = j; c.v[1] = task; c.v[2] = step; c.v[3] = stream;
    return philox4x32_10(c, (uint32_t)(seed & 0xFFFFFFFFull), (uint32_t)(seed >> 32));
}

// One task's tokens (T = N + 1 rows of D = d + 1, row-major) and target, drawn by the lanes of a
// warp. `w` is d doubles of scratch. Products and sums are rounded one at a time (no fused
// multiply-add) so the batch equals the host mirror's.
template <typename real>
HD void draw_linear_regression_task(int ln, int nl, uint64_t seed, uint32_t step, uint32_t task,
                                    int N, int d, double input_range, double weight_scale,
                                    double* w, real* tok, real* target) {
    const int D = d + 1, T = N + 1;
    for (int j = ln; j < (d + 1) / 2; j += nl) {
        double u0, u1;
        uniforms53(task_block(seed, step, task, TASK_STREAM_W, (uint32_t)j), &u0, &u1);
        const double rad = sqrt(-2.0 * log(1.0 - u0));
        const double ang = 2.0 * 3.141592653589793 * u1;
        w[2 * j] = weight_scale * (rad * cos(ang));
        if (2 * j + 1 < d) w[2 * j + 1] = weight_scale * (rad * sin(ang));
    }
    warp_sync();
    for (int j = ln; j < (T * d + 1) / 2; j += nl) {
        double u[2];
        uniforms53(task_block(seed, step, task, TASK_STREAM_X, (uint32_t)j), &u[0], &u[1]);
        for (int k = 0; k < 2; ++k) {
            const int e = 2 * j + k;
            if (e < T * d) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
                const double x = __dadd_rn(-input_range / 2, __dmul_rn(input_range, u[k]));
#else
                const double x = -input_range / 2 + input_range * u[k];
#endif
                tok[(e / d) * D + e % d] = (real)x;
            }
        }
    }
    warp_sync();
    // labels from the float64 inputs: read back when real is double, redrawn when it is float
    for (int t = ln; t < T; t += nl) {
        double y = 0.0;
        for (int i = 0; i < d; ++i) {
            double x;
            if (sizeof(real) == sizeof(double)) {
                x = (double)tok[t * D + i];
            } else {
                const int e = t * d + i;
                double u[2];
                uniforms53(task_block(seed, step, task, TASK_STREAM_X, (uint32_t)(e / 2)), &u[0], &u[1]);
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
                x = __dadd_rn(-input_range / 2, __dmul_rn(input_range, u[e % 2]));
#else
                x = -input_range / 2 + input_range * u[e % 2];
#endif
            }
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
            y = __dadd_rn(y, __dmul_rn(w[i], x));
#else
            y = y + w[i] * x;
#endif
        }
        if (t == T - 1) { *target = (real)y; tok[t * D + d] = real(0); }
        else tok[t * D + d] = (real)y;
    }
    warp_sync();
}
