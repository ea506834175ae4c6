"""A stand-in for the `cupy` module on a machine without a GPU: arrays are NumPy arrays, RawModule
kernels run on the CPU emulator (emulator.py), streams are trivial and a captured CUDA graph is the
list of kernel launches recorded during capture, replayed with the same arguments. It lets the
cupy backend's own Python code -- buffers, packing, launch arguments, the graph trainer -- run
end to end in the tests; it says nothing about CuPy itself or a real GPU."""
import contextlib
import types

import numpy as np

from kernels.cupy import build as cb


class FakeGraph:
    def __init__(self, launches):
        self.launches = launches

    def upload(self, stream=None):
        pass

    def launch(self, stream=None):
        for fn, grid, block, args, smem in self.launches:
            fn(grid, block, args, shared_mem=smem)


class FakeStream:
    current = []  # the stack of streams entered with `with`

    def __init__(self, non_blocking=False):
        self.capture = None

    def __enter__(self):
        FakeStream.current.append(self)
        return self

    def __exit__(self, *exc):
        FakeStream.current.pop()

    def synchronize(self):
        pass

    def begin_capture(self, mode=None):
        self.capture = []

    def end_capture(self):
        graph, self.capture = FakeGraph(self.capture), None
        return graph


class FakeEvent:
    """Host clock at record time (launches on the emulator are synchronous)."""

    def record(self, stream=None):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def fake_elapsed_ms(start, end):
    return (end.t - start.t) * 1e3


class FakeKernel:
    max_threads_per_block = 512  # as a compiled kernel limited by its registers would report
    num_regs = 96

    def __init__(self, emu, src, kernel, dtype, defines=()):
        self.launch = emu(src, kernel, dtype, defines)
        self.max_dynamic_shared_size_bytes = cb.SMEM_DEFAULT

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem > max(self.max_dynamic_shared_size_bytes, cb.SMEM_DEFAULT):
            raise ValueError(f"shared_mem {shared_mem} above the kernel's limit (attribute not set)")
        stream = FakeStream.current[-1] if FakeStream.current else None
        if stream is not None and stream.capture is not None:
            stream.capture.append((self.launch, grid, block, tuple(args), shared_mem))
        else:
            self.launch(grid, block, args, shared_mem=shared_mem)


class FakeRawModule:
    emulator = None  # set by make_fake_cupy

    compiled = []  # (source, name expressions, -D options) of every module made, in order

    def __init__(self, code, options=(), name_expressions=()):
        src = [s for s in cb.KERNELS if cb.source(s) == code]
        assert len(src) == 1, "code is not one of kernels/cupy/cuda/*.cu"
        self.src = src[0]
        self.names = set(name_expressions)
        self.defines = tuple(o for o in options if o.startswith("-D"))  # built into the emulation
        FakeRawModule.compiled.append((self.src, sorted(self.names), self.defines))

    def get_function(self, name):
        assert name in self.names, f"{name} was not a name expression"
        kernel, real = name[:-1].split("<")
        return FakeKernel(self.emulator, self.src, kernel, np.float32 if real == "float" else np.float64,
                          self.defines)


def make_fake_cupy(emulator):
    """A module object with the part of CuPy's API the backend, its tests and benchmark use."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "fake (CPU emulator)"
    for name in ("zeros", "full", "empty", "empty_like", "zeros_like", "full_like", "concatenate",
                 "ravel", "stack", "mean", "ascontiguousarray", "array", "array_equal", "int32",
                 "uint32", "float32", "float64", "ndarray"):
        setattr(cp, name, getattr(np, name))
    cp.asarray = lambda x, dtype=None: np.array(x, dtype=dtype)  # a copy, as a host -> device copy
    cp.asnumpy = lambda x: np.array(x)
    FakeRawModule.emulator = emulator
    cp.RawModule = FakeRawModule
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"CPU emulator", "major": 0, "minor": 0,
                                       "multiProcessorCount": 1, "totalGlobalMem": 0},
        driverGetVersion=lambda: 0, runtimeGetVersion=lambda: 0)
    # a small device: few SMs and little shared memory, so that small batches already give several
    # tasks per warp, several warps per block and several blocks (kernels/cupy/build.py _task_launch)
    attributes = {"MultiProcessorCount": 2, "MaxSharedMemoryPerBlockOptin": 64 * 1024,
                  "MaxSharedMemoryPerMultiprocessor": 64 * 1024}
    cp.cuda = types.SimpleNamespace(runtime=runtime, Stream=FakeStream, Graph=FakeGraph,
                                    Event=FakeEvent, get_elapsed_time=fake_elapsed_ms,
                                    Device=lambda i=0: types.SimpleNamespace(
                                        synchronize=lambda: None, attributes=attributes))
    cp.fake = True
    return cp


@contextlib.contextmanager
def installed(monkeypatch, emulator):
    """sys.modules['cupy'] is the fake inside the block; the backend's compile cache is reset."""
    import sys
    from kernels.cupy import backend as cupy_backend
    cp = make_fake_cupy(emulator)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    cupy_backend._module.cache_clear()
    cupy_backend.device_limits.cache_clear()
    try:
        yield cp
    finally:
        cupy_backend._module.cache_clear()
        cupy_backend.device_limits.cache_clear()
