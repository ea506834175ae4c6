"""Adam with bias correction and global-norm clipping (SPEC 3) against a hand-computed trajectory."""
import math

import numpy as np
import pytest

from refimpl.config import AdamConfig
from refimpl.optim import adam_init, adam_update, clip_by_global_norm, global_norm
from tests.conftest import TOL


def hand_adam(p, grads, lr, b1, b2, eps, clip):
    """Scalar-by-scalar Adam written from SPEC 3 with Python floats, for a list of per-step grads."""
    names = list(p)
    m = {k: [0.0] * len(p[k]) for k in names}
    v = {k: [0.0] * len(p[k]) for k in names}
    p = {k: list(p[k]) for k in names}
    for t, g in enumerate(grads, start=1):
        norm = math.sqrt(sum(x * x for k in names for x in g[k]))
        f = min(1.0, clip / norm) if clip > 0 else 1.0
        for k in names:
            for i in range(len(p[k])):
                gi = g[k][i] * f
                m[k][i] = b1 * m[k][i] + (1 - b1) * gi
                v[k][i] = b2 * v[k][i] + (1 - b2) * gi * gi
                mhat = m[k][i] / (1 - b1**t)
                vhat = v[k][i] / (1 - b2**t)
                p[k][i] -= lr * mhat / (math.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("clip", [0.0, 0.5, 100.0])
def test_adam_three_steps_match_hand_computation(clip, rng):
    params = {"a": rng.standard_normal(3), "b": rng.standard_normal(2)}
    grads = [{"a": rng.standard_normal(3), "b": rng.standard_normal(2) * 3} for _ in range(3)]
    cfg = AdamConfig(lr=0.1, b1=0.9, b2=0.98, eps=1e-8, grad_clip=clip)
    state = adam_init(params)
    p = params
    for g in grads:
        p, state, _ = adam_update(p, g, state, cfg)
    expected = hand_adam({k: v.tolist() for k, v in params.items()},
                         [{k: v.tolist() for k, v in g.items()} for g in grads], 0.1, 0.9, 0.98, 1e-8, clip)
    for k in params:
        np.testing.assert_allclose(p[k], expected[k], **TOL["adam_vs_python_loop"])
    assert state["t"] == 3


def test_clipping_scales_to_the_bound_over_all_parameters(rng):
    grads = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    norm = np.sqrt(np.sum(grads["a"] ** 2) + np.sum(grads["b"] ** 2))
    clipped, reported = clip_by_global_norm(grads, 0.5 * norm)
    assert reported == pytest.approx(norm, rel=TOL["float64_reordered"]["rtol"])
    assert global_norm(clipped) == pytest.approx(0.5 * norm, rel=TOL["float64_reordered"]["rtol"])
    for k in grads:  # same direction: one factor for all parameters
        np.testing.assert_allclose(clipped[k], grads[k] * 0.5, **TOL["float64_reordered"])
    unclipped, _ = clip_by_global_norm(grads, 2 * norm)
    for k in grads:
        np.testing.assert_array_equal(unclipped[k], grads[k])


def test_adam_first_step_is_sign_times_lr():
    """With bias correction the first step is lr * g / (|g| + eps): about lr in every coordinate."""
    p = {"w": np.array([1.0, -2.0, 3.0])}
    g = {"w": np.array([0.3, -4.0, 1e-3])}
    new, _, _ = adam_update(p, g, adam_init(p), AdamConfig(lr=0.01, grad_clip=0.0))
    np.testing.assert_allclose(p["w"] - new["w"], 0.01 * g["w"] / (np.abs(g["w"]) + 1e-8),
                               **TOL["adam_step_vs_formula"])


def test_adam_does_not_mutate_inputs(rng):
    p = {"w": rng.standard_normal(4)}
    g = {"w": rng.standard_normal(4)}
    p0, g0 = p["w"].copy(), g["w"].copy()
    state = adam_init(p)
    adam_update(p, g, state, AdamConfig())
    np.testing.assert_array_equal(p["w"], p0)
    np.testing.assert_array_equal(g["w"], g0)
    assert state["t"] == 0 and not state["m"]["w"].any()


def test_adam_rejects_mismatched_grads(rng):
    p = {"w": rng.standard_normal(4)}
    with pytest.raises(ValueError, match="do not match"):
        adam_update(p, {"v": rng.standard_normal(4)}, adam_init(p), AdamConfig())
    with pytest.raises(ValueError, match="grads\\['w'\\]"):
        adam_update(p, {"w": rng.standard_normal(5)}, adam_init(p), AdamConfig())
    with pytest.raises(ValueError, match="NaN"):
        adam_update(p, {"w": np.array([1.0, np.nan, 0, 0])}, adam_init(p), AdamConfig())
