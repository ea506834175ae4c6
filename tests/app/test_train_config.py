"""TrainConfig's Adam fields: None = the SPEC 3 rule, numbers kept as floats, resolved once."""
import json

import numpy as np
import pytest

from iclgd.cli.run import resolve_config
from iclgd.train import TrainConfig, paper_adam, resolved_adam


def test_defaults_are_the_spec3_rule():
    t = TrainConfig()
    assert t.lr is None and t.grad_clip is None
    assert [(paper_adam(t, L).lr, paper_adam(t, L).grad_clip) for L in (1, 2, 3, 4)] == [
        (1e-3, 0.001), (1e-3, 0.001), (1e-3, 10.0), (5e-4, 10.0)]


def test_set_parses_numbers_as_floats_and_null_as_the_rule():
    _, cfg = resolve_config("fig2", False, ["train.lr=0.002", "train.grad_clip=0"])
    assert type(cfg.train.lr) is float and cfg.train.lr == 0.002
    assert type(cfg.train.grad_clip) is float and cfg.train.grad_clip == 0.0
    assert paper_adam(cfg.train, 1).grad_clip == 0.0  # 0 = off, not the rule
    _, cfg = resolve_config("fig2", False, ["train.lr=0.002", "train.lr=null"])
    assert cfg.train.lr is None and paper_adam(cfg.train, 5).lr == 5e-4


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", -1e-3), ("grad_clip", -1.0),
                                          ("lr", "0.1"), ("grad_clip", True)])
def test_rejects_old_sentinels_and_non_numbers(field, value):
    with pytest.raises(ValueError, match=f"train.{field}"):
        TrainConfig(**{field: value})


def test_resolved_adam_is_what_paper_adam_uses():
    t = TrainConfig(lr=0.01)
    r = resolved_adam(t, 4)
    assert r["lr"] == 0.01 and r["grad_clip"] == 10.0 and r["b2"] == t.b2
    json.dumps(r)  # recordable in results.json


def test_every_experiment_records_resolved_adam(tmp_path):
    from kernels import get_backend
    from iclgd.experiments import fig2
    _, cfg = resolve_config("fig2", True, ["train.steps=2", "train.batch=8", "train.eval_every=1",
                                           "task.eval_tasks=50"])
    r = fig2.run(cfg, [0], get_backend("numpy"), None, progress=False)
    assert r["resolved"]["adam"]["lr"] == 1e-3 and r["resolved"]["adam"]["grad_clip"] == 0.001
    assert np.isfinite(r["final"]["loss_tf"])
