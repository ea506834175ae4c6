"""fig15: the one-layer LSA with 1 and 2 heads over seeds (steps_to_gd and its spread) and the
grokking block on a fixed training set (its training-set loss is the loss on exactly those tasks)."""
import json
import os

import numpy as np
import pytest

from iclgd import cli
from iclgd.experiments.fig15 import grokking_stats, steps_to_gd
from iclgd.results import REQUIRED_KEYS
from refimpl import metrics
from refimpl.config import ModelConfig
from refimpl.tasks import TaskSource
from refimpl.config import TaskConfig


def test_steps_to_gd_is_the_first_evaluation_within_the_margin():
    curve = {"step": [0, 100, 200, 300], "loss_tf": [0.4, 0.25, 0.203, 0.2]}
    assert steps_to_gd(curve, 0.2, 0.02) == 200  # 0.203 <= 1.02 * 0.2
    assert steps_to_gd(curve, 0.2, 0.01) == 300
    assert steps_to_gd(curve, 0.1, 0.02) is None
    assert steps_to_gd({"step": [0, 100], "loss_tf": [None, 0.1]}, 0.1, 0.0) == 100


def test_grokking_stats_find_the_dip_and_the_peak_after_it():
    curve = {"step": [0, 10, 20, 30, 40, 50], "loss_test": [0.4, 0.3, 0.35, 0.9, 0.25, 0.2]}
    s = grokking_stats(curve)
    assert (s["dip_test"], s["dip_step"], s["peak_test"], s["peak_step"]) == (0.3, 10, 0.9, 30)
    falling = grokking_stats({"step": [0, 10, 20], "loss_test": [0.4, 0.3, 0.2]})
    assert falling["dip_test"] == falling["peak_test"] == 0.2 and falling["peak_step"] == 20


@pytest.fixture(scope="module")
def fig15_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig15")
    argv = ["run", "fig15", "--quick", "--no-progress", "--seeds", "2", "--out", str(out),
            "--set", "train.steps=60", "--set", "grok.steps=60", "--set", "task.eval_tasks=300"]
    assert cli.main(argv) == 0
    return out


@pytest.mark.slow
def test_fig15_quick_run_keeps_each_seed_and_the_spread(fig15_dir):
    with open(os.path.join(fig15_dir, "results.json")) as f:
        r = json.load(f)
    assert all(k in r for k in REQUIRED_KEYS)
    assert set(r["final"]) == {"heads1", "heads2", "grok"} and [s["seed"] for s in r["per_seed"]] == [0, 1]
    for name, heads in (("heads1", 1), ("heads2", 2)):
        f = r["final"][name]
        assert f["heads"] == heads
        per = [s["final"][name] for s in r["per_seed"]]
        # the seeds differ, and the final mean is their mean
        assert per[0]["loss_tf"] != per[1]["loss_tf"]
        assert f["loss_tf"] == pytest.approx(np.mean([p["loss_tf"] for p in per]), rel=1e-12)
        reached = [s["steps_to_gd"][name] for s in r["per_seed"]]
        for s, got in zip(r["per_seed"], reached):
            assert got == steps_to_gd(s["curves"][name], f["loss_gd"], r["config"]["near_gd"])
        reached = [x for x in reached if x is not None]
        assert f["seeds_reaching_gd"] == len(reached)
        assert f.get("steps_to_gd_min") == (min(reached) if reached else None)
        assert f.get("steps_to_gd_max") == (max(reached) if reached else None)
    g = r["final"]["grok"]
    assert "grok" in r["per_seed"][0]["final"] and "grok" not in r["per_seed"][1]["final"]  # grok_seeds = 1
    assert g["loss_test"] == r["per_seed"][0]["final"]["grok"]["loss_test"]
    assert g["tasks"] == 256 and r["curves"]["grok"]["step"][-1] == 60
    assert np.isfinite([g["loss_test"], g["loss_train"], g["loss_train_gd"], g["peak_test"]]).all()
    os.remove(os.path.join(fig15_dir, "fig15.png"))
    assert cli.main(["plot", str(fig15_dir)]) == 0 and os.path.isfile(os.path.join(fig15_dir, "fig15.png"))


@pytest.mark.slow
def test_the_grokking_training_loss_is_the_loss_on_the_fixed_tasks_the_block_trained_on(fig15_dir):
    """Rebuild the seed-0 training set and the final block from the checkpoint: the recorded
    loss_train is the oracle's loss on exactly those tasks (and differs on fresh ones)."""
    with open(os.path.join(fig15_dir, "results.json")) as f:
        r = json.load(f)
    task = TaskConfig(**r["config"]["task"])
    pool_tokens, pool_targets = TaskSource(task, 64, fixed_tasks=256, fixed_seed=10_000).pool
    m = ModelConfig(token_dim=11, key_size=11, mlp=True)
    with np.load(os.path.join(fig15_dir, "checkpoints", "grok_seed0.npz")) as z:  # the final step's
        params = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
    loss = metrics.losses(params, pool_tokens, pool_targets, m)[0]
    assert loss == pytest.approx(r["per_seed"][0]["final"]["grok"]["loss_train"], rel=1e-10)
    other = TaskSource(task, 64, fixed_tasks=256, fixed_seed=10_001).pool
    assert metrics.losses(params, *other, m)[0] != pytest.approx(loss, rel=1e-6)
