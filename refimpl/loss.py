"""The loss of SPEC 3: mean_b 0.5 (y_hat_b - y_b)^2, as a forward/backward pair."""
import numbers

import numpy as np

from .validate import FLOAT_DTYPES, check_array, check_same_dtype


def mse_forward(y_hat, y):
    """y_hat, y: (B,) -> (loss scalar, cache)."""
    check_array("y_hat", y_hat, ndim=1)
    check_array("y", y, shape=y_hat.shape)
    check_same_dtype(y_hat=y_hat, y=y)
    r = y_hat - y  # (B,)
    return 0.5 * np.mean(r * r), r


def _check_dloss(dloss):
    """dloss: a finite real scalar -- a Python or NumPy int or float, or a 0-d float32/float64 array
    (NumPy or CuPy: the forward's loss is one, so ones_like(loss) is accepted). Returned as a Python
    float, so that its own type never changes the gradient's dtype (that of y_hat)."""
    if hasattr(dloss, "ndim") and hasattr(dloss, "dtype") and not isinstance(dloss, np.generic):
        if dloss.ndim != 0 or dloss.dtype.type not in FLOAT_DTYPES:
            raise ValueError(f"dloss: expected a real scalar or a 0-d float array, got an array of "
                             f"shape {dloss.shape} and dtype {dloss.dtype}")
    elif isinstance(dloss, bool) or not isinstance(dloss, numbers.Real):
        raise ValueError(f"dloss: expected a real scalar, got {type(dloss).__name__}")
    value = float(dloss)
    if not np.isfinite(value):
        raise ValueError(f"dloss: expected a finite real scalar, got {value}")
    return value


def mse_backward(dloss, cache):
    """d loss / d y_hat (B,) times the upstream scalar dloss (see _check_dloss for what it may be)."""
    r = cache
    return (_check_dloss(dloss) / r.shape[0]) * r


def loss_and_grads(params, tokens, y, cfg):
    """Loss of the final read-out and its gradients: (loss, per-layer losses (L,), grads)."""
    from .model import model_backward, model_forward
    readouts, cache = model_forward(params, tokens, cfg)  # (L, B)
    loss, lcache = mse_forward(readouts[-1], y)
    dread = np.zeros_like(readouts)  # (L, B)
    dread[-1] = mse_backward(1.0, lcache)
    _, grads = model_backward(dread, cache, input_grad=False)
    per_layer = 0.5 * np.mean((readouts - y) ** 2, axis=1)  # (L,)
    return loss, per_layer, grads
