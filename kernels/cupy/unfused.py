"""The `cupy-unfused` backend: the oracle's own vectorised code on CuPy arrays (cuBLAS batched
products, one kernel per operation) for every function, including Adam. It is the baseline the
fused kernels of the `cupy` backend are measured against, and gives the oracle's numbers up to
the order of floating-point sums."""
from refimpl import optim as _optim
from refimpl.loss import loss_and_grads, mse_backward, mse_forward  # noqa: F401
from refimpl.model import model_backward, model_forward  # noqa: F401
from refimpl.optim import adam_init  # noqa: F401

from kernels.cupy.backend import asarray, availability, init_params, to_numpy  # noqa: F401

name = "cupy-unfused"


def adam_update(params, grads, state, adam_cfg):
    """refimpl.optim.adam_update under the interface's parameter names: (params, state, norm)."""
    return _optim.adam_update(params, grads, state, adam_cfg)


def train_step(params, state, tokens, y, cfg, adam_cfg):
    """One optimiser step on a given batch: forward, backward, Adam. Returns (params, state, loss)."""
    loss, _, grads = loss_and_grads(params, tokens, y, cfg)
    params, state, _ = adam_update(params, grads, state, adam_cfg)
    return params, state, loss
