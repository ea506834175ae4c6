// common.cuh -- helpers shared by the kernels of kernels/cupy/cuda/*.cu.
//
// Every per-task routine is written for one warp: lane `ln` of `nl` lanes takes the entries
// e = ln, ln + nl, ... of each output, and `warp_sync()` separates phases that read what an
// earlier phase wrote. The same code compiles on the host (g++, nl = 1, warp_sync a no-op) for
// the CPU checks in tests/, so the arithmetic of a kernel is checked without a GPU.
// Also here: the deterministic column-parallel sums of the blocks' partial gradient rows
// (block_sum_columns in one block, grid_sum_columns over many), the float64 block tree sum and
// the last-block ticket. Compiles under NVRTC (CuPy), plain nvcc and g++.
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

#if defined(__CUDACC_RTC__)  // NVRTC has no standard headers
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#else  // nvcc (and profilers' source builds) and g++
#include <cstdint>
#endif

// C (M, N) [+]= alpha * A (M, Kd) @ B (Kd, N), all in shared memory, any strides:
// A[m, k] = A[m * as0 + k * as1], B[k, n] = B[k * bs0 + n * bs1], C[m, n] = C[m * cs0 + n].
// Each lane computes 2 x 2 tiles of C in registers (four products per four loads instead of per
// eight), tiles row-major, lane ln taking tiles ln, ln + nl, ...; the tile index advances by
// adding (nl / tiles_n, nl % tiles_n), one division per call rather than one per output. Every
// entry is the same sum as the plain loop: k = 0 .. Kd-1 in order from zero.
template <typename real>
HD void warp_matmul(int ln, int nl, int M, int N, int Kd,
                    const real* A, int as0, int as1, const real* B, int bs0, int bs1,
                    real* C, int cs0, bool accumulate, real alpha = real(1)) {
    if (M <= 0 || N <= 0) return;
    const int tiles_m = (M + 1) / 2, tiles_n = (N + 1) / 2;
    const int dm = nl / tiles_n, dn = nl % tiles_n;
    int tm = ln / tiles_n, tn = ln % tiles_n;
    while (tm < tiles_m) {
        const int m0 = 2 * tm, n0 = 2 * tn;
        const bool m1ok = m0 + 1 < M, n1ok = n0 + 1 < N;
        const real* a0 = A + m0 * as0;
        const real* a1 = A + (m1ok ? m0 + 1 : m0) * as0;  // a duplicate row when M is odd
        const real* b0 = B + n0 * bs1;
        const real* b1 = B + (n1ok ? n0 + 1 : n0) * bs1;
        real c00 = real(0), c01 = real(0), c10 = real(0), c11 = real(0);
        for (int k = 0; k < Kd; ++k) {
            const real x0 = a0[k * as1], x1 = a1[k * as1], y0 = b0[k * bs0], y1 = b1[k * bs0];
            c00 += x0 * y0; c01 += x0 * y1; c10 += x1 * y0; c11 += x1 * y1;
        }
        real* r0 = C + m0 * cs0 + n0;
        real* r1 = r0 + cs0;
        if (accumulate) {
            r0[0] += alpha * c00;
            if (n1ok) r0[1] += alpha * c01;
            if (m1ok) { r1[0] += alpha * c10; if (n1ok) r1[1] += alpha * c11; }
        } else {
            r0[0] = alpha * c00;
            if (n1ok) r0[1] = alpha * c01;
            if (m1ok) { r1[0] = alpha * c10; if (n1ok) r1[1] = alpha * c11; }
        }
        tn += dn;
        tm += dm;
        if (tn >= tiles_n) { tn -= tiles_n; ++tm; }
    }
}

// y_h (M,) = A_h (M, Kd) @ x_h (Kd,) for h < H (heads), all in shared memory, any strides:
// A_h[m, k] = A[h * ah + m * as0 + k * as1], x_h[k] = x[h * xh + k * xs], y_h[m] = y[h * yh + m].
// Lane ln computes the outputs (h, m) = ln, ln + nl, ... of all H * M (row-major), each the plain
// sum k = 0 .. Kd-1 in order from zero. For matrix-vector products, where warp_matmul's 2 x 2
// tiles would compute every product twice.
template <typename real>
HD void warp_matvecs(int ln, int nl, int H, int M, int Kd, const real* A, int ah, int as0, int as1,
                     const real* x, int xh, int xs, real* y, int yh) {
    for (int e = ln; e < H * M; e += nl) {
        const int h = e / M, m = e - h * M;
        const real* ar = A + h * ah + m * as0;
        const real* xr = x + h * xh;
        real s = real(0);
        for (int k = 0; k < Kd; ++k) s += ar[k * as1] * xr[k * xs];
        y[h * yh + m] = s;
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

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// Column sums of partial rows, deterministic and column-parallel. parts (rows, n) in global memory;
// column c of rows [r0, r1) is summed by one thread in a fixed order: eight accumulators take rows
// r0 + k, r0 + k + 8, ... (eight independent loads in flight, coalesced across the threads'
// columns), then ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)).
template <typename real>
__device__ real column_sum(const real* parts, size_t n, int c, int r0, int r1) {
    real a0 = real(0), a1 = real(0), a2 = real(0), a3 = real(0);
    real a4 = real(0), a5 = real(0), a6 = real(0), a7 = real(0);
    int r = r0;
    for (; r + 8 <= r1; r += 8) {
        const real* p = parts + (size_t)r * n + c;
        a0 += LOAD_CG(p);         a1 += LOAD_CG(p + n);     a2 += LOAD_CG(p + 2 * n);
        a3 += LOAD_CG(p + 3 * n); a4 += LOAD_CG(p + 4 * n); a5 += LOAD_CG(p + 5 * n);
        a6 += LOAD_CG(p + 6 * n); a7 += LOAD_CG(p + 7 * n);
    }
    const real* p = parts + (size_t)r * n + c;
    if (r < r1) a0 += LOAD_CG(p);
    if (r + 1 < r1) a1 += LOAD_CG(p + n);
    if (r + 2 < r1) a2 += LOAD_CG(p + 2 * n);
    if (r + 3 < r1) a3 += LOAD_CG(p + 3 * n);
    if (r + 4 < r1) a4 += LOAD_CG(p + 4 * n);
    if (r + 5 < r1) a5 += LOAD_CG(p + 5 * n);
    if (r + 6 < r1) a6 += LOAD_CG(p + 6 * n);
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

// Columns [c0, c0 + cw) of parts (rows, n) summed over the rows INTO parts[0, c0 : c0 + cw], by all
// threads of one block. With fewer columns than threads the rows are cut into `slices` equal
// ranges (slices = threads / cw, at most rows), a thread per (slice, column), the slices' sums
// kept in `scratch` (blockDim.x reals of shared memory) and added in slice order. The order of
// every sum depends only on (rows, n, cw, blockDim.x): the result is the same on every run.
template <typename real>
__device__ void block_sum_columns(real* parts, int rows, int n, int c0, int cw, real* scratch) {
    const int tid = threadIdx.x, nthreads = blockDim.x;
    int slices = nthreads / cw;
    slices = slices < 1 ? 1 : (slices > rows ? rows : slices);
    if (slices == 1) {
        for (int c = c0 + tid; c < c0 + cw; c += nthreads)  // reads then writes only its column
            parts[c] = column_sum<real>(parts, n, c, 0, rows);
    } else {
        if (tid < slices * cw) {
            const int s = tid / cw, c = c0 + tid % cw;
            scratch[tid] = column_sum<real>(parts, n, c, (int)((long long)s * rows / slices),
                                            (int)((long long)(s + 1) * rows / slices));
        }
        __syncthreads();
        for (int c = tid; c < cw; c += nthreads) {
            real v = scratch[c];
            for (int s = 1; s < slices; ++s) v += scratch[s * cw + c];
            parts[c0 + c] = v;
        }
    }
    __threadfence();
    __syncthreads();
}

// The multi-block form, for many partial entries: block j sums the columns
// [j * SUM_COLUMNS, (j + 1) * SUM_COLUMNS) (grid ceil(n / SUM_COLUMNS)), the same order as above.
#define SUM_COLUMNS 32
template <typename real>
__device__ void grid_sum_columns(real* parts, int rows, int n, real* scratch) {
    const int c0 = blockIdx.x * SUM_COLUMNS;
    const int cw = n - c0 < SUM_COLUMNS ? n - c0 : SUM_COLUMNS;
    if (cw > 0) block_sum_columns<real>(parts, rows, n, c0, cw, scratch);
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
