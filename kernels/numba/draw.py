"""Training batches drawn in parallel with Numba, bit for bit those of the oracle.

Mirrors refimpl.data.linear_regression_tasks (same signature, same tokens (B, T, D) and targets
(B,), and the Generator left in the same state). The oracle draws, in this order,
    w = rng.standard_normal((B, d)) * s                      here with NumPy as well (cheap)
    x = rng.uniform(-r/2, r/2, (B, T, d))                    here in the kernel below
    y_t = ((x_t0 w_0 + x_t1 w_1) + ...) + x_t(d-1) w_(d-1)   one rounding per product and per sum
NumPy's uniform is `low + (high - low) * u` with u = (next64 >> 11) * 2**-53, one PCG64 step per
value in C order of (B, T, d). PCG64 (XSL-RR 128/64) steps its 128-bit state first,
state = state * MULT + inc (mod 2**128), then outputs rotr64(hi ^ lo, hi >> 58). The 128-bit
arithmetic is done here on (hi, lo) pairs of uint64, the high half of a 64 x 64 product by one
widening multiply written in LLVM IR (`mulhi64`; Numba has no 128-bit integer). Every constant is a
np.uint64: Numba turns uint64 mixed with int64 into float64.

Kernel (`@njit(cache=True, parallel=True)`, launch shape: `prange` over pieces of tasks):
    draw_kernel   each piece of `chunk` consecutive tasks (B*T*d values cut into contiguous pieces
                  by B alone, not by the thread count) jumps its own copy of the PCG64 state to its
                  first value (LCG jump-ahead, O(log n) 128-bit products), then per value: step,
                  output, uniform; x goes straight into the tokens, y is summed in the oracle's
                  order, the query's label is 0 and y_q is the target.
Afterwards the Generator is advanced by B*T*d steps (PCG64.advance) and its buffered 32-bit half
(`has_uint32`, `uinteger`, which uniform leaves alone and advance clears) is put back.

Falls back to the oracle (same numbers, NumPy speed) when the bit generator is not a PCG64, when
`distractors > 0` (the distractor draws follow in NumPy there anyway), or for an input_range or
weight_scale that is not a real scalar.

Measured by benchmarks/draw.py (benchmarks/results/draw_cpu.json: AMD EPYC, 2 shared cores,
B = 2048, N = d = 10, float64, median of 50): the oracle 3.1 ms, this drawer 0.84 ms (2 threads;
1.17 ms on one), of which ~0.3 ms is NumPy's draw of w.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, set_parallel_chunksize, types
from numba.extending import intrinsic

from refimpl.data import linear_regression_tasks as _oracle_tasks
from refimpl.validate import check_positive_int

MAX_PIECES = 64  # pieces of consecutive tasks; B / MAX_PIECES tasks per piece (at least 1)

_MULT_HI = np.uint64(0x2360ED051FC65DA4)  # PCG_DEFAULT_MULTIPLIER_128, high and low 64 bits
_MULT_LO = np.uint64(0x4385DF649FCCF645)
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U11 = np.uint64(11)
_U58 = np.uint64(58)
_U63 = np.uint64(63)
_U64 = np.uint64(64)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53
_MASK64 = (1 << 64) - 1


@intrinsic
def mulhi64(typingctx, a, b):
    """High 64 bits of the 128-bit product of two uint64 (one widening multiply in LLVM IR)."""
    if a != types.uint64 or b != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        i128 = ir.IntType(128)
        p = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        return builder.trunc(builder.lshr(p, ir.Constant(i128, 64)), ir.IntType(64))

    return types.uint64(types.uint64, types.uint64), codegen


@njit(cache=True, inline="always")
def mul128(ah, al, bh, bl):
    """(ah, al) * (bh, bl) mod 2**128 as (hi, lo)."""
    return mulhi64(al, bl) + al * bh + ah * bl, al * bl


@njit(cache=True, inline="always")
def add128(ah, al, bh, bl):
    """(ah, al) + (bh, bl) mod 2**128 as (hi, lo)."""
    lo = al + bl
    carry = _U1 if lo < al else _U0
    return ah + bh + carry, lo


@njit(cache=True, inline="always")
def pcg64_uniform(sh, sl, ih, il, low, span):
    """One PCG64 step (state * MULT + inc), its XSL-RR output rotr64(hi ^ lo, hi >> 58), and
    NumPy's uniform low + span * (out >> 11) * 2**-53. Returns the new state and the value."""
    ph, pl = mul128(sh, sl, _MULT_HI, _MULT_LO)
    sh, sl = add128(ph, pl, ih, il)
    v = sh ^ sl
    rot = sh >> _U58
    out = (v >> rot) | (v << ((_U64 - rot) & _U63))
    return sh, sl, low + span * (np.float64(out >> _U11) * _TWO_M53)


@njit(cache=True)
def pcg64_jump(sh, sl, ih, il, n):
    """The PCG64 state after n steps (uint64 n): state_n = A state + C (mod 2**128), with (A, C)
    the affine map x -> MULT x + inc applied n times, built by repeated squaring."""
    amh, aml = _U0, _U1  # A and C accumulated so far
    ach, acl = _U0, _U0
    mh, ml = _MULT_HI, _MULT_LO  # the map applied 2**j times: x -> (mh, ml) x + (ph, pl)
    ph, pl = ih, il
    while n > _U0:
        if n & _U1:
            amh, aml = mul128(amh, aml, mh, ml)
            th, tl = mul128(ach, acl, mh, ml)
            ach, acl = add128(th, tl, ph, pl)
        qh, ql = add128(mh, ml, _U0, _U1)
        ph, pl = mul128(qh, ql, ph, pl)
        mh, ml = mul128(mh, ml, mh, ml)
        n = n >> _U1
    th, tl = mul128(amh, aml, sh, sl)
    return add128(th, tl, ach, acl)


@njit(cache=True, parallel=True)
def draw_kernel(st, w, low, span, chunk, tok, tgt):
    """st uint64 (4,): state hi, lo, inc hi, lo before the first x; w (B, d) float64.
    Writes tok (B, T, d+1) and tgt (B,) (float32 or float64: the oracle's cast of float64 values)."""
    B, T, D = tok.shape
    d = D - 1
    npieces = (B + chunk - 1) // chunk
    ih, il = st[2], st[3]
    for c in prange(npieces):
        b0 = c * chunk
        sh, sl = pcg64_jump(st[0], st[1], ih, il, np.uint64(b0 * T * d))
        for b in range(b0, min(B, b0 + chunk)):
            for t in range(T):
                y = -0.0  # the exact identity of +: y = -0.0 + x_0 w_0 = x_0 w_0, as the oracle's
                for k in range(d):
                    sh, sl, x = pcg64_uniform(sh, sl, ih, il, low, span)
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


def _fast_path(rng, input_range, weight_scale, distractors):
    return (isinstance(rng, np.random.Generator) and type(rng.bit_generator) is np.random.PCG64
            and distractors == 0 and np.ndim(input_range) == 0 and np.ndim(weight_scale) == 0
            and np.isrealobj(input_range) and np.isrealobj(weight_scale))


def linear_regression_tasks(rng, batch, num_context=10, input_dim=10, input_range=1.0,
                            weight_scale=1.0, distractors=0, dtype=np.float64):
    """refimpl.data.linear_regression_tasks, bit for bit (tokens, targets and rng state after)."""
    if not _fast_path(rng, input_range, weight_scale, distractors):
        return _oracle_tasks(rng, batch, num_context, input_dim, input_range, weight_scale,
                             distractors, dtype)
    B = check_positive_int("batch", batch)
    N = check_positive_int("num_context", num_context)
    d = check_positive_int("input_dim", input_dim)
    w = rng.standard_normal((B, d)) * weight_scale  # (B, d)
    w = np.ascontiguousarray(w, dtype=np.float64)
    low, high = -input_range / 2, input_range / 2
    span = float(high) - float(low)
    if not (np.isfinite(span) and span >= 0):
        rng.uniform(low, high, size=(B, N + 1, d))  # NumPy's own OverflowError / ValueError
        raise ValueError(f"input_range: expected a finite number >= 0, got {input_range}")
    low = float(low)
    bg = rng.bit_generator
    full = bg.state
    s, inc = full["state"]["state"], full["state"]["inc"]
    st = np.array([s >> 64, s & _MASK64, inc >> 64, inc & _MASK64], dtype=np.uint64)  # (4,)
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
    bg.advance(B * (N + 1) * d)
    if full["has_uint32"] or full["uinteger"]:  # advance clears the buffered 32-bit half
        after = bg.state
        after["has_uint32"], after["uinteger"] = full["has_uint32"], full["uinteger"]
        bg.state = after
    return tokens.astype(dt, copy=False), targets.astype(dt, copy=False)
