"""SPEC 5 layer matching: similarity of errors, heatmaps, best matches, closed-form probes and the
per-layer hidden states."""
import numpy as np
import pytest

from refimpl.config import ModelConfig
from refimpl.model import model_forward
from refimpl.params import init_params
from refimpl.similarity import best_matches, layer_states, probe_fit, probe_predict, sime, sime_heatmap
from tests.conftest import TOL


def test_sime_of_a_vector_with_itself_is_one_and_it_is_scale_invariant(rng):
    r = rng.standard_normal((7, 41))
    other = rng.standard_normal((7, 41))
    assert sime(r, r) == pytest.approx(1.0, abs=1e-14)
    scale = rng.uniform(0.1, 10, size=(7, 1))  # a different positive scale per prompt
    assert sime(r * scale, other) == pytest.approx(sime(r, other), abs=1e-14)
    assert sime(-r, r) == pytest.approx(-1.0, abs=1e-14)
    assert abs(sime(r, other)) < 0.3  # independent residuals: near 0, not 1


def test_sime_is_the_mean_of_per_prompt_cosines(rng):
    a, b = rng.standard_normal((5, 9)), rng.standard_normal((5, 9))
    cos = [a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]) for i in range(5)]
    assert sime(a, b) == pytest.approx(np.mean(cos), rel=1e-13)


def test_heatmap_entries_are_pairwise_sime_and_best_matches_pick_the_argmax(rng):
    rows, cols = rng.standard_normal((3, 6, 8)), rng.standard_normal((4, 6, 8))
    cols[2] = rows[1] * 3.0  # column 2 is row 1, scaled
    h = sime_heatmap(rows, cols)
    assert h.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert h[i, j] == pytest.approx(sime(rows[i], cols[j]), abs=1e-14)
    values, sims = best_matches(h, np.array([1, 50, 100, 150]))
    assert values[1] == 100 and sims[1] == pytest.approx(1.0, abs=1e-14)
    with pytest.raises(ValueError, match="grid: expected 4 values"):
        best_matches(h, [1, 2])


def test_probe_equals_numpy_lstsq_with_a_bias_column(rng):
    h = rng.standard_normal((300, 7)) @ rng.standard_normal((7, 7))
    y = h @ rng.standard_normal(7) + 0.7 + 0.1 * rng.standard_normal(300)
    v, c = probe_fit(h, y)
    sol = np.linalg.lstsq(np.hstack([h, np.ones((300, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(np.append(v, c), sol, **TOL["solve_vs_lstsq"])
    np.testing.assert_allclose(probe_predict(h, v, c), np.hstack([h, np.ones((300, 1))]) @ sol,
                               **TOL["solve_vs_lstsq"])


def test_probe_of_rank_deficient_states_is_the_minimum_norm_solution(rng):
    """A constant feature and a duplicated one (as the query's zero label slot gives): lstsq's
    minimum-norm answer over [h, 1], once centred (the bias absorbs the constant)."""
    base = rng.standard_normal((200, 3))
    h = np.hstack([base, base[:, :1], np.full((200, 1), 2.0)])  # (200, 5): rank 3 once centred
    y = base @ np.array([1.0, -2.0, 0.5]) + 0.3
    v, c = probe_fit(h, y)
    np.testing.assert_allclose(probe_predict(h, v, c), y, **TOL["solve_vs_lstsq"])
    assert v[0] == pytest.approx(v[3], rel=1e-10) and abs(v[4]) < 1e-12  # the norm split evenly


def test_layer_states_end_in_the_model_readouts(rng):
    cfg = ModelConfig(token_dim=4, key_size=3, num_layers=3, init_scale=1.0)
    params = init_params(cfg, rng)
    tokens = rng.standard_normal((5, 6, 4))
    states = layer_states(params, tokens, cfg)
    assert states.shape == (3, 5, 6, 4)
    readouts, _ = model_forward(params, tokens, cfg)
    np.testing.assert_allclose(-states[:, :, -1, -1], readouts, **TOL["float64_reordered_near_zero"])
