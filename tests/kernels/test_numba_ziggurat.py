"""kernels.numba.ziggurat draws NumPy's standard normals bit for bit from the same PCG64 state,
the ziggurat's slow paths (the wedges and the tail beyond r) included."""
import numpy as np
import pytest

pytest.importorskip("numba", reason="kernels.numba.ziggurat needs Numba")

from kernels.numba.pcg64 import pcg64_jump, set_state, state_words  # noqa: E402
from kernels.numba.ziggurat import normal_kernel  # noqa: E402
from kernels.numba.ziggurat_tables import FI, KI, NOR_R, WI  # noqa: E402


@pytest.mark.parametrize("seed, n, scale", [(0, 1_000_000, 1.0), (7, 1_000_001, 0.3), (2**70 + 5, 3, -2.5)])
def test_normals_equal_numpys_bit_for_bit(seed, n, scale):
    rng, ref = np.random.default_rng(seed), np.random.default_rng(seed)
    ref.integers(0, 10, dtype=np.uint32)  # a buffered 32-bit half, which the normals leave alone
    rng.integers(0, 10, dtype=np.uint32)
    st, full = state_words(rng.bit_generator)
    start = st.copy()
    got = np.full(n, np.nan)  # (n,)
    normal_kernel(st, scale, got)
    want = ref.standard_normal(n) * scale  # (n,)
    np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
    set_state(rng.bit_generator, full, st[0], st[1])
    assert rng.bit_generator.state == ref.bit_generator.state
    if n >= 10**6:  # the slow paths ran: values in the tail, and more outputs used than values
        assert np.sum(np.abs(want) > NOR_R * abs(scale)) > 50
        assert tuple(pcg64_jump(start[0], start[1], start[2], start[3], np.uint64(n))) != (st[0], st[1])


def test_tables_have_the_ziggurat_shape():
    """Layer widths shrink from the base to the peak, the density grows to 1 at the peak, and the
    acceptance thresholds are below 2**52 (a table read at the wrong offset fails these)."""
    assert KI.shape == WI.shape == FI.shape == (256,)
    assert np.all(np.diff(WI[1:]) > 0) and FI[0] == 1.0 and np.all(np.diff(FI) < 0)
    assert np.all(KI < 2**52) and KI[1] == 0
    np.testing.assert_allclose(FI[1:], np.exp(-0.5 * (WI[1:] * 2.0**52) ** 2), rtol=1e-12)
