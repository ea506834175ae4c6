"""Shared test fixtures: one random generator per test, one tolerance table (SPEC 7)."""
import zlib

import numpy as np
import pytest

# float64: rtol 1e-10 against the oracle (SPEC 7). float32: derived from its epsilon and the size
# of the longest reduction that produced the value (error grows ~ sqrt(n) for random-sign sums;
# the factor 8 covers the few chained reductions of a layer).
RTOL_FLOAT64 = 1e-10


def backend_tolerance(dtype, reduction_size=1):
    """(rtol, atol) for comparing a backend's result with the float64 oracle on the same inputs."""
    if np.dtype(dtype) == np.float64:
        return RTOL_FLOAT64, RTOL_FLOAT64
    eps = float(np.finfo(np.float32).eps)
    tol = 8.0 * eps * np.sqrt(max(int(reduction_size), 1)) * 10
    return tol, tol


def assert_close_to_oracle(actual, expected, dtype, reduction_size=1, name="value"):
    """Compare relative to the oracle tensor's scale: |a - e| <= atol * max|e| + rtol * |e|."""
    rtol, atol = backend_tolerance(dtype, reduction_size)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite entries (unwritten output?)"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    err = np.abs(actual - expected)
    bound = atol * scale + rtol * np.abs(expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    assert np.all(err <= bound), (f"{name}: max abs err {err.max():.3e} at {worst} exceeds "
                                  f"rtol {rtol:.1e} / atol {atol:.1e} x scale {scale:.3e}")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's file name and name: reproducible, different per test, and
    the same when a test file moves between folders of tests/ (the seed string is the id the test
    had when every file sat in tests/ itself, "tests/FILE.py::NAME[PARAMS]")."""
    seed = zlib.crc32(f"tests/{request.node.path.name}::{request.node.name}".encode())
    return np.random.default_rng(seed)
