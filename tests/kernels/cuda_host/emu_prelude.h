// A CPU stand-in for the CUDA execution model, to run the kernels of kernels/cupy/cuda/*.cu unchanged
// (their device branches) in tests: every thread of a block is a std::thread, blocks run one after
// another, __syncwarp / __syncthreads are barriers, shared memory is per-block storage, the
// integer atomics are real atomics. It checks the kernels' parallel schedule (lanes, warps, blocks,
// the warp and block trees, the last-block ticket, Adam in the last block) -- not GPU timing, the
// GPU memory model or the CUDA toolchain.
#pragma once
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __CUDACC__ 1  // compile the sources' device branches
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static  // one block at a time: function-scope statics are that block's

struct emu_dim3 { unsigned x, y, z; };
static emu_dim3 blockIdx, blockDim, gridDim;
static thread_local emu_dim3 threadIdx;
static thread_local std::barrier<>* emu_warp_barrier;
static std::barrier<>* emu_block_barrier;
static unsigned char* emu_dynamic_smem;

// With EMU_JITTER set in the environment every thread sleeps a random 0..63 us after each barrier,
// so that threads run the code between barriers in changing orders (a missing barrier then
// shows as a wrong or changing result).
static const bool emu_jitter = std::getenv("EMU_JITTER") != nullptr;
static thread_local unsigned emu_rng = 12345u;
inline void emu_after_barrier() {
    if (!emu_jitter) return;
    emu_rng = emu_rng * 1664525u + 1013904223u + (unsigned)threadIdx.x;
    std::this_thread::sleep_for(std::chrono::microseconds((emu_rng >> 16) % 64));
}
inline void __syncwarp() { emu_warp_barrier->arrive_and_wait(); emu_after_barrier(); }
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); emu_after_barrier(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { std::abort(); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
template <typename T> inline T __ldcg(const T* p) { return *(const volatile T*)p; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
using std::cos; using std::exp; using std::fabs; using std::log; using std::pow; using std::sin;
using std::sqrt; using std::tanh;

// Run kern() as a grid of `grid` blocks of `block` threads with `smem` bytes of dynamic shared
// memory (filled with 0xFF bytes, a NaN pattern, so that a read before a write shows).
inline void emu_launch(unsigned grid, unsigned block, unsigned long long smem, std::function<void()> kern) {
    std::vector<unsigned char> dyn(smem + 64);
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        std::memset(dyn.data(), 0xFF, dyn.size());
        emu_dynamic_smem = dyn.data() + (16 - (uintptr_t)dyn.data() % 16) % 16;
        std::barrier<> block_barrier((std::ptrdiff_t)block);
        emu_block_barrier = &block_barrier;
        std::vector<std::unique_ptr<std::barrier<>>> warps;
        for (unsigned w = 0; w < (block + 31) / 32; ++w)
            warps.emplace_back(new std::barrier<>((std::ptrdiff_t)std::min(32u, block - 32 * w)));
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([t, &warps, &kern]() {
                threadIdx = {t, 0, 0};
                emu_warp_barrier = warps[t / 32].get();
                kern();
            });
        for (auto& th : threads) th.join();
    }
}
