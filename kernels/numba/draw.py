"""Training batches drawn in parallel with Numba, bit for bit those of the oracle.

Mirrors refimpl.data.linear_regression_tasks (same signature, same tokens (B, T, D) and targets
(B,), and the Generator left in the same state). The oracle draws, in this order,
    w = rng.standard_normal((B, d)) * s                      here by kernels.numba.ziggurat
    x = rng.uniform(-r/2, r/2, (B, T, d))                    here in the kernel below
    y_t = ((x_t0 w_0 + x_t1 w_1) + ...) + x_t(d-1) w_(d-1)   one rounding per product and per sum
NumPy's uniform is `low + (high - low) * u` with u = (next64 >> 11) * 2**-53, one PCG64 step per
value in C order of (B, T, d), PCG64 as in kernels.numba.pcg64.

Kernel (`@njit(cache=True, parallel=True)`, launch shape: `prange` over pieces of tasks):
    draw_kernel   each piece of `chunk` consecutive tasks (B*T*d values cut into contiguous pieces
                  by B alone, not by the thread count) jumps its own copy of the PCG64 state to its
                  first value (LCG jump-ahead, O(log n) 128-bit products), draws the piece's x into
                  a scratch row with 32 PCG64 states stepped side by side in SIMD lanes
                  (kernels.numba.pcg64_lanes: NumPy's values, ~0.7 ns a value here against ~1.9 ns
                  one state at a time), then per task copies x into the tokens and sums y in the
                  oracle's order; the query's label is 0 and y_q is the target.
Afterwards the Generator gets the state B*T*d steps past the end of w (jump-ahead) and keeps its
buffered 32-bit half (`has_uint32`, `uinteger`), which the 64-bit draws leave alone.

Falls back to the oracle (same numbers, NumPy speed) when the bit generator is not a PCG64, when
`distractors > 0` (the distractor draws follow in NumPy there anyway), for an input_range that is
not a real scalar, or a weight_scale whose product with float64 normals is not float64.

Measured by benchmarks/draw.py (benchmarks/results/draw_cpu.json: AMD EPYC, 2 shared cores,
B = 2048, N = d = 10, float64, median of 50): the oracle 1.40 ms, this drawer 0.27 ms (2 threads;
0.41 ms on one; 0.39 ms before the x were drawn in lanes). In a profile (not that benchmark), ~0.05
ms of it is the draw of w (one thread: each normal's position in the stream depends on the one
before) and about as much the copy of x into the tokens with the sums for y.
"""
import numpy as np
from numba import njit, prange, set_parallel_chunksize

from kernels.numba.pcg64 import pcg64_jump, set_state, state_words
from kernels.numba.pcg64_lanes import STATES, lane_states, stride_map, uniform_rounds
from kernels.numba.ziggurat import normal_kernel
from refimpl.data import linear_regression_tasks as _oracle_tasks
from refimpl.validate import check_positive_int

MAX_PIECES = 64  # pieces of consecutive tasks; B / MAX_PIECES tasks per piece (at least 1)

@njit(cache=True, parallel=True)
def draw_kernel(st, w, low, span, chunk, tok, tgt):
    """st uint64 (4,): state hi, lo, inc hi, lo before the first x; w (B, d) float64.
    Writes tok (B, T, d+1) and tgt (B,) (float32 or float64: the oracle's cast of float64 values)."""
    B, T, D = tok.shape
    d = D - 1
    npieces = (B + chunk - 1) // chunk
    ih, il = st[2], st[3]
    amap = stride_map(ih, il)
    for c in prange(npieces):
        b0, b1 = c * chunk, min(B, (c + 1) * chunk)
        cnt = (b1 - b0) * T * d
        rounds = (cnt + STATES - 1) // STATES
        xs = np.empty(rounds * STATES)  # the piece's x in the oracle's order (and a last round's spares)
        lanes = np.empty((2, STATES), np.uint64)
        sh, sl = pcg64_jump(st[0], st[1], ih, il, np.uint64(b0 * T * d))
        lane_states(sh, sl, ih, il, lanes)
        uniform_rounds(lanes, amap, xs, 0, rounds, low, span)
        i = 0
        for b in range(b0, b1):
            for t in range(T):
                y = -0.0  # the exact identity of +: y = -0.0 + x_0 w_0 = x_0 w_0, as the oracle's
                for k in range(d):
                    x = xs[i]
                    i += 1
                    tok[b, t, k] = x
                    y = y + x * w[b, k]
                if t == T - 1:
                    tgt[b] = y
                    tok[b, t, d] = 0.0
                else:
                    tok[b, t, d] = y


def chunking(batch):
    """(tasks per piece, number of pieces): a function of B only, so the bits never depend on threads."""
    chunk = max(1, -(-batch // MAX_PIECES))
    return chunk, -(-batch // chunk)


def _weight_scale(weight_scale):
    """weight_scale as the float64 that `standard_normal(...) * weight_scale` multiplies by, or None
    where that product is not a float64 one (an array, a complex or long double, a huge int)."""
    if np.ndim(weight_scale) != 0 or not np.isrealobj(weight_scale):
        return None
    try:
        if np.result_type(np.float64, weight_scale) != np.float64:
            return None
        return float(weight_scale)
    except (TypeError, ValueError, OverflowError):
        return None


def _fast_path(rng, input_range, distractors):
    return (isinstance(rng, np.random.Generator) and type(rng.bit_generator) is np.random.PCG64
            and distractors == 0 and np.ndim(input_range) == 0 and np.isrealobj(input_range))


def linear_regression_tasks(rng, batch, num_context=10, input_dim=10, input_range=1.0,
                            weight_scale=1.0, distractors=0, dtype=np.float64):
    """refimpl.data.linear_regression_tasks, bit for bit (tokens, targets and rng state after)."""
    scale = _weight_scale(weight_scale)
    if scale is None or not _fast_path(rng, input_range, distractors):
        return _oracle_tasks(rng, batch, num_context, input_dim, input_range, weight_scale,
                             distractors, dtype)
    B = check_positive_int("batch", batch)
    N = check_positive_int("num_context", num_context)
    d = check_positive_int("input_dim", input_dim)
    bg = rng.bit_generator
    st, full = state_words(bg)  # (4,) state hi, lo, inc hi, lo
    w = np.empty((B, d))  # (B, d)
    normal_kernel(st, scale, w.reshape(-1))  # st now holds the state after w
    low, high = -input_range / 2, input_range / 2
    span = float(high) - float(low)
    if not (np.isfinite(span) and span >= 0):
        set_state(bg, full, st[0], st[1])
        rng.uniform(low, high, size=(B, N + 1, d))  # NumPy's own OverflowError / ValueError
        raise ValueError(f"input_range: expected a finite number >= 0, got {input_range}")
    low = float(low)
    dt = np.dtype(dtype)
    kdt = dt if dt in (np.float32, np.float64) else np.dtype(np.float64)
    tokens = np.empty((B, N + 1, d + 1), kdt)  # (B, T, D)
    targets = np.empty(B, kdt)  # (B,)
    chunk, _ = chunking(B)
    old = set_parallel_chunksize(1)  # pieces handed out one at a time (shared machines)
    try:
        draw_kernel(st, w, low, span, chunk, tokens, targets)
    finally:
        set_parallel_chunksize(old)
    set_state(bg, full, *pcg64_jump(st[0], st[1], st[2], st[3], np.uint64(B * (N + 1) * d)))
    return tokens.astype(dt, copy=False), targets.astype(dt, copy=False)
