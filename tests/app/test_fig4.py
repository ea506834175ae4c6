"""fig4 (sine regression through an MLP front end): the sine tasks and their config, the fixed GD
step on the front end's features, initial weights with freezing in the training loop, and a quick
run with its documented keys, summary and re-plot."""
import json
import os

import numpy as np
import pytest

import kernels
from iclgd import cli
from iclgd.experiments.fig4 import Config, gd_weights, query_grid_tokens
from iclgd.train import TrainConfig, train
from refimpl.config import ModelConfig
from refimpl.model import front_forward, model_forward
from refimpl.params import init_params
from refimpl.sine import SineSource, SineTaskConfig, sine_tasks


def _run(argv):
    return cli.main([str(a) for a in argv])


@pytest.mark.parametrize("coupled", [False, True])
def test_sine_tasks_shapes_ranges_and_the_coupled_switch(coupled):
    task = SineTaskConfig(num_context=7, x_low=-2.0, x_high=3.0, amplitude_low=0.5, amplitude_high=2.0,
                          phase_low=0.25, phase_high=1.5, coupled=coupled)
    tokens, targets, (a, rho) = task.draw(np.random.default_rng(1), 500)
    assert tokens.shape == (500, 8, 2) and targets.shape == (500,)
    x = tokens[..., 0]
    assert x.min() >= -2.0 and x.max() < 3.0 and x.max() - x.min() > 4.5
    assert a.min() >= 0.5 and a.max() <= 2.0 and rho.min() >= 0.25 and rho.max() <= 1.5
    np.testing.assert_allclose(tokens[:, :-1, 1], a[:, None] * np.sin(x[:, :-1] + rho[:, None]), rtol=1e-15)
    np.testing.assert_allclose(targets, a * np.sin(x[:, -1] + rho), rtol=1e-15)
    assert np.all(tokens[:, -1, 1] == 0)  # the query's label slot
    u_a, u_rho = (a - 0.5) / 1.5, (rho - 0.25) / 1.25
    if coupled:  # the public code's single draw
        np.testing.assert_allclose(u_a, u_rho, atol=1e-12)
    else:
        assert abs(np.corrcoef(u_a, u_rho)[0, 1]) < 0.15


def test_the_default_sine_ranges_are_the_public_codes_drawn_independently():
    t = SineTaskConfig()
    assert (t.x_low, t.x_high, t.amplitude_low, t.amplitude_high, t.phase_low, t.num_context) == (-5, 5, 0.1, 0.5, 0, 10)
    assert t.phase_high == pytest.approx(np.pi) and t.coupled is False
    a, b = SineSource(t, 16).next_batch(np.random.default_rng(3), 0), sine_tasks(np.random.default_rng(3), 16)
    np.testing.assert_array_equal(a[0], b[0])


def test_bad_sine_ranges_are_refused_with_the_keys():
    with pytest.raises(ValueError, match=r"task.amplitude_low, task.amplitude_high: expected finite numbers "
                                         r"with low <= high, got 3.0, 1.0"):
        SineTaskConfig(amplitude_low=3.0, amplitude_high=1.0)
    with pytest.raises(ValueError, match="task.num_context"):
        SineTaskConfig(num_context=0)


def test_the_fixed_attention_layer_is_one_gd_step_on_the_front_ends_features():
    """With Proposition 1's weights the prediction is -h_q[-1] + (eta/N) sum_i h_i[-1] <h_i[:-1], h_q[:-1]>
    on the features h = front end(tokens): one GD step from w = 0 on (h_i[:-1], h_i[-1])."""
    cfg = Config(model=ModelConfig(token_dim=2, key_size=6, embed_dim=6, input_mlp=True, init_scale=1.0),
                 gd_eta=0.3)
    m = cfg.model
    params = {**init_params(m, np.random.default_rng(0)), **gd_weights(cfg)}
    assert params["layer0.attn.W_p"][-1, -1] == pytest.approx(0.3 / 10)
    tokens, _, _ = sine_tasks(np.random.default_rng(1), 9)
    H, _ = front_forward(tokens, params, m)  # (B, T, 6)
    X, y, hq = H[:, :-1, :-1], H[:, :-1, -1], H[:, -1]
    expected = -hq[:, -1] + (0.3 / 10) * np.einsum("bn,bnd,bd->b", y, X, hq[:, :-1])
    np.testing.assert_allclose(model_forward(params, tokens, m)[0][-1], expected, rtol=1e-12, atol=1e-14)


def test_initial_weights_stay_fixed_under_freezing_and_bad_ones_are_refused():
    m = ModelConfig(token_dim=2, key_size=5, embed_dim=5, input_mlp=True, mlp_widening=2)
    cfg = Config(model=m)
    fixed = gd_weights(cfg)
    tc = TrainConfig(steps=3, batch=16, lr=1e-2, grad_clip=100.0, frozen=("layer0.attn",))
    out = train(m, tc, SineSource(cfg.task, 16), 0, kernels.get_backend("numpy"), progress=False, initial=fixed)
    for k, v in fixed.items():
        np.testing.assert_array_equal(out.params[k], v)
    init = init_params(m, np.random.default_rng(0))
    assert all(np.max(np.abs(out.params[k] - init[k])) > 0 for k in ("embed.W", "input_mlp.W1"))
    with pytest.raises(ValueError, match=r"initial\['layer0.attn.W_q'\]: expected a parameter of this model with "
                                         r"shape \(5, 5\), got shape \(4, 4\)"):
        train(m, tc, SineSource(cfg.task, 16), 0, kernels.get_backend("numpy"), progress=False,
              initial={"layer0.attn.W_q": np.zeros((4, 4))})


def test_query_grid_tokens_keep_the_context_and_vary_only_the_query():
    tokens, _, _ = sine_tasks(np.random.default_rng(2), 3)
    grid = query_grid_tokens(tokens, np.linspace(-1, 1, 5))
    assert grid.shape == (3, 5, 11, 2)
    np.testing.assert_array_equal(grid[:, :, :-1], np.repeat(tokens[:, None, :-1], 5, axis=1))
    np.testing.assert_array_equal(grid[1, :, -1, 0], np.linspace(-1, 1, 5))


def test_fig4_config_refuses_a_model_without_the_construction():
    with pytest.raises(ValueError, match="model: expected one LSA layer with key_size = model width = 40"):
        Config(model=ModelConfig(token_dim=2, key_size=20, embed_dim=40, input_mlp=True))
    with pytest.raises(ValueError, match="curve_tasks: expected"):
        Config(curve_tasks=0)


@pytest.mark.slow
def test_fig4_quick_run_writes_both_models_the_alignment_and_the_functions(tmp_path, capsys):
    assert _run(["run", "fig4", "--quick", "--no-progress", "--out", tmp_path,
                 "--set", "task.eval_tasks=200", "--set", "curve_tasks=2", "--set", "curve_points=7"]) == 0
    out = capsys.readouterr().out
    assert "partial cos (d y / d x_q, TF vs MLP + GD)" in out and "mlpgd:" in out
    with open(os.path.join(tmp_path, "results.json")) as f:
        r = json.load(f)
    f = r["final"]
    assert set(f) >= {"tf", "mlpgd", "loss_zero"} and r["quick"] is True and r["gd_eta"] == 0.1
    assert set(f["tf"]) >= {"loss", "preds_diff", "partial_cos", "partial_diff", "partial_cos_token"}
    assert -1 <= f["tf"]["partial_cos"] <= 1 and f["tf"]["preds_diff"] > 0
    assert f["tf"]["loss"] < f["loss_zero"] and f["mlpgd"]["loss"] < f["loss_zero"]  # both learn something
    assert r["curves"]["tf"]["step"] == [0, 50, 100, 150] == r["curves"]["mlpgd"]["step"]
    fn = r["per_seed"][0]["functions"]
    assert np.shape(fn["tf"]["before"]) == (2, 7) == np.shape(fn["truth"]) and len(fn["context_x"][0]) == 10
    assert r["resolved"]["mlpgd"]["adam"]["lr"] == 3e-4 and r["resolved"]["tf"]["adam"]["lr"] == 1e-3
    os.remove(tmp_path / "fig4.png")
    assert _run(["plot", tmp_path]) == 0 and os.path.isfile(tmp_path / "fig4.png")


def test_a_source_that_ignores_the_backends_drawer_does_not_announce_compiling_it(capsys):
    from types import SimpleNamespace
    from iclgd.train import _announce_compilation
    backend = SimpleNamespace(name="fake", kernels_to_compile=lambda cfg: ["draw.draw_kernel", "cpu.task_kernel"])
    assert _announce_compilation(backend, None, "tf", SineSource(SineTaskConfig(), 4)) is not None
    err = capsys.readouterr().err
    assert "compiling 1 kernels for tf once (cpu.task_kernel)" in err
    _announce_compilation(backend, None, "lsa", None)  # a source that uses it (the default)
    assert "compiling 2 kernels for lsa once (draw.draw_kernel, cpu.task_kernel)" in capsys.readouterr().err
    only_draw = SimpleNamespace(name="fake", kernels_to_compile=lambda cfg: ["draw.draw_kernel"])
    assert _announce_compilation(only_draw, None, "tf", SineSource(SineTaskConfig(), 4)) is None
