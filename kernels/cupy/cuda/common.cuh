// common.cuh -- helpers shared by the kernels of kernels/cupy/cuda/*.cu.
//
// Every per-task routine is written for one warp: lane `ln` of `nl` lanes takes the entries
// e = ln, ln + nl, ... of each output, and `warp_sync()` separates phases that read what an
// earlier phase wrote. The same code compiles on the host (g++, nl = 1, warp_sync a no-op) for
// the CPU checks in tests/, so the arithmetic of a kernel is checked without a GPU.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define HD __host__ __device__ __forceinline__
#define warp_sync() __syncwarp()
#define LOAD_CG(p) __ldcg(p)
#else
#include <cmath>
#include <cstdint>
#define HD inline
#define __device__
#define __global__
#define __shared__
#define __restrict__
#define warp_sync() ((void)0)
#define LOAD_CG(p) (*(p))
using std::exp; using std::sqrt; using std::tanh; using std::log; using std::cos; using std::sin;
using std::fabs; using std::pow;
#endif

#if defined(__CUDACC_RTC__)
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#endif

// C (M, N) [+]= alpha * A (M, Kd) @ B (Kd, N), all in shared memory, any strides:
// A[m, k] = A[m * as0 + k * as1], B[k, n] = B[k * bs0 + n * bs1], C[m, n] = C[m * cs0 + n].
template <typename real>
HD void warp_matmul(int ln, int nl, int M, int N, int Kd,
                    const real* A, int as0, int as1, const real* B, int bs0, int bs1,
                    real* C, int cs0, bool accumulate, real alpha = real(1)) {
    for (int e = ln; e < M * N; e += nl) {
        const int m = e / N, n = e % N;
        real acc = real(0);
        for (int k = 0; k < Kd; ++k) acc += A[m * as0 + k * as1] * B[k * bs0 + n * bs1];
        if (accumulate) C[m * cs0 + n] += alpha * acc;
        else C[m * cs0 + n] = alpha * acc;
    }
}

// Adam with bias correction for one entry (refimpl/optim.py adam_update); g already clipped.
template <typename real>
HD void adam_entry(real* p, real* m, real* v, real g, real lr, real b1, real one_minus_b1,
                   real b2, real one_minus_b2, real eps, real bc1, real bc2) {
    const real mn = b1 * *m + one_minus_b1 * g;
    const real vn = b2 * *v + one_minus_b2 * (g * g);
    const real step = (mn / bc1) / (sqrt(vn / bc2) + eps);
    *p = *p - lr * step;
    *m = mn;
    *v = vn;
}

// Deterministic sum over the rows of `parts` (rows, n) into parts[0, :], by a fixed pairwise tree:
// while rows > 1: the first rows - ceil(rows/2) rows take the row ceil(rows/2) below them.
// Called by every thread of one block (tid of nthreads); the result does not depend on timing.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
template <typename real>
__device__ void block_tree_sum_rows(real* parts, int rows, int n, int tid, int nthreads) {
    while (rows > 1) {
        const int half = (rows + 1) / 2;
        for (int e = tid; e < (rows - half) * n; e += nthreads) {
            const int r = e / n, c = e % n;
            parts[r * n + c] = LOAD_CG(parts + r * n + c) + LOAD_CG(parts + (r + half) * n + c);
        }
        rows = half;
        __syncthreads();
    }
}

// The same fixed tree over `rows` rows of width n kept in shared memory `stride` elements apart
// (the warps' gradient accumulators of one block), into base[0, :n].
template <typename real>
__device__ void shared_tree_sum_rows(real* base, int rows, int stride, int n) {
    while (rows > 1) {
        const int half = (rows + 1) / 2;
        for (int e = threadIdx.x; e < (rows - half) * n; e += blockDim.x) {
            const int r = e / n, c = e % n;
            base[r * stride + c] += base[(r + half) * stride + c];
        }
        rows = half;
        __syncthreads();
    }
}

// The same tree over a block's threads: every thread holds `v`; the block's sum is returned to all.
// scratch: blockDim.x doubles of shared memory.
__device__ inline double block_tree_sum(double v, double* scratch) {
    const int tid = threadIdx.x;
    scratch[tid] = v;
    __syncthreads();
    int rows = blockDim.x;
    while (rows > 1) {
        const int half = (rows + 1) / 2;
        if (tid < rows - half) scratch[tid] += scratch[tid + half];
        rows = half;
        __syncthreads();
    }
    const double total = scratch[0];
    __syncthreads();
    return total;
}

// Last-block-done: true in exactly one block, after every block has called it (an integer ticket;
// the float results never pass through an atomic). The last block resets the ticket for the next
// launch (or CUDA graph replay).
__device__ inline bool last_block_done(unsigned int* ticket) {
    __shared__ bool is_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int t = atomicAdd(ticket, 1u);
        is_last = (t == gridDim.x - 1);
        if (is_last) *ticket = 0u;
    }
    __syncthreads();
    if (is_last) __threadfence();
    return is_last;
}
#endif
