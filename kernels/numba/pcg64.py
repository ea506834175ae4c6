"""PCG64 (XSL-RR 128/64), NumPy's default bit generator, in Numba: the same outputs as
numpy.random.PCG64 from the same state, for the compiled drawers (kernels.numba.draw, .ziggurat).

The generator steps its 128-bit state first, state = state * MULT + inc (mod 2**128), then outputs
rotr64(hi ^ lo, hi >> 58). The 128-bit arithmetic is done on (hi, lo) pairs of uint64, the high half
of a 64 x 64 product by one widening multiply written in LLVM IR (`mulhi64`; Numba has no 128-bit
integer). Every constant is a np.uint64: Numba turns uint64 mixed with int64 into float64.
`pcg64_jump` moves a state n steps ahead (LCG jump-ahead, O(log n) 128-bit products), as
PCG64.advance does. `state_words` and `set_state` move a Generator's state in and out.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_MULT_HI = np.uint64(0x2360ED051FC65DA4)  # PCG_DEFAULT_MULTIPLIER_128, high and low 64 bits
_MULT_LO = np.uint64(0x4385DF649FCCF645)
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U11 = np.uint64(11)
_U58 = np.uint64(58)
_U63 = np.uint64(63)
_U64 = np.uint64(64)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53


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
def pcg64_next(sh, sl, ih, il):
    """One PCG64 step (state * MULT + inc) and its XSL-RR output rotr64(hi ^ lo, hi >> 58): NumPy's
    next_uint64. Returns the new state (hi, lo) and the output."""
    ph, pl = mul128(sh, sl, _MULT_HI, _MULT_LO)
    sh, sl = add128(ph, pl, ih, il)
    v = sh ^ sl
    rot = sh >> _U58
    return sh, sl, (v >> rot) | (v << ((_U64 - rot) & _U63))


@njit(cache=True, inline="always")
def next_double(sh, sl, ih, il):
    """NumPy's next_double: (next_uint64 >> 11) * 2**-53 in [0, 1). Returns the new state and u."""
    sh, sl, out = pcg64_next(sh, sl, ih, il)
    return sh, sl, np.float64(out >> _U11) * _TWO_M53


@njit(cache=True, inline="always")
def pcg64_uniform(sh, sl, ih, il, low, span):
    """NumPy's uniform low + span * next_double. Returns the new state and the value."""
    sh, sl, u = next_double(sh, sl, ih, il)
    return sh, sl, low + span * u


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


_MASK64 = (1 << 64) - 1


def state_words(bit_generator):
    """(uint64 (4,) array [state hi, lo, inc hi, lo], the full state dict) of a PCG64."""
    full = bit_generator.state
    s, inc = full["state"]["state"], full["state"]["inc"]
    return np.array([s >> 64, s & _MASK64, inc >> 64, inc & _MASK64], dtype=np.uint64), full


def set_state(bit_generator, full, hi, lo):
    """Put state (hi, lo) into the PCG64, keeping `full`'s increment and its buffered 32-bit half
    (`has_uint32`, `uinteger`), which the 64-bit draws leave alone."""
    bit_generator.state = {"bit_generator": full["bit_generator"],
                           "state": {"state": (int(hi) << 64) | int(lo), "inc": full["state"]["inc"]},
                           "has_uint32": full["has_uint32"], "uinteger": full["uinteger"]}
