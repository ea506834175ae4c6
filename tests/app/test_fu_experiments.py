"""The second-order paper's experiments: Gaussian training through the task-source interface, the
per-prefix hidden states, the preconditioner theory, and the three experiments on quick settings."""
import json
import os

import numpy as np
import pytest

from iclgd import cli
from iclgd.experiments import fu_lsa
from iclgd.experiments.theory_preconditioner import LAMBDA, preconditioner_risk, theory_gamma
from kernels import get_backend
from refimpl import algorithms as alg
from refimpl import baselines
from refimpl.gaussian import GaussianTaskConfig, GaussianTaskSource, gaussian_regression, input_transform
from refimpl.model import predict
from refimpl.gaussian import prefix_tokens
from tests.conftest import TOL

TINY = ["--quick", "--no-progress"]


def _results(path):
    with open(os.path.join(path, "results.json")) as f:
        return json.load(f)


def test_gd_written_as_lsa_layers_is_fu_gd_at_every_prefix(rng):
    """Proposition 1's layer with W_P[d, d] = eta (no 1/N, as at every prefix length) applied t times
    gives the prediction of t steps of GD with step eta (refimpl.algorithms, no 1/n): the oracle's
    model and the closed form agree at every prefix length of a Gaussian prompt."""
    task = GaussianTaskConfig(input_dim=5, num_pairs=9, covariance="ill_conditioned")
    x, y, _ = gaussian_regression(rng, 4, task, input_transform(rng, task))
    cfg = baselines.gd_model_config(5, steps=3)
    params = baselines.gd_params(5, 0.05, 1)  # eta / N with N = 1: the step itself
    states = fu_lsa.query_states(params, cfg, x, y)  # (3, B, n, D)
    np.testing.assert_allclose(-states[..., -1], alg.gd_predictions(x, y, [1, 2, 3], eta=0.05),
                               **TOL["construction_vs_gd"])


def test_query_states_hold_the_model_readout_of_every_prefix(rng):
    from refimpl.params import init_params
    task = GaussianTaskConfig(input_dim=3, num_pairs=6)
    x, y, _ = gaussian_regression(rng, 5, task, np.eye(3))
    cfg = fu_lsa.model_config(task, 2, False, 0.0)
    params = {k: v * 30 for k, v in init_params(cfg, rng).items()}
    states = fu_lsa.query_states(params, cfg, x, y)
    assert np.all(states[:, :, 0, -1] == 0) and np.array_equal(states[0, :, 0, :-1], x[:, 0])
    for i in (1, 4, 5):
        tokens, _ = prefix_tokens(x, y, i)
        np.testing.assert_allclose(-states[-1, :, i, -1], predict(params, tokens, cfg),
                                   **TOL["float64_reordered_near_zero"])


def test_training_on_gaussian_tasks_resumes_bit_identically(tmp_path):
    """train() takes the Gaussian task source; its batches come from the checkpointed Generator,
    so 2 + 2 resumed steps reach the parameters of 4 uninterrupted ones."""
    from iclgd.train import TrainConfig, train
    task = GaussianTaskConfig(input_dim=4, num_pairs=7, covariance="ill_conditioned")
    cfg = fu_lsa.model_config(task, 2, True, 0.0)
    backend = get_backend("numpy")
    full = train(cfg, TrainConfig(steps=4, batch=16), GaussianTaskSource(task, 16), 3, backend, progress=False)
    ckpt = str(tmp_path / "c.npz")
    train(cfg, TrainConfig(steps=2, batch=16, checkpoint_every=1), GaussianTaskSource(task, 16), 3, backend,
          checkpoint=ckpt, progress=False, identity={"x": 1})
    resumed = train(cfg, TrainConfig(steps=4, batch=16, checkpoint_every=1), GaussianTaskSource(task, 16), 3,
                    backend, checkpoint=ckpt, resume=True, progress=False, identity={"x": 1})
    assert resumed.steps_run == 2
    for k in full.params:
        np.testing.assert_array_equal(full.params[k], resumed.params[k])


def test_preconditioner_risk_closed_form_against_monte_carlo(rng):
    """The closed-form risk of x_q^T P (1/N) sum y_i x_i, for Gamma^-1 and for another P, against
    200 000 sampled prompts (sampling error ~0.5 %); Gamma^-1 has the lower risk."""
    lam, N, d = np.array([0.3, 1.0, 2.5]), 4, 3
    task = GaussianTaskConfig(input_dim=d, num_pairs=N + 1, covariance="diagonal", diagonal=tuple(lam))
    x, y, _ = gaussian_regression(rng, 200_000, task, input_transform(rng, task))
    G_inv = np.linalg.inv(theory_gamma(lam, N))
    other = G_inv + 0.2 * rng.standard_normal((d, d))
    for P in (G_inv, other):
        pred = np.einsum("bd,de,be->b", x[:, -1], P, np.einsum("bn,bnd->bd", y[:, :-1], x[:, :-1])) / N
        mc = 0.5 * np.mean((pred - y[:, -1]) ** 2)
        assert mc == pytest.approx(preconditioner_risk(P, lam, N), rel=0.03)
    assert preconditioner_risk(G_inv, lam, N) < preconditioner_risk(other, lam, N)
    closed = 0.5 * (lam.sum() - np.sum(lam**2 / np.diag(theory_gamma(lam, N))))
    assert preconditioner_risk(G_inv, lam, N) == pytest.approx(closed, rel=1e-12)


@pytest.mark.slow
def test_fu_algorithms_quick_run_writes_its_documented_keys(tmp_path):
    assert cli.main(["run", "fu-algorithms", "--out", str(tmp_path), *TINY]) == 0
    r = _results(tmp_path)
    assert set(r["final"]) == {"isotropic", "ill_conditioned"}
    for fam, f in r["final"].items():
        assert len(f["best_gd_t_for_newton_k"]) == len(r["grids"]["newton_k"])
        assert all(t in r["grids"]["gd_log"] for t in f["best_gd_t_for_newton_k"])
        assert np.array(f["heatmap_newton_gd_log"]).shape == (len(r["grids"]["newton_k"]), len(r["grids"]["gd_log"]))
        assert np.all(np.array(f["heatmap_newton_gd_log"]) <= 1 + 1e-12)
        for name, err in f["error_vs_examples"].items():
            assert len(err) == 13 and np.all(np.isfinite(err)), name
        # with d = 5 examples noiseless least squares interpolates: error ~ 0, far below averaging's
        assert f["err_least_squares_at_n5"] < 1e-3 * f["err_averaging_at_n5"]
    assert r["final"]["ill_conditioned"]["sigma_condition_number"] == pytest.approx(100, rel=1e-9)
    assert r["final"]["ill_conditioned"]["sigma_trace"] == pytest.approx(5, rel=1e-12)
    assert os.path.isfile(tmp_path / "fu-algorithms.png")


@pytest.mark.slow
def test_theory_preconditioner_quick_run(tmp_path):
    assert cli.main(["run", "theory-preconditioner", "--out", str(tmp_path), *TINY]) == 0
    f = _results(tmp_path)["final"]
    N = 20
    np.testing.assert_allclose(f["preconditioner_theory"], np.linalg.inv(theory_gamma(LAMBDA, N)), rtol=1e-12)
    assert np.array(f["preconditioner_learned"]).shape == (10, 10)
    assert f["risk_closed_form"] < f["loss_zero"]
    assert os.path.isfile(tmp_path / "theory-preconditioner.png")


@pytest.mark.slow
def test_fu_lsa_quick_run_matches_every_layer(tmp_path):
    assert cli.main(["run", "fu-lsa", "--out", str(tmp_path), *TINY, "--backend", "numba-cpu"]) == 0
    r = _results(tmp_path)
    assert sorted(r["final"]) == sorted(f"{v}{L}_{fam}" for fam in ("isotropic", "ill_conditioned")
                                        for v, L in (("deep", 1), ("deep", 3), ("tied", 3)))
    for name, f in r["final"].items():
        L = f["layers"]
        for key in ("best_newton_k", "best_gd_t", "best_newton_k_readout", "loss_probe_layers", "eta_layers"):
            assert len(f[key]) == L, (name, key)
        assert np.array(f["heatmap_newton"]).shape == (L, 3)
    assert os.path.isfile(tmp_path / "fu-lsa.png")


def test_bad_fu_settings_are_named():
    from refimpl.config import apply_overrides
    with pytest.raises(ValueError, match="families: expected items"):
        apply_overrides(fu_lsa.Config(), ["families=[\"diagonal\"]"])
    with pytest.raises(ValueError, match="probe_tasks: expected fewer than task.eval_tasks = 2000"):
        apply_overrides(fu_lsa.Config(), ["probe_tasks=2000"])
    from iclgd.experiments import theory_preconditioner
    with pytest.raises(ValueError, match="task.covariance: expected 'diagonal'"):
        apply_overrides(theory_preconditioner.Config(), ["task.covariance=isotropic", "task.diagonal=[]"])
