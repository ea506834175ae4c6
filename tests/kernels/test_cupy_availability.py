"""The cupy backends say clearly why they cannot run, with the install command, and never raise."""
import sys
import types

import pytest

import kernels


@pytest.mark.parametrize("name", ["cupy", "cupy-unfused"])
def test_reports_cupy_not_installed(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    ok, reason = kernels.availability(name)
    assert not ok
    assert reason.startswith("cupy not installed") and reason.endswith("(install: pip install -e \".[gpu]\")")
    with pytest.raises(ValueError, match="cupy not installed"):
        kernels.get_backend(name)


def test_reports_no_cuda_device(monkeypatch):
    class CUDARuntimeError(RuntimeError):
        pass

    def no_device():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    ok, reason = kernels.availability("cupy")
    assert not ok and reason.startswith("no CUDA device") and "cudaErrorNoDevice" in reason
    assert reason.endswith("(install: pip install -e \".[gpu]\")")
    fake.cuda.runtime.getDeviceCount = lambda: 0
    assert kernels.availability("cupy") == (False, "no CUDA device (install: pip install -e \".[gpu]\")")
