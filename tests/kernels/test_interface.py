"""Every backend module in kernels.BACKENDS against kernels/interface.py: names present, callables,
parameter names and order as the interface writes them."""
import importlib
import types

import numpy as np
import pytest

import kernels
from kernels import interface
from kernels import numpy_backend


@pytest.mark.parametrize("backend", kernels.backend_names())
def test_backend_module_conforms_to_the_interface(backend):
    module_name = kernels.BACKENDS[backend][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        pytest.skip(f"{module_name} cannot be imported here: {e}")
    assert module.name == backend
    assert interface.interface_problems(module) == []


def test_interface_lists_the_documented_functions():
    assert set(interface.REQUIRED) == {
        "availability", "asarray", "to_numpy", "init_params", "model_forward", "model_backward",
        "mse_forward", "mse_backward", "loss_and_grads", "adam_init", "adam_update", "train_step"}
    assert interface.REQUIRED["train_step"] == ("params", "state", "tokens", "y", "cfg", "adam_cfg")
    assert set(interface.OPTIONAL) == {"linear_regression_tasks", "readouts", "readouts_and_query_gradient"}


def _fake_backend(**changes):
    """A copy of the numpy backend's namespace with some entries replaced (None: removed)."""
    fake = types.ModuleType("fake_backend")
    for key in ["name"] + list(interface.REQUIRED):
        setattr(fake, key, getattr(numpy_backend, key))
    for key, value in changes.items():
        if value is None:
            delattr(fake, key)
        else:
            setattr(fake, key, value)
    return fake


def test_copy_of_a_conforming_backend_conforms():
    assert interface.interface_problems(_fake_backend()) == []


@pytest.mark.parametrize("missing", sorted(interface.REQUIRED))
def test_module_lacking_a_function_is_reported(missing):
    assert interface.interface_problems(_fake_backend(**{missing: None})) == [f"{missing}: missing"]


def test_wrong_parameter_names_not_callable_and_missing_name_are_reported():
    def train_step(params, state, tokens, targets, cfg, adam_cfg):
        return params, state, 0.0

    problems = interface.interface_problems(_fake_backend(train_step=train_step, to_numpy=np.pi,
                                                          name=None))
    assert problems[0] == "name: missing or not a str"
    assert "to_numpy: not callable" in problems
    assert any(p.startswith("train_step: parameters") and "'targets'" in p for p in problems)
    assert len(problems) == 3


def test_extra_parameters_need_defaults_and_optional_functions_are_checked():
    def model_backward(dreadouts, cache, input_grad=True):  # like refimpl.model's: allowed
        return None, {}

    def mse_backward(dloss, cache, scale):
        return dloss

    def linear_regression_tasks(rng, n):
        return None, None

    problems = interface.interface_problems(_fake_backend(model_backward=model_backward,
                                                          mse_backward=mse_backward))
    assert problems == ["mse_backward: extra parameters without defaults ['scale']"]
    fake = _fake_backend()
    fake.linear_regression_tasks = linear_regression_tasks
    assert [p.split(":")[0] for p in interface.interface_problems(fake)] == ["linear_regression_tasks"]
