"""GD++'s data conditioning (refimpl.conditioning): the eigenvalue map against the explicit transform
of the tokens, the condition numbers and the bound from the extreme eigenvalues."""
import numpy as np
import pytest

from refimpl import conditioning
from refimpl.data import linear_regression_tasks
from tests.conftest import TOL


def test_map_on_a_hand_case():
    # lambda (1 - gamma lambda)^2: 1 (1 - 0.5)^2 = 0.25; 3 (1 - 0.5 * 3)^2 = 0.75; the root 1/gamma = 2 -> 0
    np.testing.assert_array_equal(conditioning.gdpp_eigenvalue_map([1.0, 3.0, 2.0, 0.0], 0.5), [0.25, 0.75, 0.0, 0.0])
    # S = diag(1, 4): kappa 4; gamma = 0.1 maps it to diag(0.81, 1.44): kappa 1.44 / 0.81
    stages = conditioning.gdpp_transformed_eigenvalues(np.array([[1.0, 4.0]]), [0.1])
    np.testing.assert_allclose(stages[1], [[0.81, 1.44]], **TOL["float64_reordered"])
    np.testing.assert_allclose(conditioning.condition_numbers(stages[1]), [1.44 / 0.81], **TOL["float64_reordered"])
    assert conditioning.condition_numbers(np.array([[0.0, 1.0]]))[0] == np.inf


def test_map_equals_the_spectrum_of_the_transformed_tokens(rng):
    """Layers x <- x (I - gamma S) applied to the tokens (S of each layer's own input), then the
    eigenvalues of X^T X: the map applied layer by layer; a map without the square would differ."""
    tokens, _ = linear_regression_tasks(rng, 5, num_context=7, input_dim=4)  # N = 7, d = 4
    gammas = [0.3, 0.7, 1.1]
    x = tokens[:, :, :-1].copy()  # (B, T, d)
    expected = [conditioning.gram_eigenvalues(tokens)]
    for g in gammas:
        S = np.einsum("bnd,bne->bde", x[:, :-1], x[:, :-1])  # (B, d, d)
        x = x - g * np.einsum("btd,bde->bte", x, S)
        expected.append(np.linalg.eigvalsh(np.einsum("bnd,bne->bde", x[:, :-1], x[:, :-1])))
    got = conditioning.gdpp_transformed_eigenvalues(expected[0], gammas)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
    wrong = np.sort(expected[0] * (1 - gammas[0] * expected[0]), axis=-1)
    assert np.max(np.abs(wrong - expected[1])) > 1e-3


def test_bound_is_the_papers_expression_where_that_applies_and_its_minimum():
    lo, hi = 0.1, 7.0
    gamma = np.array([0.08, 0.12])  # 1/(3 gamma) inside [lo, hi], 1/gamma above hi
    f = conditioning.gdpp_eigenvalue_map
    paper = f(1 / (3 * gamma), gamma) / np.minimum(f(lo, gamma), f(hi, gamma))
    np.testing.assert_allclose(conditioning.extreme_condition_bound(gamma, lo, hi), paper, **TOL["float64_reordered"])
    assert conditioning.extreme_condition_bound(np.array([0.5]), lo, hi)[0] == np.inf  # root 2 inside
    # a tiny gamma changes nothing: the bound tends to hi / lo
    np.testing.assert_allclose(conditioning.extreme_condition_bound(np.array([1e-9]), lo, hi), hi / lo, rtol=1e-6)
    g, k = conditioning.optimal_gamma(lo, hi)
    near = conditioning.extreme_condition_bound(np.array([g * 0.999, g * 1.001]), lo, hi)
    assert k <= near.min() and k < hi / lo
    with pytest.raises(ValueError, match="lam_min, lam_max: expected 0 < lam_min <= lam_max, got 0.0, 1.0"):
        conditioning.extreme_condition_bound(np.array([0.1]), 0.0, 1.0)
