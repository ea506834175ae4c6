"""The training loop (iclgd.train) with --backend numba-cpu reproduces the oracle's run: the same
host batches, a loss curve equal to a relative 1e-9 in float64, and the same trained weights."""
import numpy as np
import pytest

from kernels import availability, get_backend
from tests.conftest import TOL
from refimpl.config import TaskConfig
from iclgd.experiments.common import lsa_config
from refimpl.tasks import TaskSource
from iclgd.train import TrainConfig, train


def test_numba_cpu_training_run_matches_the_oracle():
    ok, reason = availability("numba-cpu")
    if not ok:
        pytest.skip(reason)
    task = TaskConfig(input_dim=4, num_context=6)
    cfg = lsa_config(task, num_layers=3)  # deep, token clipping rule of SPEC 3 applies at L > 3 only
    tc = TrainConfig(steps=40, batch=33, eval_every=10, checkpoint_every=1000, lr=1e-2, grad_clip=10.0)

    def evaluate(params):  # host params: any number that depends on every weight
        return {"w_sum": float(sum(np.sum(v) for v in params.values()))}

    runs = {name: train(cfg, tc, TaskSource(task, 33), 5, get_backend(name), evaluate, None,
                        progress=False) for name in ("numpy", "numba-cpu")}
    ref, got = runs["numpy"], runs["numba-cpu"]
    assert got.steps_run == ref.steps_run == 40
    losses_ref = np.array([v for v in ref.curves["train_loss"] if v is not None])
    losses_got = np.array([v for v in got.curves["train_loss"] if v is not None])
    assert losses_ref.size > 0 and losses_ref.shape == losses_got.shape
    np.testing.assert_allclose(losses_got, losses_ref, **TOL["training_trajectory"])
    for k in ref.params:
        scale = np.abs(ref.params[k]).max()
        np.testing.assert_allclose(got.params[k], ref.params[k], **TOL["training_trajectory"],
                                   atol=TOL["training_weights_atol_scale"] * scale)
