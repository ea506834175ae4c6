"""Counter-based random numbers: Philox (Salmon et al. 2011) in NumPy, the host mirror of the
device generator in `kernels/cupy/cuda/philox.cuh`, and the linear-regression task batch it draws.

Philox-4xW-10 maps a counter (4 words) and a key (2 words) to 4 random words in 10 rounds; W = 32
is the generator the CUDA kernels use (cuRAND's, Random123's), W = 64 is numpy.random.Philox's.
One implementation serves both word sizes, so it can be checked against numpy.random.Philox (W = 64)
and against Random123's published known answers (W = 32).

Task stream (SPEC 1.1, the same on host and device; seed: 64-bit, step: 32-bit):
    key      = (seed & 0xffffffff, seed >> 32)
    counter  = (j, task b, step, stream)     stream 0: w, stream 1: x
    one block of 4 words -> 2 float64 uniforms u = ((a >> 5) 2^26 + (b >> 6)) / 2^53 in [0, 1)
    w[b, 2j + k] = s * Box-Muller(u0, u1)[k]  z0 = sqrt(-2 ln(1 - u0)) cos(2 pi u1), z1 = ... sin
    x[b, e] = -r/2 + r * u_e for e = 2j + k  (row-major over the (N+1, d) inputs of task b)
    y_t = sum_i w_i x_ti (in the order i = 0..d-1); tokens [x_t, y_t], the query's label slot 0.
Everything is computed in float64 and rounded to the requested dtype at the end, so a float32
batch is the float64 batch rounded.
"""
import numpy as np

from refimpl.validate import check_positive_int

# Philox constants: round multipliers and Weyl key increments (Random123, philox.h)
PHILOX = {
    32: dict(dtype=np.uint32, wide=np.uint64, mul=(0xD2511F53, 0xCD9E8D57),
             weyl=(0x9E3779B9, 0xBB67AE85)),
    64: dict(dtype=np.uint64, wide=None, mul=(0xD2E7470EE14C6C93, 0xCA5A826395121157),
             weyl=(0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)),
}
ROUNDS = 10
STREAM_W, STREAM_X = 0, 1


def _mulhilo(a, m, bits):
    """(hi, lo) words of the 2W-bit product a * m, elementwise."""
    if bits == 32:
        p = a.astype(np.uint64) * np.uint64(m)
        return (p >> np.uint64(32)).astype(np.uint32), p.astype(np.uint32)
    # 64 x 64 -> 128 bits from 32-bit halves (NumPy has no 128-bit integers)
    mask = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a_lo, a_hi = a & mask, a >> s32
    m_lo, m_hi = np.uint64(m & 0xFFFFFFFF), np.uint64(m >> 32)
    ll, lh, hl, hh = a_lo * m_lo, a_lo * m_hi, a_hi * m_lo, a_hi * m_hi
    mid = (ll >> s32) + (lh & mask) + (hl & mask)
    hi = hh + (lh >> s32) + (hl >> s32) + (mid >> s32)
    lo = (mid << s32) | (ll & mask)
    return hi, lo


def philox(counter, key, bits=32, rounds=ROUNDS):
    """Philox-4x`bits`-`rounds`: counter (..., 4), key (2,) or (..., 2) -> (..., 4) unsigned words."""
    c = PHILOX.get(bits)
    if c is None:
        raise ValueError(f"bits: expected 32 or 64, got {bits!r}")
    dt = c["dtype"]
    with np.errstate(over="ignore"):
        ctr = np.asarray(counter).astype(dt)
        k = np.asarray(key).astype(dt)
        if ctr.shape[-1] != 4 or k.shape[-1] != 2:
            raise ValueError(f"counter, key: expected last axes 4 and 2, got {ctr.shape}, {k.shape}")
        x0, x1, x2, x3 = (ctr[..., i] for i in range(4))
        k0, k1 = np.broadcast_to(k[..., 0], x0.shape), np.broadcast_to(k[..., 1], x0.shape)
        for r in range(rounds):
            if r > 0:  # bump the key between rounds
                k0 = k0 + dt(c["weyl"][0])
                k1 = k1 + dt(c["weyl"][1])
            hi0, lo0 = _mulhilo(x0, c["mul"][0], bits)
            hi1, lo1 = _mulhilo(x2, c["mul"][1], bits)
            x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
    return np.stack([x0, x1, x2, x3], axis=-1)


def seed_key(seed):
    """64-bit seed -> Philox4x32 key (2 words)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed: expected an integer in [0, 2^64), got {seed!r}")
    seed = int(seed)
    return np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)


def uniforms53(words):
    """(..., 4) uint32 words -> (..., 2) float64 uniforms in [0, 1) with 53 random bits each."""
    a = (words[..., 0::2] >> np.uint32(5)).astype(np.float64)  # 27 bits
    b = (words[..., 1::2] >> np.uint32(6)).astype(np.float64)  # 26 bits
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)


def task_uniforms(seed, step, batch, count, stream):
    """(batch, count) float64 uniforms of one stream of the task stream, 2 per Philox block."""
    blocks = (count + 1) // 2
    j, b = np.meshgrid(np.arange(blocks), np.arange(batch))  # (B, blocks)
    counter = np.stack([j, b, np.full_like(j, step), np.full_like(j, stream)], axis=-1)
    u = uniforms53(philox(counter.astype(np.uint32), seed_key(seed)))  # (B, blocks, 2)
    return u.reshape(batch, 2 * blocks)[:, :count]


def box_muller(u0, u1):
    """Two independent N(0, 1) draws from two uniforms in [0, 1) (1 - u0 in (0, 1] keeps log finite)."""
    rad = np.sqrt(-2.0 * np.log(1.0 - u0))
    return rad * np.cos(2.0 * np.pi * u1), rad * np.sin(2.0 * np.pi * u1)


def linear_regression_tasks(seed, step, batch, num_context=10, input_dim=10, input_range=1.0,
                            weight_scale=1.0, dtype=np.float64):
    """The batch the device draws at `step`: tokens (B, N+1, d+1) and targets (B,), SPEC 1.1."""
    B = check_positive_int("batch", batch)
    N = check_positive_int("num_context", num_context)
    d = check_positive_int("input_dim", input_dim)
    step = check_positive_int("step", step, minimum=0)
    if step >= 2**32:
        raise ValueError(f"step: expected an integer below 2^32, got {step}")
    uw = task_uniforms(seed, step, B, 2 * ((d + 1) // 2), STREAM_W)  # (B, 2 ceil(d/2))
    z0, z1 = box_muller(uw[:, 0::2], uw[:, 1::2])  # (B, ceil(d/2)) each
    w = weight_scale * np.stack([z0, z1], axis=-1).reshape(B, -1)[:, :d]  # (B, d)
    ux = task_uniforms(seed, step, B, (N + 1) * d, STREAM_X)  # (B, (N+1) d)
    x = (-input_range / 2 + input_range * ux).reshape(B, N + 1, d)  # (B, T, d)
    y = np.zeros((B, N + 1))  # (B, T): y_t = w . x_t summed in the order i = 0..d-1
    for i in range(d):
        y = y + w[:, None, i] * x[:, :, i]
    target = y[:, -1].copy()  # (B,)
    y[:, -1] = 0.0
    tokens = np.concatenate([x, y[..., None]], axis=-1)  # (B, T, d+1)
    return tokens.astype(dtype), target.astype(dtype)
