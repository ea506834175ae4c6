"""Backends: the oracle's functions, fast. Chosen in one place: `get_backend(name)`.

Every backend is a module exposing the same functions as the oracle, on its own arrays:
    asarray(x) / to_numpy(x)                                  host <-> backend arrays
    init_params(cfg, rng, dtype) -> params                     identical numbers to the oracle's
    model_forward(params, tokens, cfg) -> (readouts (L, B), cache)
    model_backward(dreadouts (L, B), cache) -> (dtokens, grads)
    mse_forward(y_hat, y) -> (loss, cache); mse_backward(dloss, cache) -> dy_hat
    loss_and_grads(params, tokens, y, cfg) -> (loss, per_layer_losses (L,), grads)
    adam_init(params) -> state; adam_update(params, grads, state, adam_cfg) -> (params, state, norm)
    train_step(params, state, tokens, y, cfg, adam_cfg) -> (params, state, loss)
and `availability()` -> (available: bool, reason: str) without importing heavy dependencies twice;
optional: linear_regression_tasks (a faster drawer of refimpl.data's batches),
readouts_and_query_gradient (all an evaluation needs in one call) and readouts (the read-outs
alone, for a loss). The signatures are
written down once in kernels/interface.py (tests/kernels/test_interface.py checks every backend).
"""
import importlib

INSTALL_GPU = 'pip install -e ".[gpu]"'  # the project installs from its checkout
# name -> (module, install command shown when it is unavailable)
BACKENDS = {
    "numpy": ("kernels.numpy_backend", "pip install -e ."),
    "numba-cpu": ("kernels.numba.cpu", "pip install -e . (numba is a core dependency)"),
    "numba-cuda": ("kernels.numba.gpu", "pip install -e \".[gpu]\" (numba-cuda[cu12]) and a CUDA GPU"),
    "cupy": ("kernels.cupy.backend", INSTALL_GPU),
    "cupy-unfused": ("kernels.cupy.unfused", INSTALL_GPU),
}


# what `iclgd run` trains and evaluates on unless --backend says otherwise: the fastest CPU backend,
# a core dependency, whose float64 results equal the oracle's to rounding
DEFAULT_BACKEND = "numba-cpu"


def backend_names():
    return list(BACKENDS)


def availability(name):
    """(available, reason) for one backend; never raises."""
    if name not in BACKENDS:
        return False, f"unknown backend; valid names: {', '.join(BACKENDS)}"
    module, install = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
        ok, reason = mod.availability()
    except ImportError as e:
        ok, reason = False, f"{e}"
    if not ok:
        reason = f"{reason} (install: {install})"
    return ok, reason


def get_backend(name):
    """The backend module called `name`; ValueError with the reason and install command if not usable."""
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown name {name!r}; valid names: {', '.join(BACKENDS)}")
    ok, reason = availability(name)
    if not ok:
        raise ValueError(f"backend {name!r} is not available: {reason}")
    return importlib.import_module(BACKENDS[name][0])
