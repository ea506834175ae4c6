"""Sine-wave regression tasks (SPEC 1.3): shapes, ranges, the labels, and the coupled switch."""
import numpy as np
import pytest

from refimpl.sine import sine_tasks


@pytest.mark.parametrize("coupled", [False, True])
def test_sine_tasks_shapes_ranges_and_labels(coupled):
    tokens, targets, (a, rho) = sine_tasks(np.random.default_rng(0), 4000, num_context=7, coupled=coupled)
    assert tokens.shape == (4000, 8, 2) and targets.shape == (4000,)
    x = tokens[..., 0]
    assert x.min() >= -5 and x.max() < 5 and x.min() < -4.9 and x.max() > 4.9
    assert a.min() >= 0.1 and a.max() <= 0.5 and rho.min() >= 0 and rho.max() <= np.pi
    np.testing.assert_allclose(tokens[:, :-1, 1], a[:, None] * np.sin(x[:, :-1] + rho[:, None]), rtol=1e-15, atol=1e-17)
    np.testing.assert_allclose(targets, a * np.sin(x[:, -1] + rho), rtol=1e-15, atol=1e-17)
    assert not tokens[:, -1, 1].any()  # the query's label slot is 0
    corr = np.corrcoef(a, rho)[0, 1]
    if coupled:  # one shared draw: rho is an exact affine function of a
        np.testing.assert_allclose((a - 0.1) / 0.4, rho / np.pi, rtol=1e-12, atol=1e-15)
    else:
        assert abs(corr) < 0.05


def test_sine_tasks_take_the_papers_ranges_and_refuse_bad_ones():
    _, _, (a, rho) = sine_tasks(np.random.default_rng(1), 2000, amplitude=(0.1, 5.0))
    assert a.max() > 4.5 and a.min() >= 0.1
    with pytest.raises(ValueError, match=r"amplitude: expected \(low, high\) with low <= high, both finite, got \(5.0, 0.1\)"):
        sine_tasks(np.random.default_rng(1), 2, amplitude=(5.0, 0.1))
