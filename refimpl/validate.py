"""Argument checks shared by every public function of the oracle.

Each check raises ``ValueError`` naming the argument, what was expected and what was given,
so that a bad call never turns into a silently wrong number.
"""
import sys

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def array_module(x):
    """numpy for NumPy arrays; for a CuPy array, the cupy module (the oracle runs on both). The
    caller already holds a CuPy array, so cupy is imported; the oracle itself never imports it."""
    if isinstance(x, np.ndarray) or type(x).__module__.split(".")[0] != "cupy":
        return np
    return sys.modules["cupy"]


class NonFiniteError(ValueError):
    """An array holds NaN or inf: bad input from a caller, or a diverged computation inside training
    (iclgd.train tells the two apart by where it is raised)."""


def check_array(name, x, ndim=None, shape=None, finite=True):
    """Check that ``x`` is a float32/float64 ndarray of the given rank and shape.

    ``shape`` may contain ``None`` for an axis of any size. Returns ``x`` unchanged.
    """
    if not isinstance(x, np.ndarray) and array_module(x) is np:
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype.type not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}")
    if shape is not None:
        if len(shape) != x.ndim or any(s is not None and s != a for s, a in zip(shape, x.shape)):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, got {x.shape}")
    if finite:
        check_finite_values(name, x)
    return x


def check_finite_values(name, x):
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise NonFiniteError(f"{name}: contains {bad} NaN or inf value(s)")


def check_upstream(name, dout, shape, dtype):
    """Check the upstream gradient of a backward against its forward's output.

    ``dout`` must be a float32/float64 ndarray (or CuPy array) of exactly ``shape`` and exactly
    ``dtype`` (no silent upcast of a float32 gradient into a float64 forward, nor the reverse),
    with no NaN or inf. Returns ``dout`` unchanged.
    """
    check_array(name, dout, shape=tuple(shape), finite=False)
    if dout.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the forward's), got {dout.dtype}")
    check_finite_values(name, dout)
    return dout


def check_same_dtype(**arrays):
    """All arrays share one dtype (the oracle never mixes float32 and float64 silently)."""
    dtypes = {n: a.dtype for n, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"dtype mismatch: {', '.join(f'{n}={d}' for n, d in dtypes.items())}")


def check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value
