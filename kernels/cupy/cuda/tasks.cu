// tasks.cu -- on-device linear-regression task batch (SPEC 1.1), seeded per step.
// Mirrors: kernels/cupy/philox.py linear_regression_tasks (the host mirror of this stream); statistically
// the law of refimpl/data.py linear_regression_tasks (w ~ N(0, s^2 I), x ~ U(-r/2, r/2)^d, y = w.x).
// Versions: 1 -- one warp per task, lanes over Philox blocks, then lanes over tokens for y.
// Launch shape: block (32 * WARPS) threads, grid ceil(B / WARPS); dynamic shared memory
// WARPS * d doubles (the weight vectors). Instantiated for float and double.
#include "philox.cuh"

template <typename real>
__global__ void draw_tasks(unsigned long long seed, unsigned int step, int B, int N, int d,
                           double input_range, double weight_scale,
                           real* __restrict__ tokens,     // (B, N+1, d+1)
                           real* __restrict__ targets) {  // (B,)
    extern __shared__ double w_all[];  // (WARPS, d)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x * (blockDim.x / 32) + warp;
    if (b >= B) return;  // whole warps leave together
    draw_linear_regression_task<real>(lane, 32, seed, step, (uint32_t)b, N, d, input_range,
                                      weight_scale, w_all + warp * d,
                                      tokens + (size_t)b * (N + 1) * (d + 1), targets + b);
}
