"""GD construction (Proposition 1), GD++, learning rates, metrics: properties that fail if broken."""
import numpy as np
import pytest

from refimpl import baselines, metrics
from refimpl.data import linear_regression_tasks
from refimpl.model import model_backward, model_forward
from refimpl.loss import mse_backward, mse_forward
from tests.conftest import TOL


def _tasks(rng, B=6, N=7, d=4, r=1.0):
    return linear_regression_tasks(rng, B, num_context=N, input_dim=d, input_range=r)


@pytest.mark.parametrize("steps", [1, 3])
def test_gd_construction_equals_explicit_gd_with_nonzero_start(rng, steps):
    tokens, _ = _tasks(rng)  # d = 4, N = 7: D = 5, T = 8 (all different)
    d, N = 4, 7
    w0 = rng.standard_normal(d)
    eta = 0.7 + rng.random()
    cfg = baselines.gd_model_config(d, steps)
    readouts, _ = model_forward(baselines.gd_params(d, eta, N, w0), baselines.gd_start_tokens(tokens, w0), cfg)
    expected = baselines.gd_explicit(tokens, eta, steps, w0)  # (L, B)
    np.testing.assert_allclose(readouts, expected, **TOL["construction_vs_gd"])
    # a wrong start (W_0 ignored in the tokens) must be detected
    wrong, _ = model_forward(baselines.gd_params(d, eta, N, w0), tokens, cfg)
    assert np.max(np.abs(wrong - expected)) > 1e-3


@pytest.mark.parametrize("tied", [True, False])
def test_gdpp_weights_equal_explicit_data_transformation(rng, tied):
    tokens, _ = _tasks(rng)
    d, N, L = 4, 7, 3
    etas = np.array([0.9]) if tied else np.array([0.9, 1.3, 0.6])
    gammas = np.array([0.05]) if tied else np.array([0.05, 0.02, 0.08])
    cfg = baselines.gdpp_model_config(d, L, tied)
    readouts, _ = model_forward(baselines.gdpp_params(d, etas, gammas, N), tokens, cfg)
    expected = baselines.gdpp_explicit(tokens, np.resize(etas, L), np.resize(gammas, L))
    np.testing.assert_allclose(readouts, expected, **TOL["construction_vs_gd"])
    # gamma matters after the first layer: gamma = 0 gives plain GD, which differs
    plain = baselines.gdpp_explicit(tokens, np.resize(etas, L), np.zeros(L))
    assert np.max(np.abs(plain[1:] - expected[1:])) > 1e-6


@pytest.mark.parametrize("entries", sorted(baselines.GDPP_ENTRIES))
def test_gdpp_entry_gradients_match_finite_differences(rng, entries):
    """The projection of the model's weight gradients onto GD++'s trained entries against central
    differences of the loss in those entries (L = 3 sets, d != N, entries away from the start)."""
    tokens, targets = _tasks(rng, B=9)
    d, N, L = 4, 7, 3
    cfg = baselines.gdpp_model_config(d, L, tied=False)
    scalars = baselines.gdpp_entries_init(1.0, N, L, entries)
    scalars = {k: v * (1 + 0.3 * rng.standard_normal(L)) for k, v in scalars.items()}

    def loss(s):
        out, _ = model_forward(baselines.gdpp_entries_params(d, s), tokens, cfg)
        return mse_forward(out[-1], targets)[0]

    readouts, cache = model_forward(baselines.gdpp_entries_params(d, scalars), tokens, cfg)
    dread = np.zeros_like(readouts)
    dread[-1] = mse_backward(1.0, mse_forward(readouts[-1], targets)[1])
    _, grads = model_backward(dread, cache)
    analytic = baselines.gdpp_entry_grads(grads, d, scalars)
    assert set(analytic) == ({"p_x", "p_y", "v_x", "v_y"} if entries == "wv_wp" else {"p_x", "p_y"})
    h = 1e-6
    for k in scalars:
        for p in range(L):
            up = {**scalars, k: scalars[k] + h * np.eye(L)[p]}
            down = {**scalars, k: scalars[k] - h * np.eye(L)[p]}
            num = (loss(up) - loss(down)) / (2 * h)
            assert abs(analytic[k][p] - num) <= TOL["finite_difference"]["rtol"] * max(1.0, abs(num)), (k, p)
    # the last set's x entries move nothing that reaches the read-out
    assert analytic["p_x"][-1] == 0


def test_gdpp_entries_describe_the_gdpp_of_their_effective_eta_and_gamma(rng):
    """W_V = diag(v_x, v_y), W_P = diag(p_x, p_y) and gdpp_params(eta, gamma) with gamma = -p_x v_x,
    eta/N = -p_y v_y give the same read-outs, and the start is eta0, eta0 / N^2 (SPEC 4.2)."""
    tokens, _ = _tasks(rng)
    d, N, L = 4, 7, 3
    cfg = baselines.gdpp_model_config(d, L, tied=False)
    start = baselines.gdpp_entries_init(1.3, N, L, "wv_wp")
    np.testing.assert_allclose(baselines.gdpp_entries_effective(start, N), (np.full(L, 1.3), np.full(L, 1.3 / N**2)))
    scalars = {k: v * (1 + 0.3 * rng.standard_normal(L)) for k, v in start.items()}
    etas, gammas = baselines.gdpp_entries_effective(scalars, N)
    out, _ = model_forward(baselines.gdpp_entries_params(d, scalars), tokens, cfg)
    ref, _ = model_forward(baselines.gdpp_params(d, etas, gammas, N), tokens, cfg)
    np.testing.assert_allclose(out, ref, **TOL["gdpp_vs_explicit"])
    np.testing.assert_allclose(out, baselines.gdpp_explicit(tokens, etas, gammas), **TOL["gdpp_vs_explicit"])


def test_closed_form_eta_within_one_grid_step_of_grid_optimum():
    tokens, targets = linear_regression_tasks(np.random.default_rng(7), 20000)
    grid = baselines.eta_grid()
    best, losses = baselines.grid_search_eta(tokens, targets, steps=1, grid=grid)
    closed = baselines.closed_form_eta(tokens)
    assert abs(closed - best) <= grid[1] - grid[0]
    assert losses[np.argmin(np.abs(grid - best))] == losses.min()
    # the empirical ratio approaches its expectation for the uniform law (0.606 N for d = N = 10)
    exact = baselines.closed_form_eta_uniform(10, 10, 1.0)
    assert abs(exact / 10 - 8.3333 / 13.75) < 1e-4
    assert abs(closed - exact) / exact < 0.02


def test_gd_sensitivity_is_the_one_step_weights(rng):
    """d y_hat / d x_q of one GD step from 0 is W_1 = (eta/N) X^T y, through the hand-written backward."""
    tokens, _ = _tasks(rng)
    d, N, eta = 4, 7, 1.7
    sens = metrics.query_sensitivity(baselines.gd_params(d, eta, N), tokens, baselines.gd_model_config(d, 1))
    W1 = (eta / N) * np.einsum("bnd,bn->bd", tokens[:, :-1, :-1], tokens[:, :-1, -1])
    np.testing.assert_allclose(sens, W1, **TOL["sensitivity_vs_weights"])


def test_alignment_of_a_model_with_itself_and_with_a_scaled_copy(rng):
    pred, sens = rng.standard_normal(5), rng.standard_normal((5, 3))
    same = metrics.alignment(pred, sens, pred, sens)
    assert same["preds_diff"] == 0 and same["model_diff"] == 0
    assert abs(same["model_cos"] - 1) < TOL["cosine_of_parallel"]["atol"]
    flipped = metrics.alignment(pred, sens, -pred, -2 * sens)
    assert abs(flipped["model_cos"] + 1) < TOL["cosine_of_parallel"]["atol"]
    np.testing.assert_allclose(flipped["model_diff"], np.mean(3 * np.linalg.norm(sens, axis=1)))


def test_interpolation_undoes_the_scale_ambiguity(rng):
    """W_Q -> c W_Q, W_P -> W_P / c leaves the layer unchanged; the interpolation of such a rescaled
    GD layer with GD is GD again (m = c)."""
    d, N, c = 4, 7, 0.37
    gd = baselines.gd_params(d, 1.3, N)
    scaled = dict(gd, **{"layer0.attn.W_q": c * gd["layer0.attn.W_q"], "layer0.attn.W_p": gd["layer0.attn.W_p"] / c})
    interp, m = metrics.interpolated_params(scaled, gd, d)
    assert abs(m - c) < TOL["rescaling_undone_float64"]["atol"]
    W_KQ, W_PV = metrics.layer_products(interp)
    W_KQ_gd, W_PV_gd = metrics.layer_products(gd)
    np.testing.assert_allclose(W_KQ, W_KQ_gd, **TOL["rescaling_undone_float64"])
    np.testing.assert_allclose(W_PV, W_PV_gd, **TOL["rescaling_undone_float64"])


@pytest.mark.parametrize("entries", sorted(baselines.GDPP_ENTRIES))
def test_gdpp_fit_through_numba_cpu_follows_the_oracle_fit(entries):
    """fit_gdpp with the numba-cpu gradients (fig3 --backend numba-cpu) against the oracle's:
    same batches, same Adam, gradients equal to rounding, so the scalars agree to ~1e-12."""
    from kernels import get_backend
    from refimpl.config import TaskConfig
    from iclgd.gdpp_fit import GDPPConfig, fit_gdpp
    from iclgd.train import TrainConfig
    task = TaskConfig(input_dim=4, num_context=6)
    gdpp = GDPPConfig(steps_deep=25, batch=64, entries=entries)
    ref = fit_gdpp(task, gdpp, TrainConfig(), 3, 4, False, 2.0)
    fast = fit_gdpp(task, gdpp, TrainConfig(), 3, 4, False, 2.0, backend=get_backend("numba-cpu"))
    assert ref[2] is None and fast[2] is None  # no evaluation set, no fit curve
    assert np.any(np.abs(ref[0][:-1] - 2.0) > 1e-3)  # the fit moved the scalars
    np.testing.assert_allclose(fast[0], ref[0], **TOL["gdpp_fit_fast_vs_reference"])
    np.testing.assert_allclose(fast[1], ref[1], **TOL["gdpp_fit_fast_vs_reference"])


def test_gdpp_config_rejects_unknown_entries():
    from iclgd.gdpp_fit import GDPPConfig
    with pytest.raises(ValueError, match="gdpp.entries"):
        GDPPConfig(entries="wq")


@pytest.mark.parametrize("d, N, r, s, eta", [(3, 4, 1.7, 1.3, 1.5), (10, 10, 1.4, 1.0, 6.1)])
def test_expected_one_step_gd_loss_matches_a_monte_carlo_estimate(d, N, r, s, eta):
    """The closed form E 0.5 (y_hat - y)^2 of one GD step against the mean over 200 000 drawn
    tasks, within 4 standard errors of that mean; a wrong moment (E x^4 = m2^2, or a lost factor)
    moves it by many standard errors."""
    tokens, targets = linear_regression_tasks(np.random.default_rng(7), 200_000, num_context=N, input_dim=d,
                                              input_range=r, weight_scale=s)
    err = 0.5 * (baselines.gd_explicit(tokens, eta, 1)[-1] - targets) ** 2  # (B,)
    mean, se = err.mean(), err.std() / np.sqrt(err.size)
    closed = baselines.expected_one_step_gd_loss_uniform(d, N, eta, r, s)
    assert abs(closed - mean) < 4 * se, (closed, mean, se)
    # the exact optimum eta minimises it, and at eta = 0 it is the zero prediction's 0.5 s^2 d m2
    opt = baselines.closed_form_eta_uniform(d, N, r)
    assert baselines.expected_one_step_gd_loss_uniform(d, N, opt, r, s) < min(
        baselines.expected_one_step_gd_loss_uniform(d, N, opt * f, r, s) for f in (0.99, 1.01))
    np.testing.assert_allclose(baselines.expected_one_step_gd_loss_uniform(d, N, 0.0, r, s),
                               0.5 * s**2 * d * r**2 / 12, **TOL["recomputed_scalar"])


def test_expected_one_step_gd_loss_rejects_bad_scales():
    with pytest.raises(ValueError, match="input_range: expected a number > 0, got -1"):
        baselines.expected_one_step_gd_loss_uniform(10, 10, 6.0, input_range=-1)


def test_head_products_reproduce_a_multi_head_linear_layer(rng):
    """Summing (H W_KQ_h C^T) C W_PV_h over the per-head products gives the layer's output; the
    products of the summed matrices (heads mixed) do not."""
    from refimpl.attention import lsa_forward
    B, T, D, K, nh = 3, 6, 5, 4, 2
    H = rng.standard_normal((B, T, D))
    params = {"layer0.attn." + n: rng.standard_normal(s) for n, s in
              (("W_q", (D, nh * K)), ("W_k", (D, nh * K)), ("W_v", (D, nh * K)), ("W_p", (nh * K, D)))}
    out, _ = lsa_forward(H, {k.split(".")[-1]: v for k, v in params.items()}, num_heads=nh)
    C = H[:, :-1]  # (B, N, D)
    heads = metrics.head_products(params, nh)
    got = sum(np.einsum("btd,de,bne,bnf,fg->btg", H, W_KQ, C, C, W_PV) for W_KQ, W_PV in heads)
    np.testing.assert_allclose(got, out, **TOL["oracle_vs_per_task_loop"])
    W_KQ, W_PV = metrics.layer_products(params)
    mixed = np.einsum("btd,de,bne,bnf,fg->btg", H, W_KQ, C, C, W_PV)
    assert np.max(np.abs(mixed - out)) > 1e-3
    scaled, total = metrics.scaled_head_products(params, nh)
    np.testing.assert_allclose(scaled[1], heads[1][0] * heads[1][1][-1, -1], **TOL["float64_reordered"])
    np.testing.assert_allclose(total, scaled.sum(axis=0), **TOL["float64_reordered"])
    with pytest.raises(ValueError, match="num_heads: expected a divisor >= 1 of the width 8, got 3"):
        metrics.head_products(params, 3)
