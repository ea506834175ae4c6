"""fu-gpt2: the presets, the interleaved task source with Garg et al.'s curriculum, bit-identical
resumption of a GPT-2 training, and the quick run's analysis (probes, matches, claims' numbers)."""
import json
import os

import numpy as np
import pytest

from iclgd import cli
from iclgd.cli.run import resolve_config
from iclgd.experiments import fu_gpt2
from iclgd.train import TrainConfig, train
from kernels import get_backend
from refimpl import algorithms as alg
from refimpl import gpt2
from refimpl.gaussian import Curriculum, GaussianTaskConfig, InterleavedTaskSource, interleaved_tokens


def test_a_preset_sets_every_size_and_later_overrides_win():
    _, cfg = resolve_config("fu-gpt2", False, ["preset=paper"])
    assert (cfg.model.num_layers, cfg.model.num_heads, cfg.model.embed_dim) == (12, 8, 256)
    assert (cfg.task.input_dim, cfg.task.num_pairs, cfg.model.num_pairs) == (20, 41, 41)
    assert (cfg.train.steps, cfg.train.batch, cfg.train.lr, cfg.curriculum) == (500000, 64, 1e-4, True)
    assert cfg.preset == "paper"
    _, cfg = resolve_config("fu-gpt2", False, ["model.num_layers=3", "preset=small"])
    assert cfg.model.num_layers == 3 and cfg.model.embed_dim == 128  # the preset first, then the rest
    _, default = resolve_config("fu-gpt2", False, [])
    _, tiny = resolve_config("fu-gpt2", False, ["preset=tiny"])
    assert default == tiny  # the defaults are the tiny preset
    with pytest.raises(ValueError, match=r"preset: expected one of \('tiny', 'small', 'paper'\), got 'huge'"):
        resolve_config("fu-gpt2", False, ["preset=huge"])


def test_model_and_task_sizes_must_agree():
    with pytest.raises(ValueError, match="model.input_dim: expected task.input_dim = 5, got 7"):
        resolve_config("fu-gpt2", False, ["model.input_dim=7"])
    with pytest.raises(ValueError, match="model.num_pairs: expected task.num_pairs = 11, got 9"):
        resolve_config("fu-gpt2", False, ["model.num_pairs=9"])


def test_curriculum_grows_dims_and_pairs_with_zeroed_inactive_dims(rng):
    task = GaussianTaskConfig(input_dim=6, num_pairs=9, covariance="ill_conditioned")
    src = InterleavedTaskSource(task, 4, Curriculum(dims_start=2, dims_inc=2, points_start=3, points_inc=3, interval=5))
    for step, (d, n) in ((0, (2, 3)), (4, (2, 3)), (5, (4, 6)), (10, (6, 9)), (99, (6, 9))):
        assert src.curriculum.at(step, 6, 9) == (d, n)
        tokens, y = src.next_batch(np.random.default_rng(step), step)
        assert tokens.shape == (4, 2 * n, 6) and y.shape == (4, n)
        x = tokens[:, 0::2]
        assert np.all(x[..., d:] == 0) and np.all(np.abs(x[..., :d]).max(axis=(0, 1)) > 0)
        np.testing.assert_array_equal(tokens[:, 1::2, 0], y)
        np.testing.assert_array_equal(tokens[:, 1::2, 1:], 0)


def test_gpt2_training_resumes_bit_identically(tmp_path):
    """2 + 2 resumed steps of the GPT-2 model reach the parameters of 4 uninterrupted ones."""
    task = GaussianTaskConfig(input_dim=3, num_pairs=4)
    cfg = gpt2.GPT2Config(input_dim=3, num_pairs=4, embed_dim=8, num_layers=2, num_heads=2)
    backend = get_backend("numpy")
    tc = dict(batch=8, lr=1e-3, grad_clip=0.0)
    src = lambda: InterleavedTaskSource(task, 8, Curriculum(dims_start=2, points_start=2, interval=2))
    full = train(cfg, TrainConfig(steps=4, **tc), src(), 3, backend, progress=False)
    ckpt = str(tmp_path / "c.npz")
    train(cfg, TrainConfig(steps=2, checkpoint_every=1, **tc), src(), 3, backend, checkpoint=ckpt, progress=False,
          identity={"x": 1})
    resumed = train(cfg, TrainConfig(steps=4, checkpoint_every=1, **tc), src(), 3, backend, checkpoint=ckpt,
                    resume=True, progress=False, identity={"x": 1})
    assert resumed.steps_run == 2
    for k in full.params:
        np.testing.assert_array_equal(full.params[k], resumed.params[k])
    assert any(not np.array_equal(full.params[k], gpt2.init_params(cfg, np.random.default_rng(3))[k])
               for k in full.params)


def test_x_position_states_in_chunks_equal_one_pass(rng, monkeypatch):
    cfg = gpt2.GPT2Config(input_dim=3, num_pairs=4, embed_dim=8, num_layers=2, num_heads=2)
    params = gpt2.init_params(cfg, rng)
    tokens = interleaved_tokens(rng.standard_normal((7, 4, 3)), rng.standard_normal((7, 4)))
    monkeypatch.setattr(fu_gpt2, "STATE_CHUNK", 3)
    np.testing.assert_array_equal(fu_gpt2.x_position_states(params, cfg, tokens),
                                  gpt2.hidden_states(params, tokens, cfg)[:, :, 0::2])


def test_the_last_blocks_probe_recovers_the_models_read_out(rng):
    """The model's prediction is a linear function (with bias) of the last hidden state at its x
    position: the closed-form probe fitted to the predictions reproduces them on held-out prompts."""
    from refimpl.similarity import probe_fit, probe_predict
    cfg = gpt2.GPT2Config(input_dim=3, num_pairs=5, embed_dim=8, num_layers=2, num_heads=2)
    params = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in gpt2.init_params(cfg, rng).items()}
    tokens = interleaved_tokens(rng.standard_normal((40, 5, 3)), rng.standard_normal((40, 5)))
    states = fu_gpt2.x_position_states(params, cfg, tokens)[-1]  # (B, n, E)
    pred = gpt2.predict(params, tokens, cfg)  # (B, n)
    v, c = probe_fit(states[:30].reshape(-1, 8), pred[:30].reshape(-1))
    np.testing.assert_allclose(probe_predict(states[30:], v, c), pred[30:], rtol=1e-9, atol=1e-10)


def test_analysis_of_a_model_is_consistent(rng):
    """On a random model: the least-squares curve is the algorithm's; best matches lie on their
    grids; the slopes are those of the best matches; the shapes are the documented ones."""
    cfg = fu_gpt2.Config()
    from refimpl.config import apply_overrides
    cfg = apply_overrides(cfg, fu_gpt2.QUICK)
    m = cfg.model
    params = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in gpt2.init_params(m, rng).items()}
    x = rng.standard_normal((cfg.task.eval_tasks, cfg.task.num_pairs, cfg.task.input_dim))
    y = np.einsum("bnd,bd->bn", x, rng.standard_normal((cfg.task.eval_tasks, cfg.task.input_dim)))
    f = fu_gpt2.analyse(params, m, cfg, x, y)
    P, d = cfg.probe_tasks, cfg.task.input_dim
    ls = alg.least_squares_predictions(x[P:], y[P:])
    np.testing.assert_allclose(f["loss_least_squares_positions"], np.mean((ls - y[P:]) ** 2, axis=0) / d, rtol=1e-12)
    assert np.array(f["loss_probe_positions"]).shape == (m.num_layers + 1, cfg.task.num_pairs)
    assert np.array(f["heatmap_newton"]).shape == (m.num_layers, len(cfg.newton_ks))
    assert set(f["best_newton_k"]) <= set(cfg.newton_ks) and set(f["best_gd_t"]) <= set(cfg.gd_log_grid)
    slope = np.polyfit(np.arange(1, m.num_layers + 1), f["best_newton_k"], 1)[0]
    assert f["newton_k_per_layer"] == pytest.approx(slope)


def test_quick_run_writes_its_documented_keys(tmp_path):
    assert cli.main(["run", "fu-gpt2", "--out", str(tmp_path), "--quick", "--no-progress", "--backend", "numpy"]) == 0
    with open(os.path.join(tmp_path, "results.json")) as f:
        r = json.load(f)
    assert list(r["final"]) == ["isotropic", "ill_conditioned"]
    for fam, f in r["final"].items():
        for key in ("loss_model", "loss_model_last", "loss_least_squares_last", "loss_gd_last", "newton_k_per_layer",
                    "gd_log2_t_per_layer", "best_newton_k", "best_gd_t_model", "loss_probe_layers"):
            assert key in f, (fam, key)
        assert r["curves"][fam]["step"] == [0, 10, 20]
    assert os.path.isfile(tmp_path / "fu-gpt2.png")
