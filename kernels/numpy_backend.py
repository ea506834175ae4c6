"""The `numpy` backend: the float64 oracle itself (refimpl), behind the common backend interface.

A refimpl.gpt2.GPT2Config model (SPEC 2.7) goes to refimpl.gpt2: its read-outs are the
predictions at every x position (B, n), its loss the plain mean squared error over them."""
import numpy as np

from refimpl import gpt2 as _gpt2
from refimpl import loss as _loss
from refimpl import model as _model
from refimpl import optim as _optim
from refimpl.loss import mse_backward, mse_forward  # noqa: F401
from refimpl.optim import adam_init  # noqa: F401
from refimpl.params import init_params  # noqa: F401

name = "numpy"


def availability():
    return True, "the float64 NumPy oracle"


def asarray(x, dtype=None):
    return np.asarray(x, dtype=dtype)


def to_numpy(x):
    return np.asarray(x)


def model_forward(params, tokens, cfg):
    """(readouts (L, B), cache); for a GPT2Config (predictions (B, n), cache)."""
    if isinstance(cfg, _gpt2.GPT2Config):
        pred, cache = _gpt2.gpt2_forward(params, tokens, cfg)
        return pred, {**cache, "gpt2": cfg}
    return _model.model_forward(params, tokens, cfg)


def model_backward(dreadouts, cache, input_grad=True):
    """(dtokens, {name: gradient}) for model_forward's cache (a GPT-2 one: the full (2n, E) pos)."""
    if "gpt2" in cache:
        dtok, grads = _gpt2.gpt2_backward(dreadouts, cache, input_grad)
        return dtok, _gpt2.full_pos_grad(grads, cache["gpt2"])
    return _model.model_backward(dreadouts, cache, input_grad)


def loss_and_grads(params, tokens, y, cfg):
    """(loss, per-read-out losses, grads): refimpl.loss's, or refimpl.gpt2's for a GPT2Config."""
    if isinstance(cfg, _gpt2.GPT2Config):
        return _gpt2.loss_and_grads(params, tokens, y, cfg)
    return _loss.loss_and_grads(params, tokens, y, cfg)


def adam_update(params, grads, state, adam_cfg):
    """refimpl.optim.adam_update under the interface's parameter names: (params, state, norm)."""
    return _optim.adam_update(params, grads, state, adam_cfg)


def train_step(params, state, tokens, y, cfg, adam_cfg):
    """One optimiser step on a given batch: forward, backward, Adam. Returns (params, state, loss)."""
    loss, _, grads = loss_and_grads(params, tokens, y, cfg)
    params, state, norm = adam_update(params, grads, state, adam_cfg)
    return params, {**state, "grad_norm": norm}, loss
