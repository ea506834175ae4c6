"""iclgd.evaluation: refimpl.metrics run on a backend through BackendOps give the oracle's numbers,
whichever of the backend's optional evaluation functions exist."""
import types

import numpy as np
import pytest

from kernels import get_backend
from refimpl import metrics
from refimpl.config import ModelConfig
from refimpl.data import linear_regression_tasks
from refimpl.params import init_params
from iclgd.evaluation import BackendOps, evaluation_ops

CFGS = {"deep3": ModelConfig(num_layers=3, token_clip=2.0),
        "softmax_ln": ModelConfig(attention="softmax", num_heads=2, layernorm=True)}


def without(backend, *names):
    """The backend's module functions minus the optional ones named (a backend that lacks them)."""
    ns = {k: getattr(backend, k) for k in dir(backend) if not k.startswith("_") and k not in names}
    return types.SimpleNamespace(**ns)


@pytest.mark.parametrize("name", list(CFGS))
def test_losses_and_sensitivity_on_numba_cpu_equal_the_oracle_with_or_without_the_optional_functions(name, rng):
    cfg = CFGS[name]
    params = init_params(cfg, rng)
    params = {k: v * 300 for k, v in params.items()}  # away from the near-zero initial model
    tokens, targets = linear_regression_tasks(rng, 37)
    want_loss, want_layers, want_pred = metrics.losses(params, tokens, targets, cfg)
    want_sens = metrics.query_sensitivity(params, tokens, cfg)
    be = get_backend("numba-cpu")
    for ops in (evaluation_ops(be), BackendOps(without(be, "readouts")),
                BackendOps(without(be, "readouts", "readouts_and_query_gradient"))):
        loss, layers, pred = metrics.losses(params, tokens, targets, cfg, ops)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-10)
        np.testing.assert_allclose(layers, want_layers, rtol=1e-10)
        np.testing.assert_allclose(pred, want_pred, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(metrics.query_sensitivity(params, tokens, cfg, ops), want_sens,
                                   rtol=1e-10, atol=1e-10 * np.abs(want_sens).max())  # LayerNorm: cancellation


def test_the_oracle_evaluates_through_refimpl_itself():
    assert evaluation_ops(None) is None and evaluation_ops(get_backend("numpy")) is None
