"""SPEC 1.5 and 4.4: the Gaussian and ill-conditioned task family in both layouts, and the
in-context learners of the second-order paper at every prefix length."""
import numpy as np
import pytest

from refimpl import algorithms as alg
from refimpl.gaussian import (GaussianTaskConfig, GaussianTaskSource, constructed_tokens, eval_prompts,
                              gaussian_regression, ill_conditioned_transform, input_transform,
                              interleaved_tokens, prefix_tokens)
from tests.conftest import TOL


def _prompts(rng, B=6, n=9, d=5, covariance="isotropic"):
    task = GaussianTaskConfig(input_dim=d, num_pairs=n, covariance=covariance)
    x, y, w = gaussian_regression(rng, B, task, input_transform(rng, task))
    return x, y, w


# ------------------------------------------------------------------------------------------ data
def test_ill_conditioned_transform_has_kappa_100_and_trace_d(rng):
    for d in (20, 7):
        t = ill_conditioned_transform(rng, d)
        sigma = t.T @ t
        eig = np.linalg.eigvalsh(sigma)
        np.testing.assert_allclose(np.trace(sigma), d, rtol=1e-12)
        np.testing.assert_allclose(eig[-1] / eig[0], 100.0, rtol=1e-9)
        np.testing.assert_allclose(t, t.T, atol=1e-14)  # U diag(e) U^T is symmetric


def test_ill_conditioned_samples_have_kappa_100_and_trace_d_to_sampling_error(rng):
    """The empirical covariance of 200 000 draws: trace d and condition number 100 within a few
    percent (the sampling error of a 20 x 20 covariance from 2e5 samples is about 1 %)."""
    task = GaussianTaskConfig(covariance="ill_conditioned", num_pairs=2)
    t = input_transform(rng, task)
    x, _, _ = gaussian_regression(rng, 100_000, task, t)
    x = x.reshape(-1, 20)
    emp = x.T @ x / len(x)
    eig = np.linalg.eigvalsh(emp)
    assert abs(np.trace(emp) / 20 - 1) < 0.01
    assert abs(eig[-1] / eig[0] / 100 - 1) < 0.05
    np.testing.assert_allclose(emp, t.T @ t, atol=0.03)


def test_a_new_rotation_per_batch_and_one_seeded_rotation_for_evaluation(rng):
    task = GaussianTaskConfig(covariance="ill_conditioned", num_pairs=3, eval_tasks=4)
    src = GaussianTaskSource(task, 4)
    a, _ = src.next_batch(rng, 0)
    b, _ = src.next_batch(rng, 1)
    # x = z t: the per-batch t differs, so the two batches' Gram matrices have different eigenvectors
    assert not np.allclose(a, b)
    e1, e2 = eval_prompts(task), eval_prompts(task)
    np.testing.assert_array_equal(e1[3], e2[3])
    np.testing.assert_array_equal(e1[0], e2[0])
    assert not np.allclose(e1[3], np.eye(20))


def test_diagonal_and_isotropic_covariances(rng):
    diag = tuple(float(v) for v in np.linspace(0.5, 2.0, 4))
    task = GaussianTaskConfig(input_dim=4, num_pairs=2, covariance="diagonal", diagonal=diag)
    x, _, _ = gaussian_regression(rng, 50_000, task, input_transform(rng, task))
    np.testing.assert_allclose(np.var(x.reshape(-1, 4), axis=0), diag, rtol=0.03)
    np.testing.assert_array_equal(input_transform(rng, GaussianTaskConfig()), np.eye(20))


def test_labels_are_w_dot_x_and_both_layouts_hold_the_same_prompt(rng):
    x, y, w = _prompts(rng, B=3, n=4, d=5)
    np.testing.assert_allclose(y, np.einsum("bnd,bd->bn", x, w), **TOL["float64_reordered"])
    tokens, target = constructed_tokens(x, y)
    assert tokens.shape == (3, 4, 6)
    np.testing.assert_array_equal(tokens[:, :, :5], x)
    np.testing.assert_array_equal(tokens[:, :3, 5], y[:, :3])
    assert np.all(tokens[:, 3, 5] == 0) and np.array_equal(target, y[:, 3])
    seq = interleaved_tokens(x, y)
    assert seq.shape == (3, 8, 5)
    np.testing.assert_array_equal(seq[:, 0::2], x)
    np.testing.assert_array_equal(seq[:, 1::2, 0], y)
    assert np.all(seq[:, 1::2, 1:] == 0)
    pre, t2 = prefix_tokens(x, y, 2)
    assert pre.shape == (3, 3, 6) and np.array_equal(t2, y[:, 2]) and np.all(pre[:, -1, -1] == 0)


def test_noise_is_optional_and_added_to_the_labels(rng):
    task = GaussianTaskConfig(input_dim=3, num_pairs=4000, noise=0.5)
    x, y, w = gaussian_regression(rng, 2, task, np.eye(3))
    r = y - np.einsum("bnd,bd->bn", x, w)
    assert abs(np.std(r) - 0.5) < 0.02


@pytest.mark.parametrize("kw, msg", [
    (dict(covariance="wide"), "task.covariance: expected one of"),
    (dict(covariance="diagonal", diagonal=(1.0,)), "task.diagonal: expected a list of 20 items"),
    (dict(input_dim=2, covariance="diagonal", diagonal=(1.0, -1.0)), "task.diagonal: expected a list whose items"),
    (dict(diagonal=(1.0,)), "task.diagonal: expected an empty list unless covariance = 'diagonal'"),
    (dict(num_pairs=1), "task.num_pairs: expected an integer >= 2, got 1"),
])
def test_bad_task_fields_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace("[", r"\[")):
        GaussianTaskConfig(**kw)


# ------------------------------------------------------------------------------------ algorithms
def test_every_learner_predicts_zero_from_the_empty_prefix(rng):
    x, y, _ = _prompts(rng)
    preds = {**alg.all_learners(x, y), "newton": alg.newton_predictions(x, y, [0, 3])[1],
             "newton_it": alg.newton_iterative(x, y, 2), "gd": alg.gd_predictions(x, y, [1, 7])[1],
             "gd_it": alg.gd_iterative(x, y, 3)}
    for name, p in preds.items():
        assert p.shape == y.shape, name
        assert np.all(p[:, 0] == 0), name
        assert np.any(p[:, 1:] != 0), name


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_newton_identity_agrees_with_the_recursion(rng, scale):
    x, y, _ = _prompts(rng, B=4, n=12, d=5, covariance="ill_conditioned")
    closed = alg.newton_predictions(x, y, [0, 1, 4, 9], alpha_scale=scale)
    for i, k in enumerate([0, 1, 4, 9]):
        np.testing.assert_allclose(closed[i], alg.newton_iterative(x, y, k, alpha_scale=scale),
                                   **TOL["recursion_vs_closed_form"])


def test_gd_closed_form_agrees_with_the_recursion(rng):
    x, y, _ = _prompts(rng, B=4, n=12, d=5)
    closed = alg.gd_predictions(x, y, [0, 1, 13, 60], eta=0.03)
    for i, t in enumerate([0, 1, 13, 60]):
        np.testing.assert_allclose(closed[i], alg.gd_iterative(x, y, t, eta=0.03),
                                   **TOL["recursion_vs_closed_form"])


def _lstsq_predictions(x, y):
    B, n, _ = x.shape
    out = np.zeros((B, n))
    for b in range(B):
        for i in range(1, n):
            w = np.linalg.lstsq(x[b, :i], y[b, :i], rcond=None)[0]
            out[b, i] = x[b, i] @ w
    return out


def test_least_squares_is_the_minimum_norm_fit_of_every_prefix(rng):
    """n < d prefixes (under-determined: lstsq gives the minimum-norm solution) and n >= d ones."""
    x, y, _ = _prompts(rng, B=3, n=10, d=6)
    y = y + 0.3 * rng.standard_normal(y.shape)  # noisy: the over-determined fits do not interpolate
    np.testing.assert_allclose(alg.least_squares_predictions(x, y), _lstsq_predictions(x, y),
                               **TOL["solve_vs_lstsq"])


def test_newton_and_gd_converge_to_least_squares_on_well_posed_prefixes(rng):
    x, y, _ = _prompts(rng, B=3, n=16, d=4)
    y = y + 0.3 * rng.standard_normal(y.shape)
    ls = _lstsq_predictions(x, y)
    newton = alg.newton_predictions(x, y, [30])[0]
    gd = alg.gd_predictions(x, y, [200_000], eta=0.01)[0]
    well = slice(8, None)  # prefixes of >= 2d pairs: S well conditioned
    np.testing.assert_allclose(newton[:, well], ls[:, well], **TOL["solve_vs_lstsq"])
    np.testing.assert_allclose(gd[:, well], ls[:, well], **TOL["solve_vs_lstsq"])
    # and at few steps they are not there yet (the test can fail)
    assert np.max(np.abs(alg.newton_predictions(x, y, [1])[0][:, well] - ls[:, well])) > 1e-3


def test_newton_and_gd_stay_minimum_norm_when_n_is_below_d(rng):
    """From w_0 = 0 (GD) and M_0 = alpha S (Newton) the iterates stay in the row space of X, so they
    converge to the minimum-norm interpolant when the prefix has fewer pairs than dimensions."""
    x, y, _ = _prompts(rng, B=3, n=5, d=8)
    ls = _lstsq_predictions(x, y)
    np.testing.assert_allclose(alg.newton_predictions(x, y, [40])[0], ls, **TOL["solve_vs_lstsq"])
    np.testing.assert_allclose(alg.gd_predictions(x, y, [400_000], eta=0.01)[0], ls, **TOL["solve_vs_lstsq"])


def test_online_gd_averaging_and_nearest_neighbours_against_per_prompt_loops(rng):
    x, y, _ = _prompts(rng, B=3, n=7, d=4)
    B, n, d = x.shape
    for normalised in (False, True):
        want = np.zeros((B, n))
        for b in range(B):
            w = np.zeros(d)
            for i in range(n):
                want[b, i] = x[b, i] @ w
                step = 1 / (x[b, i] @ x[b, i]) if normalised else 0.05
                w = w - step * (x[b, i] @ w - y[b, i]) * x[b, i]
        got = alg.online_gd_predictions(x, y, eta=0.05, normalised=normalised)
        np.testing.assert_allclose(got, want, **TOL["oracle_vs_per_task_loop"])
    avg = np.array([[0.0] + [x[b, i] @ (y[b, :i] @ x[b, :i]) / i for i in range(1, n)] for b in range(B)])
    np.testing.assert_allclose(alg.averaging_predictions(x, y), avg, **TOL["oracle_vs_per_task_loop"])
    knn = np.zeros((B, n))
    for b in range(B):
        for i in range(1, n):
            near = np.argsort(np.linalg.norm(x[b, :i] - x[b, i], axis=1))[:3]
            knn[b, i] = y[b, near].mean()
    np.testing.assert_allclose(alg.nearest_neighbour_predictions(x, y), knn, **TOL["oracle_vs_per_task_loop"])


def test_gd_stable_tells_converging_from_diverging_prompts(rng):
    """eta lambda_max(S) <= 2 on the longest prefix: GD stays bounded at t = 10^5; above, it blows up."""
    x, y, _ = _prompts(rng, B=40, n=12, d=3)
    S = np.einsum("bnd,bne->bde", x[:, :-1], x[:, :-1])
    lam_max = np.linalg.eigvalsh(S)[:, -1]
    eta = 2.0 / np.median(lam_max)  # about half the prompts on each side
    stable = alg.gd_stable(x, eta)
    assert 0 < stable.sum() < len(stable)
    with np.errstate(over="ignore", invalid="ignore"):
        far = alg.gd_predictions(x, y, [100_000], eta=eta)[0]  # (B, n)
    assert np.all(np.isfinite(far[stable])) and np.max(np.abs(far[stable])) < 1e3 * np.max(np.abs(y))
    assert np.all(np.max(np.abs(np.nan_to_num(far[~stable], nan=np.inf)), axis=1) > 1e10)
