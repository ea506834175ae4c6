"""numba-cuda, one warp per task, for attention-only models (the paper's LSA; softmax layers, heads,
tied or deep, token clipping, dampening, y_update): loss and parameter gradients of a batch in one
launch, the task's workspace and its gradient accumulator in shared memory. Models with LayerNorm
or an MLP run kernels/numba/gpu_warp_block.py, built on this module's step_kernel and device
functions (matmul, attention_forward / attention_backward); the choice between the two and the
thread-per-task kernel is kernels/numba/gpu_warp_host.py warp_kernel.

Mirrors refimpl/loss.py loss_and_grads (model_forward + mse + model_backward of refimpl/model.py),
the same computation as kernels/cupy/cuda/model_step.cu, written for Numba: lane ln of a warp's 32
takes the entries ln, ln + 32, ... of every product; the last layer computes only its query row.
Versions: 1 -- warp_step_kernel: each warp runs tasks_per_warp consecutive tasks and adds their
  gradients (and 0.5 r_l^2 per layer) in task order into its shared-memory accumulator; the warps
  of a block are summed by a fixed pairwise tree into one partial row per block; then
  kernels/numba/gpu.py column_sums (fixed order), the norm kernel and Adam. Every warp of a block
  runs the same number of task iterations (a warp past the last task repeats it with a zero loss
  gradient and adds nothing), so block-wide barriers separate the phases (the CUDA simulator has
  no __syncwarp).
Launch shape (kernels/numba/gpu_warp_host.py WarpPlan): kernels/cupy/build.py model_step_launch
  (the same workspace, d = 0) with the device's SMs and 48 KiB of dynamic shared memory per block
  (Numba does not raise the opt-in limit): block 32 * warps_per_block threads, grid
  ceil(B / (warps_per_block * tasks_per_warp)), dynamic shared memory warps_per_block * warp_bytes;
  partials (grid, P + L). A model whose warp_bytes exceed those 48 KiB (less build.py's
  SMEM_STATIC_RESERVE) runs one thread per task instead.
Kernels are built per dtype on first use.
"""
import math

import numpy as np
from numba import cuda, float32, float64

# dm: the model's sizes and flags, then the workspace offsets of one warp (reals)
(T_, D_, H_, K_, S_, L_, TIED_, FSOFT_, SOFT_, CAUSAL_, YUP_, CLIP_, NP_, W_TOTAL,
 W_XS, W_XC, W_Q, W_KT, W_V, W_P, W_O, W_U, W_DX, W_DU, W_DO, W_DP, W_DQ, W_DK, W_DV, W_DXIN,
 W_GACC, W_READ, W_TGT) = range(33)
NUM_DM = 33
# cst: constants in the data's dtype
C_ZERO, C_ONE, C_LAM, C_CLIP, C_INV_B, C_SQRT_K, C_HALF = range(7)
NUM_CST = 7

# ----------------------------------------------------------------------------------------------
_KERNELS = {}


def warp_step_kernel(dtype):
    dt = np.dtype(dtype)
    if dt not in _KERNELS:
        _KERNELS[dt] = step_kernel(float64 if dt == np.float64 else float32, _task_step())
    return _KERNELS[dt]


_DEVICE = {}


def device_functions():
    """{"matmul", "attention_forward", "attention_backward", "loss_and_seed"}: the warp's device
    functions, built on
    first use (dtype-generic: compiled per argument types). kernels/numba/gpu_warp_block.py builds
    its LayerNorm / MLP block on them, with a dm table whose first NUM_DM entries mean the same."""
    if not _DEVICE:
        _DEVICE.update(_device_functions())
    return _DEVICE


def _device_functions():
    @cuda.jit(device=True)
    def matmul(ln, M, N, Kd, A, ao, as0, as1, Bm, bo, bs0, bs1, C, co, cs0, acc, zero):
        """C[co + m cs0 + n] (+)= sum_k A[ao + m as0 + k as1] Bm[bo + k bs0 + n bs1], lanes over (m, n)."""
        e = ln
        while e < M * N:
            m = e // N
            n = e - m * N
            s = zero
            for k in range(Kd):
                s += A[ao + m * as0 + k * as1] * Bm[bo + k * bs0 + n * bs1]
            if acc:
                C[co + m * cs0 + n] += s
            else:
                C[co + m * cs0 + n] = s
            e += 32

    @cuda.jit(device=True)
    def attention_forward(ln, dm, soft, q0, pv, wo, sm, w0, cst, xo):
        """Q (rows q0..), K, V, scores or probabilities P (rows q0..), O, U = O W_p (rows q0..)."""
        T, D, H, K, S = dm[T_], dm[D_], dm[H_], dm[K_], dm[S_]
        HK, TQ, zero = H * K, T - q0, cst[C_ZERO]
        DHK = D * HK
        matmul(ln, TQ, HK, D, sm, xo + q0 * D, D, 1, pv, wo, HK, 1, sm, w0 + dm[W_Q] + q0 * HK, HK, 0, zero)
        matmul(ln, S, HK, D, sm, xo, D, 1, pv, wo + DHK, HK, 1, sm, w0 + dm[W_KT], HK, 0, zero)
        matmul(ln, S, HK, D, sm, xo, D, 1, pv, wo + 2 * DHK, HK, 1, sm, w0 + dm[W_V], HK, 0, zero)
        cuda.syncthreads()
        for h in range(H):  # scores^h = Q^h K^h^T (T, S)
            matmul(ln, TQ, S, K, sm, w0 + dm[W_Q] + q0 * HK + h * K, HK, 1, sm, w0 + dm[W_KT] + h * K, 1,
                   HK, sm, w0 + dm[W_P] + h * T * S + q0 * S, S, 0, zero)
        cuda.syncthreads()
        if soft:
            sq = cst[C_SQRT_K]
            r = ln
            while r < H * TQ:
                h = r // TQ
                t = q0 + r - h * TQ
                row = w0 + dm[W_P] + (h * T + t) * S
                n = S
                if dm[CAUSAL_] and t + 1 < S:
                    n = t + 1
                mx = sm[row] / sq
                for s in range(n):
                    sm[row + s] = sm[row + s] / sq
                    if sm[row + s] > mx:
                        mx = sm[row + s]
                tot = zero
                for s in range(n):
                    sm[row + s] = math.exp(sm[row + s] - mx)
                    tot += sm[row + s]
                for s in range(n):
                    sm[row + s] = sm[row + s] / tot
                for s in range(n, S):
                    sm[row + s] = zero
                r += 32
            cuda.syncthreads()
        for h in range(H):  # O^h = P^h V^h
            matmul(ln, TQ, K, S, sm, w0 + dm[W_P] + h * T * S + q0 * S, S, 1, sm, w0 + dm[W_V] + h * K, HK, 1,
                   sm, w0 + dm[W_O] + q0 * HK + h * K, HK, 0, zero)
        cuda.syncthreads()
        matmul(ln, TQ, D, HK, sm, w0 + dm[W_O] + q0 * HK, HK, 1, pv, wo + 3 * DHK, D, 1, sm,
               w0 + dm[W_U] + q0 * D, D, 0, zero)
        cuda.syncthreads()

    @cuda.jit(device=True)
    def attention_backward(ln, dm, soft, q0, pv, wo, sm, w0, cst, xo, go):
        """dU (rows q0..) -> dXin; adds the weight gradients to sm[go ...] (W_q, W_k, W_v, W_p)."""
        T, D, H, K, S = dm[T_], dm[D_], dm[H_], dm[K_], dm[S_]
        HK, TQ, zero = H * K, T - q0, cst[C_ZERO]
        DHK = D * HK
        Oq, dUq, dOq = w0 + dm[W_O] + q0 * HK, w0 + dm[W_DU] + q0 * D, w0 + dm[W_DO] + q0 * HK
        matmul(ln, HK, D, TQ, sm, Oq, 1, HK, sm, dUq, D, 1, sm, go + 3 * DHK, D, 1, zero)  # dW_p += O^T dU
        matmul(ln, TQ, HK, D, sm, dUq, D, 1, pv, wo + 3 * DHK, 1, D, sm, dOq, HK, 0, zero)  # dO = dU W_p^T
        cuda.syncthreads()
        for h in range(H):
            Pq = w0 + dm[W_P] + h * T * S + q0 * S
            matmul(ln, TQ, S, K, sm, dOq + h * K, HK, 1, sm, w0 + dm[W_V] + h * K, 1, HK, sm,
                   w0 + dm[W_DP] + h * T * S + q0 * S, S, 0, zero)  # dP = dO V^T
            matmul(ln, S, K, TQ, sm, Pq, 1, S, sm, dOq + h * K, HK, 1, sm, w0 + dm[W_DV] + h * K, HK, 0,
                   zero)  # dV = P^T dO
        cuda.syncthreads()
        if soft:  # dS = P (dP - sum_s dP P) / sqrt(K)
            sq = cst[C_SQRT_K]
            r = ln
            while r < H * TQ:
                h = r // TQ
                row = (h * T + q0 + r - h * TQ) * S
                p, g = w0 + dm[W_P] + row, w0 + dm[W_DP] + row
                dot = zero
                for s in range(S):
                    dot += sm[g + s] * sm[p + s]
                for s in range(S):
                    sm[g + s] = (sm[p + s] * (sm[g + s] - dot)) / sq
                r += 32
            cuda.syncthreads()
        for h in range(H):
            dPq = w0 + dm[W_DP] + h * T * S + q0 * S
            matmul(ln, TQ, K, S, sm, dPq, S, 1, sm, w0 + dm[W_KT] + h * K, HK, 1, sm,
                   w0 + dm[W_DQ] + q0 * HK + h * K, HK, 0, zero)  # dQ = dS K
            matmul(ln, S, K, TQ, sm, dPq, 1, S, sm, w0 + dm[W_Q] + q0 * HK + h * K, HK, 1, sm,
                   w0 + dm[W_DK] + h * K, HK, 0, zero)  # dK = dS^T Q
        cuda.syncthreads()
        matmul(ln, D, HK, TQ, sm, xo + q0 * D, 1, D, sm, w0 + dm[W_DQ] + q0 * HK, HK, 1, sm, go, HK, 1, zero)
        matmul(ln, D, HK, S, sm, xo, 1, D, sm, w0 + dm[W_DK], HK, 1, sm, go + DHK, HK, 1, zero)
        matmul(ln, D, HK, S, sm, xo, 1, D, sm, w0 + dm[W_DV], HK, 1, sm, go + 2 * DHK, HK, 1, zero)
        e = ln
        while e < T * D:  # dX = dQ W_q^T (query rows) + dK W_k^T + dV W_v^T (key rows)
            t = e // D
            i = e - t * D
            acc = zero
            if t >= q0:
                for j in range(HK):
                    acc += sm[w0 + dm[W_DQ] + t * HK + j] * pv[wo + i * HK + j]
            if t < S:
                kv = zero
                for j in range(HK):
                    kv += sm[w0 + dm[W_DK] + t * HK + j] * pv[wo + DHK + i * HK + j]
                vv = zero
                for j in range(HK):
                    vv += sm[w0 + dm[W_DV] + t * HK + j] * pv[wo + 2 * DHK + i * HK + j]
                acc = acc + kv + vv
            sm[w0 + dm[W_DXIN] + e] = acc
            e += 32
        cuda.syncthreads()

    @cuda.jit(device=True)
    def loss_and_seed(ln, dm, sm, w0, cst, active):
        """After the forward: 0.5 r_l^2 of every read-out added to the accumulator, and the
        backward's seed dX = d loss / d (last output), nonzero only at [query, -1] where
        y_hat = -H[query, -1] and d loss / d y_hat = (y_hat - y) / B (only the last read-out has a
        loss). A task that is not active adds nothing and seeds zeros."""
        TD, L, zero = dm[T_] * dm[D_], dm[L_], cst[C_ZERO]
        target = sm[w0 + dm[W_TGT]]
        gacc = w0 + dm[W_GACC]
        if ln == 0 and active:
            for l in range(L):
                r = sm[w0 + dm[W_READ] + l] - target
                sm[gacc + dm[NP_] + l] += cst[C_HALF] * (r * r)
        dread = zero
        if active:
            dread = cst[C_INV_B] * (sm[w0 + dm[W_READ] + L - 1] - target)
        e = ln
        while e < TD:
            sm[w0 + dm[W_DX] + e] = -dread if e == TD - 1 else zero
            e += 32
        cuda.syncthreads()

    return {"matmul": matmul, "attention_forward": attention_forward,
            "attention_backward": attention_backward, "loss_and_seed": loss_and_seed}


def _task_step():
    """The attention-only model's task_step(ln, dm, pv, sm, w0, cst, active) for step_kernel."""
    fns = device_functions()
    attention_forward, attention_backward = fns["attention_forward"], fns["attention_backward"]
    loss_and_seed = fns["loss_and_seed"]

    @cuda.jit(device=True)
    def task_step(ln, dm, pv, sm, w0, cst, active):
        """One task (tokens at W_XS, target at W_TGT): forward, loss, backward; gradients and
        0.5 r_l^2 added to the accumulator (nothing added when not active)."""
        T, D, L = dm[T_], dm[D_], dm[L_]
        TD, gacc = T * D, w0 + dm[W_GACC]
        setsz = 4 * D * dm[H_] * dm[K_]
        lam, c, zero = cst[C_LAM], cst[C_CLIP], cst[C_ZERO]
        for l in range(L):  # forward
            wo = 0 if dm[TIED_] else l * setsz
            xo = w0 + dm[W_XS] + l * TD
            out = w0 + dm[W_XS] + (l + 1) * TD if l + 1 < L else w0 + dm[W_XC]
            soft = 1 if (dm[SOFT_] != 0 or (l == 0 and dm[FSOFT_] != 0)) else 0
            q0 = T - 1 if l == L - 1 else 0
            attention_forward(ln, dm, soft, q0, pv, wo, sm, w0, cst, xo)
            e = q0 * D + ln
            while e < TD:  # x_out = clip(x_in + lam mask U)
                mask = cst[C_ONE] if (not dm[YUP_] or e % D == D - 1) else zero
                x = sm[xo + e] + lam * (sm[w0 + dm[W_U] + e] * mask)
                if dm[CLIP_]:
                    x = -c if x < -c else (c if x > c else x)
                sm[out + e] = x
                e += 32
            cuda.syncthreads()
            if ln == 0:
                sm[w0 + dm[W_READ] + l] = -sm[out + TD - 1]  # y_hat = -H[query, -1]
            cuda.syncthreads()
        loss_and_seed(ln, dm, sm, w0, cst, active)
        for l in range(L - 1, -1, -1):  # backward
            wo = 0 if dm[TIED_] else l * setsz
            xo = w0 + dm[W_XS] + l * TD
            soft = 1 if (dm[SOFT_] != 0 or (l == 0 and dm[FSOFT_] != 0)) else 0
            q0 = T - 1 if l == L - 1 else 0
            if l < L - 1:  # recompute this layer's attention (the last one is still in place)
                attention_forward(ln, dm, soft, q0, pv, wo, sm, w0, cst, xo)
            e = q0 * D + ln
            while e < TD:  # rows below q0 (the last layer's context) get no gradient there
                mask = cst[C_ONE] if (not dm[YUP_] or e % D == D - 1) else zero
                dx = sm[w0 + dm[W_DX] + e]
                if dm[CLIP_]:
                    x = sm[xo + e] + lam * (sm[w0 + dm[W_U] + e] * mask)
                    ax = -x if x < zero else x
                    dx = dx if ax <= c else zero
                    sm[w0 + dm[W_DX] + e] = dx
                sm[w0 + dm[W_DU] + e] = (lam * dx) * mask
                e += 32
            cuda.syncthreads()
            attention_backward(ln, dm, soft, q0, pv, wo, sm, w0, cst, xo, gacc + wo)
            e = ln
            while e < TD:
                sm[w0 + dm[W_DX] + e] = sm[w0 + dm[W_DX] + e] + sm[w0 + dm[W_DXIN] + e]
                e += 32
            cuda.syncthreads()

    return task_step


def step_kernel(nbtype, task_step):
    """The launch around task_step(ln, dm, pv, sm, w0, cst, active) (one task at W_XS and W_TGT of
    the warp's workspace; its gradients and 0.5 r_l^2 added at W_GACC): tasks per warp in order,
    warps summed by a fixed tree, one partial row per block. nbtype: numba's float32 or float64."""

    @cuda.jit
    def kernel(tok, y, pv, dm, cst, B, tpw, partials):
        """partials[block] (P + L,) = this block's tasks' gradients and sums of 0.5 r_l^2."""
        sm = cuda.shared.array(0, nbtype)
        tid = cuda.threadIdx.x
        warp, ln, wpb = tid // 32, tid % 32, cuda.blockDim.x // 32
        W = dm[W_TOTAL]
        w0 = warp * W
        G = dm[NP_] + dm[L_]
        T, D = dm[T_], dm[D_]
        e = ln
        while e < G:
            sm[w0 + dm[W_GACC] + e] = cst[C_ZERO]
            e += 32
        cuda.syncthreads()
        for it in range(tpw):
            b = (cuda.blockIdx.x * wpb + warp) * tpw + it
            active = b < B
            bb = b if active else B - 1  # the last task again, adding nothing
            e = ln
            while e < T * D:
                t = e // D
                sm[w0 + dm[W_XS] + e] = tok[bb, t, e - t * D]
                e += 32
            if ln == 0:
                sm[w0 + dm[W_TGT]] = y[bb]
            cuda.syncthreads()
            task_step(ln, dm, pv, sm, w0, cst, active)
        cuda.syncthreads()
        rows = wpb  # warps -> one row: the fixed pairwise tree of model_step.cu
        while rows > 1:
            half = (rows + 1) // 2
            e = tid
            while e < (rows - half) * G:
                r = e // G
                c = e - r * G
                sm[r * W + dm[W_GACC] + c] += sm[(r + half) * W + dm[W_GACC] + c]
                e += cuda.blockDim.x
            rows = half
            cuda.syncthreads()
        e = tid
        while e < G:
            partials[cuda.blockIdx.x * G + e] = sm[dm[W_GACC] + e]
            e += cuda.blockDim.x

    return kernel
