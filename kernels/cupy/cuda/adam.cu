// adam.cu -- fused Adam with bias correction and global-norm gradient clipping (SPEC 3) on one
// packed parameter vector (every parameter of the model, refimpl.params.param_shapes order).
// Mirrors: refimpl/optim.py adam_update (clip_by_global_norm, then the Adam step per entry).
// Versions: 1 -- two launches: adam_sumsq writes one float64 sum of squares per block (fixed
//   pairwise tree over the block's threads); adam_apply has every block re-sum those partials by the
//   same fixed tree (so all blocks agree on the norm, bit for bit), then update their entries; the
//   last block (integer ticket) advances the step counter, kept on the device so that a captured
//   CUDA graph replays correctly.
// Launch shape (kernels/cupy/build.py adam_launch): block 256 threads, grid ceil(n / (256 * 4)),
//   at most 1024 blocks; both launches use the same grid. Instantiated for float and double.
#include "common.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
template <typename real>
__global__ void adam_sumsq(int n, const real* __restrict__ g, double* __restrict__ block_sums) {
    __shared__ double scratch[256];
    double s = 0.0;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
        const double ge = (double)g[e];
        s += ge * ge;
    }
    const double total = block_tree_sum(s, scratch);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = total;
}

template <typename real>
__global__ void adam_apply(int n, real* __restrict__ params, real* __restrict__ m,
                           real* __restrict__ v, const real* __restrict__ g,
                           const double* __restrict__ block_sums, int* __restrict__ step,
                           unsigned int* __restrict__ ticket, double* __restrict__ norm_out,
                           double lr, double b1, double b2, double eps, double grad_clip) {
    __shared__ double scratch[32];
    __shared__ double shared_norm;
    if (threadIdx.x < 32) {  // every block sums the per-block partials in the same fixed order
        double s = 0.0;
        for (int r = threadIdx.x; r < gridDim.x; r += 32) s += block_sums[r];
        scratch[threadIdx.x] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int r = 0; r < 32; ++r) s += scratch[r];
        shared_norm = sqrt(s);
    }
    __syncthreads();
    const double norm = shared_norm;
    const int t = *step + 1;
    const bool clipping = grad_clip > 0 && norm > grad_clip;
    const real factor = (real)(grad_clip / norm);
    const real bc1 = (real)(1.0 - pow(b1, (double)t)), bc2 = (real)(1.0 - pow(b2, (double)t));
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
        real ge = g[e];
        if (clipping) ge = ge * factor;
        adam_entry<real>(params + e, m + e, v + e, ge, (real)lr, (real)b1, (real)(1.0 - b1),
                                (real)b2, (real)(1.0 - b2), (real)eps, bc1, bc2);
    }
    if (last_block_done(ticket) && threadIdx.x == 0) {
        *step = t;
        *norm_out = norm;
    }
}
#endif
