"""NumPy's uniform draws (Generator.uniform, float64) from eight PCG64 states at once, in SIMD
lanes: the same values, in the same order, as kernels.numba.pcg64.pcg64_uniform one at a time.

Lane j holds the state stepped to for value m + j, so a round of the eight lanes gives values
m .. m+7 and moves every lane 8 steps on: state <- A8 state + C8 (mod 2**128), with (A8, C8) the
map x -> MULT x + inc applied 8 times (`stride_map`). Per lane and round, as NumPy's next_double
and uniform:
    out = rotr64(hi ^ lo, hi >> 58);  u = (out >> 11) * 2**-53;  x = low + span * u
The eight lanes are one LLVM <8 x i64> vector, written in LLVM IR (`uniform_rounds`): Numba leaves
this 128-bit arithmetic scalar (one multiply chain per value, ~1.9 ns a value here). The high
half of a 64 x 64 product comes from four 32 x 32 -> 64 products (packed multiplies), the rest
from the packed 64-bit multiply, variable shifts and the packed uint64 -> float64 conversion.
The floating-point operations are a multiply, a multiply and an add, without fast-math flags, so
LLVM fuses nothing: the values are NumPy's to the bit (tests/kernels/test_numba_draw.py).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from kernels.numba.pcg64 import pcg64_jump

LANES = 8  # PCG64 states per <8 x i64> vector
VECTORS = 4  # vectors stepped side by side (one alone waits on its multiply chain)
STATES = LANES * VECTORS


def _halves(builder, a):
    """The 32-bit halves of each lane of a, zero-extended to 64 bits (packed 32 x 32 -> 64 multiplies)."""
    v8i32 = ir.VectorType(ir.IntType(32), LANES)
    lo = builder.zext(builder.trunc(a, v8i32), a.type)
    hi = builder.zext(builder.trunc(builder.lshr(a, ir.Constant(a.type, [32] * LANES)), v8i32), a.type)
    return lo, hi


def _opaque_width(context):
    """Lanes per empty-asm barrier: a whole <8 x i64> in one AVX-512 register, half of it in an
    AVX one, a quarter in an SSE2 one; None off x86 (no barrier: LLVM may then use scalar
    multiplies, the values are the same)."""
    feats = set(getattr(context.codegen(), "_tm_features", "").split(","))
    for flag, width in (("+avx512f", 8), ("+avx", 4), ("+sse2", 2)):
        if flag in feats:
            return width
    return None


def _opaque(builder, v, width):
    """v through empty inline asm, `width` lanes at a time: LLVM otherwise recognises the 128-bit
    multiply below and turns it back into eight scalar ones (x86 has no packed 64 x 64 -> 128
    multiply)."""
    if width is None:
        return v
    i32 = ir.IntType(32)
    piece = ir.VectorType(v.type.element, width)
    asm = lambda x: builder.asm(ir.FunctionType(x.type, [x.type]), "", "=v,0", [x], side_effect=False)  # noqa: E731
    if width == LANES:
        return asm(v)
    parts = [asm(builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width), list(range(k, k + width)))))
             for k in range(0, LANES, width)]
    while len(parts) > 1:  # concatenate pairwise back to LANES lanes
        n = parts[0].type.count
        parts = [builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 2 * n), list(range(2 * n))))
                 for a, b in zip(parts[::2], parts[1::2])]
    return parts[0]


def _mulhi(builder, a, b_lo, b_hi, width):
    """High 64 bits of a * b per lane, b given as its halves (_halves); width: _opaque's."""
    s32 = ir.Constant(a.type, [32] * LANES)
    mask = ir.Constant(a.type, [0xFFFFFFFF] * LANES)
    a_lo, a_hi = _halves(builder, a)
    p00, p01, p10, p11 = (_opaque(builder, builder.mul(x, y), width)
                          for x, y in ((a_lo, b_lo), (a_lo, b_hi), (a_hi, b_lo), (a_hi, b_hi)))
    mid = builder.add(builder.add(builder.lshr(p00, s32), builder.and_(p10, mask)), builder.and_(p01, mask))
    hi = builder.add(builder.add(p11, builder.lshr(p10, s32)), builder.lshr(p01, s32))
    return builder.add(hi, builder.lshr(mid, s32))


def _step_and_store(builder, hi, lo, k, m, start, out_ptr, consts):
    """Vector k of a round: store its 8 values at start + STATES m + 8 k, return its next state."""
    i64 = ir.IntType(64)
    v8i, v8f = hi.type, ir.VectorType(ir.DoubleType(), LANES)
    splat = lambda ty, c: ir.Constant(ir.VectorType(ty, LANES), [c] * LANES)  # noqa: E731
    a_hi, a_lo, a_lo_lo, a_lo_hi, c_hi, c_lo, lowv, spanv, width = consts
    v = builder.xor(hi, lo)  # XSL-RR output, rotated right by hi >> 58
    rot = builder.lshr(hi, splat(i64, 58))
    left = builder.and_(builder.sub(splat(i64, 64), rot), splat(i64, 63))
    o = builder.or_(builder.lshr(v, rot), builder.shl(v, left))
    u = builder.fmul(builder.uitofp(builder.lshr(o, splat(i64, 11)), v8f), splat(ir.DoubleType(), 2.0 ** -53))
    x = builder.fadd(lowv, builder.fmul(spanv, u))  # low + span * u, two roundings
    pos = builder.add(start, builder.add(builder.mul(m, ir.Constant(i64, STATES)), ir.Constant(i64, LANES * k)))
    builder.store(x, builder.bitcast(builder.gep(out_ptr, [pos]), v8f.as_pointer()), align=8)
    plo = builder.mul(lo, a_lo)  # (hi, lo) <- (hi, lo) * A + C (mod 2**128)
    phi_ = builder.add(builder.add(_mulhi(builder, lo, a_lo_lo, a_lo_hi, width), builder.mul(lo, a_hi)),
                       builder.mul(hi, a_lo))
    nlo = builder.add(plo, c_lo)
    carry = builder.zext(builder.icmp_unsigned("<", nlo, plo), v8i)
    return builder.add(builder.add(phi_, c_hi), carry), nlo


@intrinsic
def uniform_rounds(typingctx, state, amap, out, start, rounds, low, span):
    """state uint64 (2, STATES): hi and lo halves of the lane states; amap uint64 (4,): A hi, lo,
    C hi, lo, the map of STATES steps (stride_map); out float64 (n,): values start ..
    start + STATES rounds - 1 are written. The lane states are left STATES * rounds steps on."""
    if not (isinstance(state, types.Array) and state.dtype == types.uint64 and
            isinstance(out, types.Array) and out.dtype == types.float64):
        return None
    sig = types.void(state, amap, out, types.intp, types.intp, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        st_a, map_a, out_a, start_v, rounds_v, low_v, span_v = args
        i64, i32 = ir.IntType(64), ir.IntType(32)
        v8i, v8f = ir.VectorType(i64, LANES), ir.VectorType(ir.DoubleType(), LANES)
        st_ptr = context.make_array(signature.args[0])(context, builder, st_a).data
        map_ptr = context.make_array(signature.args[1])(context, builder, map_a).data
        out_ptr = context.make_array(signature.args[2])(context, builder, out_a).data
        vst = builder.bitcast(st_ptr, v8i.as_pointer())  # hi vectors 0 .. V-1, then lo vectors
        first = [builder.load(builder.gep(vst, [ir.Constant(i64, k)]), align=8) for k in range(2 * VECTORS)]

        def bcast(x, ty):
            v = builder.insert_element(ir.Constant(ty, ir.Undefined), x, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))

        a_hi, a_lo, c_hi, c_lo = (bcast(builder.load(builder.gep(map_ptr, [ir.Constant(i64, k)])), v8i)
                                  for k in range(4))
        consts = (a_hi, a_lo) + _halves(builder, a_lo) + (c_hi, c_lo, bcast(low_v, v8f), bcast(span_v, v8f),
                                                              _opaque_width(context))
        pre = builder.block
        loop = builder.append_basic_block("rounds")
        done = builder.append_basic_block("done")
        builder.cbranch(builder.icmp_signed(">", rounds_v, ir.Constant(i64, 0)), loop, done)
        builder.position_at_end(loop)
        m = builder.phi(i64)
        m.add_incoming(ir.Constant(i64, 0), pre)
        cur = []
        for v in first:
            p = builder.phi(v8i)
            p.add_incoming(v, pre)
            cur.append(p)
        nxt = [None] * (2 * VECTORS)
        for k in range(VECTORS):  # independent vectors: their multiply chains overlap
            nxt[k], nxt[VECTORS + k] = _step_and_store(builder, cur[k], cur[VECTORS + k], k, m, start_v,
                                                       out_ptr, consts)
        m1 = builder.add(m, ir.Constant(i64, 1))
        m.add_incoming(m1, loop)
        for p, v in zip(cur, nxt):
            p.add_incoming(v, loop)
        builder.cbranch(builder.icmp_signed("<", m1, rounds_v), loop, done)
        builder.position_at_end(done)
        final = [builder.phi(v8i) for _ in range(2 * VECTORS)]  # phis first, then the stores
        for k, f in enumerate(final):
            f.add_incoming(first[k], pre)
            f.add_incoming(nxt[k], loop)
        for k, f in enumerate(final):
            builder.store(f, builder.gep(vst, [ir.Constant(i64, k)]), align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def stride_map(ih, il):
    """(A8 hi, lo, C8 hi, lo) as a uint64 (4,) array: state_{n+8} = A8 state_n + C8 (mod 2**128)."""
    ch, cl = pcg64_jump(np.uint64(0), np.uint64(0), ih, il, np.uint64(STATES))
    th, tl = pcg64_jump(np.uint64(0), np.uint64(1), ih, il, np.uint64(STATES))  # A8 + C8
    lo = tl - cl
    borrow = np.uint64(1) if tl < cl else np.uint64(0)
    return np.array([th - ch - borrow, lo, ch, cl], dtype=np.uint64)


@njit(cache=True)
def lane_states(sh, sl, ih, il, state):
    """state (2, STATES) <- the states stepped to for the STATES values that follow (sh, sl)."""
    for j in range(STATES):
        sh, sl = pcg64_jump(sh, sl, ih, il, np.uint64(1))
        state[0, j], state[1, j] = sh, sl
