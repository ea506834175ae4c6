"""The CUDA kernels of the `numba-cuda` backend (kernels/numba/gpu.py), built on first use.

Kernels (launch shapes):
    task_kernel       one thread per task (blocks of TPB threads): the per-task forward/backward of
                      kernels/numba/model.py (the very functions numba-cpu runs), each task writing
                      its own gradient row G[b] (B, P) and workspace; no atomics. It runs
                      model_forward / model_backward of every model, and the loss and gradients
                      of the models no warp-per-task kernel runs (kernels/numba/gpu_warp_host.py
                      warp_kernel: a front end, or a workspace over 48 KiB). One kernel per
                      mode (forward; forward + backward; loss + backward), each compiled on its
                      first launch: a training run compiles only the loss + backward one
    reduce_kernel     column sums of a (R, P) row block in groups of GROUP rows, each group summed in
                      row order; applied until one row is left: a fixed-order tree (deterministic)
    norm_kernel       one block of NORM_TPB threads: strided partial sums then a shared-memory tree,
                      float64 (the global gradient norm), and the clipping factor
    adam_kernel       one thread per parameter: clipping, then Adam (kernels/numba/adam.py)
Under NUMBA_ENABLE_CUDASIM=1 the simulator cannot pass its arrays to the compiled per-task
functions, so task_kernel there unwraps them to NumPy and adam_kernel runs adam_element as
Python; every other kernel runs as written.
"""
import math

from numba import cuda, float64

from kernels.numba.adam import adam_element
from kernels.numba.layout import I_NP, I_W_SIZE
from kernels.numba.ops import C_ZERO

TPB = 64  # threads per block for task_kernel (one task per thread)
GROUP = 32  # rows summed per thread in one reduction pass
NORM_TPB = 256

MODE_FORWARD, MODE_BACKWARD, MODE_LOSS = 0, 1, 2


def simulated():
    from numba.cuda import config
    return bool(config.ENABLE_CUDASIM)


# ----------------------------------------------------------------------------------------------
_KERNELS = {}


def kernels():
    """Build the vector kernels on first use (no work at import). Returns a dict of them."""
    if not _KERNELS:
        _KERNELS.update(**_vector_kernels())
    return _KERNELS


_TASK_KERNELS = {}


def task_kernel(mode):
    """The task kernel of one mode (MODE_FORWARD, MODE_BACKWARD or MODE_LOSS), built on first use:
    the mode is a compile-time constant, so each kernel holds only its own path."""
    if mode not in (MODE_FORWARD, MODE_BACKWARD, MODE_LOSS):
        raise ValueError(f"mode: expected one of {MODE_FORWARD}, {MODE_BACKWARD}, {MODE_LOSS}, got {mode!r}")
    if mode not in _TASK_KERNELS:
        _TASK_KERNELS[mode] = _task_kernel(mode)
    return _TASK_KERNELS[mode]


def _task_kernel(mode):
    """task_kernel: one thread per task running kernels/numba/model.py's per-task code."""
    from kernels.numba.model import task_backward, task_forward, task_loss_backward

    def task_body(b, tok, y, dr, pv, ii, lay, cst, pe, ws, rd, G, sqe, dtok):
        W, NP = ii[I_W_SIZE], ii[I_NP]
        w0, g0 = b * W, b * NP
        if mode != MODE_FORWARD:
            for j in range(NP):
                G[g0 + j] = cst[C_ZERO]
        if mode == MODE_FORWARD:
            task_forward(tok, b, pv, ii, lay, cst, pe, ws, w0, rd)
        elif mode == MODE_BACKWARD:
            task_forward(tok, b, pv, ii, lay, cst, pe, ws, w0, rd)
            task_backward(b, dr, pv, ii, lay, cst, ws, w0, G, g0, 1, dtok)
        else:
            task_loss_backward(tok, y, b, pv, ii, lay, cst, pe, ws, w0, rd, dr, G, g0, 0, dtok)
            for l in range(rd.shape[0]):
                e = rd[l, b] - y[b]
                sqe[b * rd.shape[0] + l] = e * e

    if simulated():
        def unwrap(a):
            return a._item._ary if hasattr(a, "_item") else a

        @cuda.jit
        def task_kernel(tok, y, dr, pv, ii, lay, cst, pe, ws, rd, G, sqe, dtok):
            b = cuda.grid(1)
            if b < tok.shape[0]:
                task_body(b, *[unwrap(a) for a in (tok, y, dr, pv, ii, lay, cst, pe, ws, rd, G, sqe,
                                                   dtok)])
    else:
        task_device = cuda.jit(device=True)(task_body)

        @cuda.jit
        def task_kernel(tok, y, dr, pv, ii, lay, cst, pe, ws, rd, G, sqe, dtok):
            b = cuda.grid(1)
            if b < tok.shape[0]:
                task_device(b, tok, y, dr, pv, ii, lay, cst, pe, ws, rd, G, sqe, dtok)
    return task_kernel


def _vector_kernels():
    """reduce_kernel, norm_kernel and adam_kernel on flat vectors."""
    @cuda.jit
    def reduce_kernel(G, rows, cols, group, out):
        """out[g, j] = sum_{r in group g, in order} G[r, j]; G and out flat, row length cols."""
        j = cuda.grid(1)
        g = cuda.blockIdx.y
        if j < cols:
            r0 = g * group
            s = G[r0 * cols + j]
            for r in range(r0 + 1, min(rows, r0 + group)):
                s += G[r * cols + j]
            out[g * cols + j] = s

    @cuda.jit
    def norm_kernel(g, max_norm, out, factor):
        """out[0] = sum g^2 (float64; thread i sums i, i + NORM_TPB, ... in order, then a tree);
        factor[0] = max_norm / ||g|| when ||g|| > max_norm > 0, else 1 (in g's dtype)."""
        buf = cuda.shared.array(NORM_TPB, float64)
        i = cuda.threadIdx.x
        s = 0.0
        for k in range(i, g.shape[0], NORM_TPB):
            s += float64(g[k]) * float64(g[k])
        buf[i] = s
        cuda.syncthreads()
        step = NORM_TPB // 2
        while step > 0:
            if i < step:
                buf[i] += buf[i + step]
            cuda.syncthreads()
            step //= 2
        if i == 0:
            out[0] = buf[0]
            norm = math.sqrt(buf[0])
            if max_norm > 0 and norm > max_norm:
                factor[0] = max_norm / norm
            else:
                factor[0] = 1.0

    # the simulator runs the element update as plain Python (its arrays cannot enter compiled code)
    element = adam_element.py_func if simulated() else adam_element

    @cuda.jit
    def adam_kernel(p, g, m, v, h, factor):
        """h: AdamHyper (its clip_factor unused); g is scaled by factor[0] (norm_kernel's) first."""
        i = cuda.grid(1)
        if i < p.shape[0]:
            element(p, m, v, i, g[i] * factor[0], h)

    return {"reduce": reduce_kernel, "norm": norm_kernel, "adam": adam_kernel}
