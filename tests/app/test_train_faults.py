"""The training loop under faults, in process: divergence caught at the step it happens with the
last good checkpoint kept, an overflowing gradient norm, atomic writers that leave nothing behind."""
import json
import os
import types

import numpy as np
import pytest

from kernels import get_backend
from refimpl.atomic import atomic_save, atomic_write
from refimpl.config import AdamConfig, TaskConfig
from refimpl.optim import adam_init, adam_update, global_norm
from refimpl.tasks import TaskSource
from iclgd.checkpoint import read_meta
from iclgd.experiments.common import lsa_config
from iclgd.train import Diverged, TrainConfig, train

TASK = TaskConfig(input_dim=3, num_context=5, eval_tasks=20)


def faulty(base, at_step, fault):
    """A backend that behaves like `base` but corrupts step `at_step`: fault(params, state, loss)."""
    calls = {"n": 0}

    def train_step(params, state, tokens, y, cfg, adam_cfg):
        params, state, loss = base.train_step(params, state, tokens, y, cfg, adam_cfg)
        calls["n"] += 1
        return fault(params, state, loss) if calls["n"] == at_step else (params, state, loss)

    return types.SimpleNamespace(**{k: getattr(base, k) for k in ("name", "asarray", "to_numpy", "adam_init")},
                                 train_step=train_step)


def nan_param(params, state, loss):
    params = dict(params)
    params["layer0.attn.W_v"] = params["layer0.attn.W_v"] * np.nan
    return params, state, loss


def run(backend, tmp_path, steps=12, every=2):
    tc = TrainConfig(steps=steps, batch=8, checkpoint_every=every)
    ckpt = str(tmp_path / "c.npz")
    return train(lsa_config(TASK), tc, TaskSource(TASK, 8), 0, backend, None, ckpt, progress=False), ckpt


@pytest.mark.parametrize("name", ["numpy", "numba-cpu"])
def test_a_nan_parameter_stops_the_run_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, name):
    with pytest.raises(Diverged) as e:
        run(faulty(get_backend(name), 7, nan_param), tmp_path)
    assert e.value.step == 7 and e.value.tensor == "params['layer0.attn.W_v']"
    # step 6's snapshot: its parameters gave step 7 a finite loss, so it was written; nothing after it
    assert e.value.checkpoint_step == 6 and read_meta(e.value.checkpoint)["step"] == 6
    assert "diverged at step 7" in str(e.value) and "step 6" in str(e.value)


def test_a_non_finite_loss_discards_the_snapshot_it_would_have_vouched_for(tmp_path):
    inf_loss = lambda p, s, loss: (p, s, np.inf)  # noqa: E731
    with pytest.raises(Diverged) as e:
        run(faulty(get_backend("numpy"), 7, inf_loss), tmp_path)
    assert e.value.tensor == "loss" and e.value.checkpoint_step == 4
    assert read_meta(e.value.checkpoint)["step"] == 4  # step 6's parameters produced the inf loss


def test_a_non_finite_gradient_norm_stops_the_run(tmp_path):
    inf_norm = lambda p, s, loss: (p, {**s, "grad_norm": float("inf")}, loss)  # noqa: E731
    with pytest.raises(Diverged, match="gradient norm is inf") as e:
        run(faulty(get_backend("numpy"), 3, inf_norm), tmp_path)
    assert e.value.tensor == "gradient norm"


def test_a_blown_up_finite_loss_stops_the_run(tmp_path):
    huge = lambda p, s, loss: (p, s, 4e64)  # noqa: E731
    with pytest.raises(Diverged, match="over 1e\\+08 times the first step's"):
        run(faulty(get_backend("numpy"), 5, huge), tmp_path)


def test_a_healthy_run_is_unchanged_by_the_checks(tmp_path):
    """The delayed snapshot writes the same checkpoint an immediate one did: resume reaches the
    uninterrupted parameters bit for bit."""
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    full, _ = run(get_backend("numpy"), tmp_path / "a", steps=8)
    tc = TrainConfig(steps=4, batch=8, checkpoint_every=2)
    ckpt = str(tmp_path / "b" / "c.npz")
    train(lsa_config(TASK), tc, TaskSource(TASK, 8), 0, get_backend("numpy"), None, ckpt, progress=False)
    resumed = train(lsa_config(TASK), TrainConfig(steps=8, batch=8, checkpoint_every=2), TaskSource(TASK, 8), 0,
                    get_backend("numpy"), None, ckpt, resume=True, progress=False)
    for k, v in full.params.items():
        np.testing.assert_array_equal(v, resumed.params[k])


@pytest.mark.parametrize("name", ["numpy", "numba-cpu"])
def test_a_gradient_of_1e200_is_clipped_not_zeroed(name, rng):
    """sum g^2 overflows float64; the norm must not be inf (an inf norm made the clip factor 0 and
    every update exactly zero)."""
    backend = get_backend(name)
    cfg = lsa_config(TASK)
    params = backend.init_params(cfg, rng)
    grads = {k: np.full_like(v, 1e200) for k, v in params.items()}
    n = sum(v.size for v in params.values())
    assert global_norm(grads) == pytest.approx(1e200 * np.sqrt(n), rel=1e-12)
    new, _, norm = backend.adam_update(params, grads, backend.adam_init(params), AdamConfig(grad_clip=1e-3))
    assert norm == pytest.approx(1e200 * np.sqrt(n), rel=1e-12)
    for k in params:
        moved = np.asarray(backend.to_numpy(new[k])) - params[k]
        assert np.all(np.isfinite(moved)) and np.all(moved != 0), k


def test_an_ordinary_norm_keeps_its_bits(rng):
    """The overflow fallback is taken only when the plain sum of squares overflows."""
    grads = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    plain = float(np.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values())))
    assert global_norm(grads) == plain


# ----------------------------------------------------------------------------------------------
# atomic writers
def _temp_files(folder):
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_atomic_write_failing_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and _temp_files(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        atomic_save(target, lambda f: (f.write("x"), (_ for _ in ()).throw(KeyboardInterrupt())), "w")
    assert target.read_text() == "old" and _temp_files(tmp_path) == []


def test_atomic_writers_use_unique_temporary_names(tmp_path):
    with atomic_write(tmp_path / "a", "w") as f1, atomic_write(tmp_path / "a", "w") as f2:
        assert f1.name != f2.name
        f1.write("one")
        f2.write("two")
    assert (tmp_path / "a").read_text() in ("one", "two") and _temp_files(tmp_path) == []
    assert oct((tmp_path / "a").stat().st_mode & 0o777) != oct(0o600)  # an ordinary file mode


def test_results_figures_and_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from iclgd import plots
    from iclgd.checkpoint import save_checkpoint
    from iclgd.results import write_results
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "c.npz").write_bytes(b"old")
    bad = {k: None for k in ("experiment", "figure", "config", "seeds", "backend", "versions", "quick",
                             "runtime_s", "steps_run", "curves", "final", "per_seed", "notes")}
    bad["final"] = {"x": object()}  # not JSON: fails while serialising
    with pytest.raises(TypeError):
        write_results(tmp_path, bad)
    monkeypatch.setattr(np, "savez", lambda f, **a: (f.write(b"partial"), (_ for _ in ()).throw(OSError(28, "full"))))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c.npz", {}, {"t": 0, "m": {}, "v": {}}, {}, {}, 1, {})
    fig = plots._plt().figure()
    monkeypatch.setattr(fig, "savefig", lambda f, **k: (f.write(b"partial"), (_ for _ in ()).throw(OSError(28, "full"))))
    with pytest.raises(OSError):
        plots._save({}, fig, tmp_path, "fig2", "t")
    assert json.loads((tmp_path / "results.json").read_text()) == {}
    assert (tmp_path / "c.npz").read_bytes() == b"old"
    assert not (tmp_path / "fig2.png").exists() and _temp_files(tmp_path) == []


def test_a_non_finite_value_inside_the_step_is_a_divergence_not_bad_input(tmp_path):
    """The oracle's checks raise NonFiniteError (a ValueError) when a forward or backward meets
    NaN or inf; inside training that is the run diverging, not a caller's bad input."""
    from refimpl.validate import check_array

    def overflow(p, s, loss):
        check_array("H", np.array([np.inf]))

    with pytest.raises(Diverged, match="a value inside the step is not finite") as e:
        run(faulty(get_backend("numpy"), 5, overflow), tmp_path)
    assert e.value.step == 5 and e.value.checkpoint_step == 2  # step 4's snapshot is not vouched for


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_a_diverging_gdpp_fit_stops_with_diverged():
    from iclgd.gdpp_fit import train_gdpp
    task = TaskConfig(input_dim=3, num_context=5)
    with pytest.raises(Diverged, match="GD\\+\\+ L=1 fit's entries are not finite") as e:
        train_gdpp(TaskSource(task, 16), np.random.default_rng(0), 3, 5, 1, True, 0.1, 50,
                   AdamConfig(lr=1e300, grad_clip=0.0), desc="GD++ L=1")
    assert e.value.tensor == "GD++ entries" and e.value.step <= 50


def test_diverged_survives_a_worker_process():
    import pickle
    e = pickle.loads(pickle.dumps(Diverged(3, "loss", "why", {"step": [0]}, "c.npz", 2, "deep3", 1)))
    assert (e.step, e.tensor, e.checkpoint_step, e.model_tag, e.seed) == (3, "loss", 2, "deep3", 1)
    assert "diverged at step 3 (deep3, seed 1): why" in str(e)
