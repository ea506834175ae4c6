"""kernels.numba.finite.check_finite finds every NaN and inf that refimpl's check finds, and only
those (the extreme finite values pass), with refimpl's message."""
import numpy as np
import pytest

pytest.importorskip("numba", reason="kernels.numba.finite needs Numba")

from kernels.numba.finite import check_finite  # noqa: E402
from refimpl.validate import NonFiniteError, check_finite_values  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_extreme_finite_values_pass_and_come_back_contiguous(dtype):
    info = np.finfo(dtype)
    x = np.array([info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0, 0.0, 1.0], dtype)
    x = np.tile(x, (5, 3)).T  # (21, 5) Fortran order: not C-contiguous
    got = check_finite("x", x)
    assert got.flags.c_contiguous and got.dtype == dtype
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "nan-payload"])
def test_each_non_finite_value_anywhere_is_found(dtype, bad):
    rng = np.random.default_rng(3)
    for size in (1, 7, 64, 1001):
        x = rng.standard_normal((size, 3)).astype(dtype)  # (size, 3)
        pos = rng.integers(0, x.size, size=2)
        if bad == "nan-payload":  # a NaN with other mantissa bits and the sign set
            u = x.reshape(-1).view(np.uint64 if dtype == np.float64 else np.uint32)
            u[pos] = 0xFFF0000000000123 if dtype == np.float64 else 0xFF800123
        else:
            x.reshape(-1)[pos] = bad
        with pytest.raises(NonFiniteError) as got:
            check_finite("tokens", x)
        with pytest.raises(NonFiniteError) as want:
            check_finite_values("tokens", x)
        assert str(got.value) == str(want.value) and str(got.value).startswith("tokens: contains")
