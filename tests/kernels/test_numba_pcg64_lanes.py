"""kernels.numba.pcg64_lanes gives NumPy's uniform draws bit for bit from PCG64 states stepped in
SIMD lanes, and leaves every lane state where stepping one at a time would."""
import numpy as np
import pytest

pytest.importorskip("numba", reason="kernels.numba.pcg64_lanes needs Numba")

from numba import njit  # noqa: E402

from kernels.numba.pcg64 import pcg64_jump, set_state, state_words  # noqa: E402
from kernels.numba.pcg64_lanes import STATES, lane_states, stride_map, uniform_rounds  # noqa: E402


@njit  # not cached: the lanes module's edits must reach it
def _draw(st, low, span, n, start, pad):
    """n uniforms after state st through the lanes, written at out[start:]; returns out and lanes."""
    rounds = (n + STATES - 1) // STATES
    out = np.full(start + rounds * STATES + pad, np.nan)
    lanes = np.empty((2, STATES), np.uint64)
    lane_states(st[0], st[1], st[2], st[3], lanes)
    uniform_rounds(lanes, stride_map(st[2], st[3]), out, start, rounds, low, span)
    return out, lanes


@pytest.mark.parametrize("seed, n, low, span, start", [
    (0, 100_003, -0.5, 1.0, 0),  # the drawer's law, n not a multiple of the lane count
    (1, STATES, -1.25, 2.5, 3),  # one round, written at an offset
    (2**90 + 17, 1000, 3.0, 0.0, 1),  # zero span: every value is low
    (5, 64_000, 1e300, 1e-300, 0),  # low + span u rounds: the two roundings must be NumPy's
    (9, 0, -0.5, 1.0, 0),  # no round
])
def test_lane_uniforms_equal_numpys(seed, n, low, span, start):
    rng, ref = np.random.default_rng(seed), np.random.default_rng(seed)
    ref.random(7)  # states other than the seed's
    rng.random(7)
    st, full = state_words(rng.bit_generator)
    got, lanes = _draw(st, low, span, n, start, 5)
    rounds = -(-n // STATES)
    law = np.random.default_rng(seed)
    law.random(7)
    want = low + span * ref.random(rounds * STATES)  # NumPy's uniform: low + (high - low) next_double
    if (low + span) - low == span:  # and where high - low gives span back, Generator.uniform itself
        np.testing.assert_array_equal(want, law.uniform(low, low + span, rounds * STATES))
    np.testing.assert_array_equal(got[start:start + rounds * STATES].view(np.uint64), want.view(np.uint64))
    assert np.isnan(got[:start]).all() and np.isnan(got[start + rounds * STATES:]).all()  # nothing else written
    for j in range(STATES):  # lane j stepped to value rounds * STATES + j: as many steps one at a time
        assert tuple(lanes[:, j]) == tuple(pcg64_jump(st[0], st[1], st[2], st[3], np.uint64(rounds * STATES + j + 1)))
    set_state(rng.bit_generator, full, *pcg64_jump(st[0], st[1], st[2], st[3], np.uint64(rounds * STATES)))
    assert rng.bit_generator.state == ref.bit_generator.state


def test_stride_map_is_the_map_of_states_steps():
    """A state + C for the returned (A, C) equals the jump of STATES steps, over many states and
    increments (the borrow of A = (A + C) - C included)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        ih, il, sh, sl = (np.uint64(v) for v in rng.integers(0, 2**64, 4, dtype=np.uint64))
        il |= np.uint64(1)  # PCG64 increments are odd
        ah, al, ch, cl = (int(v) for v in stride_map(ih, il))
        a, c, s = (ah << 64) | al, (ch << 64) | cl, (int(sh) << 64) | int(sl)
        jh, jl = pcg64_jump(sh, sl, ih, il, np.uint64(STATES))
        assert (a * s + c) % 2**128 == (int(jh) << 64) | int(jl)


@pytest.mark.parametrize("cpu, features", [
    ("haswell", "+64bit,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+avx,+avx2,+fma,+popcnt,+cx16"),  # AVX2, no AVX-512
    ("x86-64", "+64bit,+sse2"),  # SSE2 alone: the 512-bit vectors in four registers
])
def test_lanes_compile_and_agree_without_avx512(cpu, features, tmp_path):
    """The lanes' asm barriers fit the registers a CPU without AVX-512 has (compiled for such a
    target in a fresh process, its own cache): same values as NumPy there too."""
    import platform
    import subprocess
    import sys
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 target features")
    code = ("import numpy as np\n"
            "from tests.kernels.test_numba_pcg64_lanes import _draw\n"
            "from kernels.numba.pcg64 import state_words\n"
            "rng = np.random.default_rng(4)\n"
            "st, _ = state_words(rng.bit_generator)\n"
            "got, _ = _draw(st, -0.5, 1.0, 1000, 0, 0)\n"
            "want = np.random.default_rng(4).uniform(-0.5, 0.5, got.shape[0])\n"
            "assert np.array_equal(got.view(np.uint64), want.view(np.uint64))\n"
            "print('ok')\n")
    import os
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
