"""numba-cuda, one warp per task, for models with LayerNorm and / or an MLP in their blocks: loss
and parameter gradients of a batch in one launch, the task's workspace and its gradient
accumulator in shared memory (kernels/numba/gpu_warp.py runs the attention-only models).

Mirrors refimpl/loss.py loss_and_grads through refimpl/model.py and refimpl/block.py, per task:
    A = LN1(X); X1 = clip(X + lam * mask_y * Attn(A)); X2 = X1 + lam * MLP(LN2(X1))
with LN1 where cfg.layer_has_ln(l) (ln_placement), softmax or linear attention per layer, LN2 with
layernorm and an MLP, clipping and y_update each optional (refimpl/layers.py layernorm_*, mlp_*,
gelu_* (tanh form), clip_*; refimpl/attention.py). The same block as kernels/cupy/cuda/block.cu,
but the whole model in one launch, as kernels/cupy/cuda/model_step.cu does for attention only.
Lanes: every product a lane per output entry (gpu_warp.py's matmul and attention functions);
LayerNorm a lane per row (its parameter gradients a lane per column); the last layer computes its
query row only after its keys and values (only that row reaches the read-out).
Versions: 1 -- block_step_kernel: gpu_warp.step_kernel around this task_step: the forward keeps
  every layer's input X_l; the backward recomputes layer l's forward from X_l (l < L - 1: the last
  layer's caches are still in place), then runs its backward, adding the parameter gradients into
  the warp's accumulator (a tied block sums its applications in layer order); tasks in order per
  warp, warps by gpu_warp's fixed tree, blocks by kernels/numba/gpu.py column_sums. No atomics.
Workspace of one warp (reals; kernels/numba/gpu_warp_host.py block_dims): the layer inputs, the
  caches of one layer, the backward scratch; the MLP's hidden activations share the attention
  backward's scratch (the MLP's forward and backward run while that scratch is free).
Launch shape: that of gpu_warp.py (kernels/cupy/build.py model_step_launch, 48 KiB per block).
"""
import math

import numpy as np
from numba import cuda, float32, float64

from kernels.numba import gpu_warp as gw
from kernels.numba.gpu_warp import (C_CLIP, C_HALF, C_LAM, C_ONE, C_ZERO, D_, L_, NUM_CST, NUM_DM,
                                    T_, W_DU, W_DX, W_DXIN, W_GACC, W_READ, W_U, W_XC, W_XS, YUP_,
                                    CLIP_)
from kernels.numba.layout import (NUM_LAY, Y_B1, Y_B2, Y_LN1, Y_LN1O, Y_LN1S, Y_LN2O, Y_LN2S,
                                  Y_SOFTMAX, Y_W1, Y_W2, Y_WQ)

# dm: gpu_warp.py's NUM_DM entries (same meaning: its attention functions read them), then these,
# then the per-application rows of kernels/numba/layout.py's `lay` (flags, parameter offsets)
(F_, MLP_, LN2_, W_A, W_XH1, W_R1, W_X1, W_MIN, W_XH2, W_R2, W_HH, W_GG) = range(NUM_DM, NUM_DM + 12)
LAY0 = NUM_DM + 12  # dm[LAY0 + l * NUM_LAY + Y_name]
# cst: gpu_warp.py's constants, then these (in the data's dtype)
C_EPS, C_GELU_C, C_GELU_A, C_GELU_3A, C_WIDTH = range(NUM_CST, NUM_CST + 5)
NUM_BLOCK_CST = NUM_CST + 5

# ----------------------------------------------------------------------------------------------
_KERNELS = {}


def block_step_kernel(dtype):
    dt = np.dtype(dtype)
    if dt not in _KERNELS:
        _KERNELS[dt] = gw.step_kernel(float64 if dt == np.float64 else float32, _task_step())
    return _KERNELS[dt]


def _layer_functions():
    """LayerNorm and MLP of rows r0..T-1 of (T, D) matrices in shared memory, forward and backward."""
    matmul = gw.device_functions()["matmul"]

    @cuda.jit(device=True)
    def layernorm_forward(ln, r0, T, D, pv, so, oo, sm, x, xh, rs, out, cst):
        """out = xhat * scale + offset (a lane per row); caches xhat (T, D) and rstd (T,)."""
        t = r0 + ln
        while t < T:
            row = t * D
            mean = cst[C_ZERO]
            for i in range(D):
                mean += sm[x + row + i]
            mean = mean / cst[C_WIDTH]
            var = cst[C_ZERO]
            for i in range(D):
                c = sm[x + row + i] - mean
                var += c * c
            var = var / cst[C_WIDTH]
            r = cst[C_ONE] / math.sqrt(var + cst[C_EPS])
            sm[rs + t] = r
            for i in range(D):
                h = (sm[x + row + i] - mean) * r
                sm[xh + row + i] = h
                sm[out + row + i] = h * pv[so + i] + pv[oo + i]
            t += 32

    @cuda.jit(device=True)
    def layernorm_backward(ln, r0, T, D, pv, so, sm, dy, xh, rs, gs, go, dx, cst):
        """dscale += sum_t dy xhat at sm[gs], doffset += sum_t dy at sm[go] (a lane per column);
        dx += rstd (dxhat - mean dxhat - xhat mean(dxhat xhat)), dxhat = dy scale (a lane per row)."""
        i = ln
        while i < D:
            s, o = cst[C_ZERO], cst[C_ZERO]
            for t in range(r0, T):
                s += sm[dy + t * D + i] * sm[xh + t * D + i]
                o += sm[dy + t * D + i]
            sm[gs + i] += s
            sm[go + i] += o
            i += 32
        t = r0 + ln
        while t < T:
            row = t * D
            m1, m2 = cst[C_ZERO], cst[C_ZERO]
            for i in range(D):
                g = sm[dy + row + i] * pv[so + i]
                m1 += g
                m2 += g * sm[xh + row + i]
            m1 = m1 / cst[C_WIDTH]
            m2 = m2 / cst[C_WIDTH]
            for i in range(D):
                g = sm[dy + row + i] * pv[so + i]
                sm[dx + row + i] += sm[rs + t] * ((g - m1) - sm[xh + row + i] * m2)
            t += 32

    @cuda.jit(device=True)
    def mlp_forward(ln, q0, T, D, F, pv, w1, b1, w2, b2, sm, xin, hh, gg, x1, out, final, cst):
        """hh = xin W1 + b1, gg = gelu(hh) (T, F); if final, out = x1 + lam (gg W2 + b2) (T, D)."""
        e = q0 * F + ln
        while e < T * F:
            t = e // F
            f = e - t * F
            s = cst[C_ZERO]
            for k in range(D):
                s += sm[xin + t * D + k] * pv[w1 + k * F + f]
            h = s + pv[b1 + f]
            sm[hh + e] = h
            th = math.tanh(cst[C_GELU_C] * (h + cst[C_GELU_A] * (h * h * h)))
            sm[gg + e] = (cst[C_HALF] * h) * (cst[C_ONE] + th)
            e += 32
        cuda.syncthreads()
        if final:
            e = q0 * D + ln
            while e < T * D:
                t = e // D
                d = e - t * D
                s = cst[C_ZERO]
                for k in range(F):
                    s += sm[gg + t * F + k] * pv[w2 + k * D + d]
                sm[out + e] = sm[x1 + e] + cst[C_LAM] * (s + pv[b2 + d])
                e += 32
            cuda.syncthreads()

    @cuda.jit(device=True)
    def mlp_backward(ln, q0, T, D, F, pv, w1, w2, sm, xin, hh, gg, dout, gw1, gb1, gw2, gb2, dxin,
                     cst):
        """dout (T, D) at the MLP's output -> dxin (T, D) at its input; weight gradients added at
        sm[gw1], sm[gb1], sm[gw2], sm[gb2]. gg is overwritten by dh = (dout W2^T) gelu'(hh)."""
        TQ, zero = T - q0, cst[C_ZERO]
        matmul(ln, F, D, TQ, sm, gg + q0 * F, 1, F, sm, dout + q0 * D, D, 1, sm, gw2, D, 1, zero)
        i = ln
        while i < D:  # db2 += sum_t dout
            s = zero
            for t in range(q0, T):
                s += sm[dout + t * D + i]
            sm[gb2 + i] += s
            i += 32
        cuda.syncthreads()
        e = q0 * F + ln
        while e < T * F:
            t = e // F
            f = e - t * F
            s = zero
            for k in range(D):
                s += sm[dout + t * D + k] * pv[w2 + f * D + k]
            h = sm[hh + e]
            th = math.tanh(cst[C_GELU_C] * (h + cst[C_GELU_A] * (h * h * h)))
            du = cst[C_GELU_C] * (cst[C_ONE] + cst[C_GELU_3A] * (h * h))
            dg = cst[C_HALF] * (cst[C_ONE] + th) + ((cst[C_HALF] * h) * (cst[C_ONE] - th * th)) * du
            sm[gg + e] = s * dg
            e += 32
        cuda.syncthreads()
        matmul(ln, D, F, TQ, sm, xin + q0 * D, 1, D, sm, gg + q0 * F, F, 1, sm, gw1, F, 1, zero)
        j = ln
        while j < F:  # db1 += sum_t dh
            s = zero
            for t in range(q0, T):
                s += sm[gg + t * F + j]
            sm[gb1 + j] += s
            j += 32
        matmul(ln, TQ, D, F, sm, gg + q0 * F, F, 1, pv, w1, 1, F, sm, dxin + q0 * D, D, 0, zero)
        cuda.syncthreads()

    return layernorm_forward, layernorm_backward, mlp_forward, mlp_backward


def _task_step():
    """task_step(ln, dm, pv, sm, w0, cst, active) of one LN / MLP model task, for gw.step_kernel."""
    fns = gw.device_functions()
    attention_forward, attention_backward = fns["attention_forward"], fns["attention_backward"]
    loss_and_seed = fns["loss_and_seed"]
    layernorm_forward, layernorm_backward, mlp_forward, mlp_backward = _layer_functions()

    @cuda.jit(device=True)
    def layer_forward(ln, dm, l, q0, final, pv, sm, w0, cst):
        """Block l from its input X_l (W_XS): caches of LN1, attention, X1, LN2, the MLP's hidden
        rows; if final, its output (X_{l+1}, or W_XC after the last layer). Rows q0..T-1 after the
        attention's keys and values. Without an MLP, X1 is the output itself (a recompute writes
        X_{l+1} again with the same numbers)."""
        T, D = dm[T_], dm[D_]
        TD, ly = T * D, LAY0 + l * NUM_LAY
        x = w0 + dm[W_XS] + l * TD
        out = w0 + dm[W_XS] + (l + 1) * TD if l + 1 < dm[L_] else w0 + dm[W_XC]
        ain = x
        if dm[ly + Y_LN1] != 0:
            layernorm_forward(ln, 0, T, D, pv, dm[ly + Y_LN1S], dm[ly + Y_LN1O], sm, x,
                              w0 + dm[W_XH1], w0 + dm[W_R1], w0 + dm[W_A], cst)
            cuda.syncthreads()
            ain = w0 + dm[W_A]
        attention_forward(ln, dm, dm[ly + Y_SOFTMAX], q0, pv, dm[ly + Y_WQ], sm, w0, cst, ain)
        x1 = w0 + dm[W_X1] if dm[MLP_] != 0 else out
        lam, c = cst[C_LAM], cst[C_CLIP]
        e = q0 * D + ln
        while e < TD:  # X1 = clip(X + lam mask_y U)
            mask = cst[C_ONE] if (dm[YUP_] == 0 or e % D == D - 1) else cst[C_ZERO]
            v = sm[x + e] + lam * (sm[w0 + dm[W_U] + e] * mask)
            if dm[CLIP_] != 0:
                v = -c if v < -c else (c if v > c else v)
            sm[x1 + e] = v
            e += 32
        cuda.syncthreads()
        if dm[MLP_] != 0:
            xin = x1
            if dm[LN2_] != 0:
                layernorm_forward(ln, q0, T, D, pv, dm[ly + Y_LN2S], dm[ly + Y_LN2O], sm, x1,
                                  w0 + dm[W_XH2], w0 + dm[W_R2], w0 + dm[W_MIN], cst)
                cuda.syncthreads()
                xin = w0 + dm[W_MIN]
            mlp_forward(ln, q0, T, D, dm[F_], pv, dm[ly + Y_W1], dm[ly + Y_B1], dm[ly + Y_W2],
                        dm[ly + Y_B2], sm, xin, w0 + dm[W_HH], w0 + dm[W_GG], x1, out, final, cst)

    @cuda.jit(device=True)
    def layer_backward(ln, dm, l, q0, pv, sm, w0, cst):
        """W_DX (rows q0..T-1; zero above) holds d X_{l+1} on entry and d X_l on exit; the
        parameter gradients are added at W_GACC. Steps in the reverse order of layer_forward."""
        T, D = dm[T_], dm[D_]
        TD, ly = T * D, LAY0 + l * NUM_LAY
        x, dx, du, dxin = w0 + dm[W_XS] + l * TD, w0 + dm[W_DX], w0 + dm[W_DU], w0 + dm[W_DXIN]
        gacc = w0 + dm[W_GACC]
        lam, c, zero = cst[C_LAM], cst[C_CLIP], cst[C_ZERO]
        if dm[MLP_] != 0:
            e = q0 * D + ln
            while e < TD:  # d MLP output = lam dX2
                sm[du + e] = lam * sm[dx + e]
                e += 32
            cuda.syncthreads()
            xin = w0 + dm[W_MIN] if dm[LN2_] != 0 else w0 + dm[W_X1]
            mlp_backward(ln, q0, T, D, dm[F_], pv, dm[ly + Y_W1], dm[ly + Y_W2], sm, xin,
                         w0 + dm[W_HH], w0 + dm[W_GG], du, gacc + dm[ly + Y_W1], gacc + dm[ly + Y_B1],
                         gacc + dm[ly + Y_W2], gacc + dm[ly + Y_B2], dxin, cst)
            if dm[LN2_] != 0:  # dX1 = dX2 + LN2'(d MLP input)
                layernorm_backward(ln, q0, T, D, pv, dm[ly + Y_LN2S], sm, dxin, w0 + dm[W_XH2],
                                   w0 + dm[W_R2], gacc + dm[ly + Y_LN2S], gacc + dm[ly + Y_LN2O], dx, cst)
            else:
                e = q0 * D + ln
                while e < TD:
                    sm[dx + e] += sm[dxin + e]
                    e += 32
            cuda.syncthreads()
        e = q0 * D + ln
        while e < TD:  # through the clipping (inside |x| <= c only), then dU = lam mask_y dX1
            mask = cst[C_ONE] if (dm[YUP_] == 0 or e % D == D - 1) else zero
            d = sm[dx + e]
            if dm[CLIP_] != 0:
                v = sm[x + e] + lam * (sm[w0 + dm[W_U] + e] * mask)
                av = -v if v < zero else v
                d = d if av <= c else zero
                sm[dx + e] = d
            sm[du + e] = (lam * d) * mask
            e += 32
        cuda.syncthreads()
        ain = w0 + dm[W_A] if dm[ly + Y_LN1] != 0 else x
        wo = dm[ly + Y_WQ]
        attention_backward(ln, dm, dm[ly + Y_SOFTMAX], q0, pv, wo, sm, w0, cst, ain, gacc + wo)
        if dm[ly + Y_LN1] != 0:  # dX = dX1 + LN1'(dA), every row (keys and values too)
            layernorm_backward(ln, 0, T, D, pv, dm[ly + Y_LN1S], sm, dxin, w0 + dm[W_XH1],
                               w0 + dm[W_R1], gacc + dm[ly + Y_LN1S], gacc + dm[ly + Y_LN1O], dx, cst)
        else:
            e = ln
            while e < TD:
                sm[dx + e] += sm[dxin + e]
                e += 32
        cuda.syncthreads()

    @cuda.jit(device=True)
    def task_step(ln, dm, pv, sm, w0, cst, active):
        """One task (tokens at W_XS, target at W_TGT): forward, loss, backward; gradients and
        0.5 r_l^2 added to the accumulator (nothing added when not active)."""
        T, D, L = dm[T_], dm[D_], dm[L_]
        TD = T * D
        for l in range(L):  # forward
            q0 = T - 1 if l == L - 1 else 0
            layer_forward(ln, dm, l, q0, True, pv, sm, w0, cst)
            if ln == 0:  # y_hat_l = -X_{l+1}[query, -1]
                out = w0 + dm[W_XS] + (l + 1) * TD if l + 1 < L else w0 + dm[W_XC]
                sm[w0 + dm[W_READ] + l] = -sm[out + TD - 1]
            cuda.syncthreads()
        loss_and_seed(ln, dm, sm, w0, cst, active)
        for l in range(L - 1, -1, -1):  # backward
            q0 = T - 1 if l == L - 1 else 0
            if l < L - 1:  # recompute this layer's caches (the last layer's are still in place)
                layer_forward(ln, dm, l, q0, False, pv, sm, w0, cst)
            layer_backward(ln, dm, l, q0, pv, sm, w0, cst)

    return task_step
