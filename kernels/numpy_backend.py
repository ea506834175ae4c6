"""The `numpy` backend: the float64 oracle itself (refimpl), behind the common backend interface."""
import numpy as np

from refimpl import optim as _optim
from refimpl.loss import loss_and_grads, mse_backward, mse_forward  # noqa: F401
from refimpl.model import model_backward, model_forward  # noqa: F401
from refimpl.optim import adam_init  # noqa: F401
from refimpl.params import init_params  # noqa: F401

name = "numpy"


def availability():
    return True, "the float64 NumPy oracle"


def asarray(x, dtype=None):
    return np.asarray(x, dtype=dtype)


def to_numpy(x):
    return np.asarray(x)


def adam_update(params, grads, state, adam_cfg):
    """refimpl.optim.adam_update under the interface's parameter names: (params, state, norm)."""
    return _optim.adam_update(params, grads, state, adam_cfg)


def train_step(params, state, tokens, y, cfg, adam_cfg):
    """One optimiser step on a given batch: forward, backward, Adam. Returns (params, state, loss)."""
    loss, _, grads = loss_and_grads(params, tokens, y, cfg)
    params, state, norm = adam_update(params, grads, state, adam_cfg)
    return params, {**state, "grad_norm": norm}, loss
