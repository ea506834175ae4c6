"""The NumPy Philox (host mirror of kernels/cupy/cuda/philox.cuh) and the task batch it draws."""
import numpy as np
import pytest

from kernels.cupy import philox
from tests.conftest import TOL

# Random123's published known answers for Philox4x32-10 (its kat_vectors file): counter, key, output
RANDOM123_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", RANDOM123_KAT)
def test_philox4x32_10_known_answers(counter, key, expected):
    out = philox.philox(np.array(counter, np.uint32), np.array(key, np.uint32))
    assert [int(v) for v in out] == list(expected)


def test_philox4x64_matches_numpy_random_philox(rng):
    """The same round code at W = 64 reproduces numpy.random.Philox's raw output (it increments the
    counter before each block)."""
    key = rng.integers(0, 2**63, size=2, dtype=np.uint64)
    counter = rng.integers(0, 2**62, size=4, dtype=np.uint64)
    raw = np.random.Philox(key=key, counter=counter).random_raw(4 * 5)
    ctrs = np.array([counter + np.array([i + 1, 0, 0, 0], np.uint64) for i in range(5)])
    np.testing.assert_array_equal(philox.philox(ctrs, key, bits=64).ravel(), raw)


def test_uniforms_are_in_unit_interval_with_53_bits():
    words = np.array([[0, 0, 0xFFFFFFFF, 0xFFFFFFFF]], np.uint32)
    u = philox.uniforms53(words)
    assert u[0, 0] == 0.0 and u[0, 1] == 1.0 - 2.0**-53


def test_task_batch_moments_and_labels():
    B, N, d, r, s = 4000, 10, 10, 1.5, 2.0
    tok, y = philox.linear_regression_tasks(11, 3, B, N, d, r, s)
    x = tok[..., :d]
    n = x.size
    # x ~ U(-r/2, r/2): mean 0, variance r^2/12 (5-sigma bands)
    assert abs(x.mean()) < 5 * np.sqrt(r**2 / 12 / n)
    assert abs(x.var() - r**2 / 12) < 5 * np.sqrt(r**4 / 180 / n)
    assert x.min() >= -r / 2 and x.max() < r / 2
    # w from the labels: least squares on the N >= d context pairs recovers w exactly
    w = np.stack([np.linalg.lstsq(x[b, :N], tok[b, :N, -1], rcond=None)[0] for b in range(400)])
    np.testing.assert_allclose(np.einsum("bi,bi->b", w, x[:400, N]), y[:400], **TOL["label_from_weights"])
    assert abs(w.mean()) < 5 * s / np.sqrt(w.size)
    assert abs(w.var() / s**2 - 1) < 5 * np.sqrt(2 / w.size)
    assert np.all(tok[:, N, -1] == 0.0)  # the query's label slot


def test_task_batch_is_deterministic_per_seed_and_step():
    a = philox.linear_regression_tasks(5, 2, 16)
    b = philox.linear_regression_tasks(5, 2, 16)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], philox.linear_regression_tasks(5, 3, 16)[0])
    assert not np.array_equal(a[0], philox.linear_regression_tasks(6, 2, 16)[0])
    # task b does not depend on the batch size: the counter names the task
    np.testing.assert_array_equal(philox.linear_regression_tasks(5, 2, 40)[0][:16], a[0])
    f32 = philox.linear_regression_tasks(5, 2, 16, dtype=np.float32)[0]
    np.testing.assert_array_equal(f32, a[0].astype(np.float32))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="seed"):
        philox.seed_key(-1)
    with pytest.raises(ValueError, match="step"):
        philox.linear_regression_tasks(1, 2**32, 4)
    with pytest.raises(ValueError, match="bits"):
        philox.philox(np.zeros(4, np.uint32), np.zeros(2, np.uint32), bits=16)
