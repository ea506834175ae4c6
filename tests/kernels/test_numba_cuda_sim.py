"""numba-cuda without a GPU: the backend-vs-oracle tests under the CUDA simulator, and a PTX
compilation of every kernel for compute capability 9.0 (catches type errors the simulator, which
runs the kernels as Python, cannot see). Both run in a subprocess: NUMBA_ENABLE_CUDASIM replaces
numba.cuda for the whole process, and the PTX check stubs the device query that needs a driver.
A GPU run of the same checks: `python -m pytest -m gpu tests/kernels/test_numba_cuda_sim.py`.
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _numba_cuda_reason():
    try:
        import numba_cuda  # noqa: F401  (the package numba-cuda; plain numba.cuda is deprecated)
    except ImportError:
        return "numba-cuda is not installed (pip install 'numba-cuda[cu12]==0.30.4')"
    return None


def _run(args, env_extra, timeout=900):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _passes_under_simulator(*pytest_args):
    """pytest on the given file (and options) in a subprocess under NUMBA_ENABLE_CUDASIM=1: it must
    pass with nothing skipped. Skipped where numba-cuda is not installed."""
    reason = _numba_cuda_reason()
    if reason:
        pytest.skip(reason)
    r = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args], {"NUMBA_ENABLE_CUDASIM": "1"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]


@pytest.mark.slow
def test_numba_cuda_matches_oracle_under_simulator():
    _passes_under_simulator("tests/kernels/test_numba_backends.py",
                            "-k", "numba-cuda and (f64 or deterministic or bad_input or mse) and not f32")


@pytest.mark.slow
def test_numba_cuda_warp_kernel_matches_oracle_under_simulator():
    """tests/kernels/test_numba_cuda_warp.py (one warp per task) under the simulator."""
    _passes_under_simulator("tests/kernels/test_numba_cuda_warp.py")


@pytest.mark.slow
def test_numba_cuda_draw_and_trainer_match_under_simulator():
    """tests/kernels/test_numba_cuda_trainer.py (the device draw and DeviceTrainer) under the simulator."""
    _passes_under_simulator("tests/kernels/test_numba_cuda_trainer.py")


PTX_SCRIPT = textwrap.dedent("""
    from types import SimpleNamespace
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda, types as nt
    # Device functions ask the current device for its compute capability; there is none here.
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(9, 0))
    import kernels.numba.gpu as nc
    import kernels.numba.gpu_kernels as gk
    import kernels.numba.gpu_warp as gw
    import kernels.numba.gpu_warp_block as gwb
    import kernels.numba.gpu_draw as gd
    import kernels.numba.gpu_trainer as gt
    from kernels.numba.adam import AdamHyper
    ks = nc.kernels()
    f64 = nt.Array(nt.float64, 1, "C")
    total = 0
    for f, with_task in ((nt.float32, True), (nt.float64, False)):
        a1, a2, a3 = nt.Array(f, 1, "C"), nt.Array(f, 2, "C"), nt.Array(f, 3, "C")
        i1, i2 = nt.Array(nt.int64, 1, "C"), nt.Array(nt.int64, 2, "C")
        sigs = {"reduce": (a1, nt.int64, nt.int64, nt.int64, a1), "norm": (a1, nt.float64, f64, a1),
                "adam": (a1, a1, a1, a1, nt.NamedUniTuple(f, 9, AdamHyper), a1)}
        fns = dict(ks)
        if with_task:  # the training kernel (loss + backward) and forward + backward
            task_sig = (a3, a1, a2, a1, i1, i2, a1, a2, a1, a2, a1, a1, a3)
            for mode in (gk.MODE_LOSS, gk.MODE_BACKWARD):
                sigs[f"task{mode}"] = task_sig
                fns[f"task{mode}"] = gk.task_kernel(mode)
        assert set(sigs) <= set(fns), sorted(fns)
        # one warp per task (attention-only models; LayerNorm / MLP models), both dtypes
        sigs["warp"] = (a3, a1, a1, i1, a1, nt.int64, nt.int64, a1)
        fns["warp"] = gw.warp_step_kernel("float32" if f == nt.float32 else "float64")
        sigs["warp_block"] = sigs["warp"]
        fns["warp_block"] = gwb.block_step_kernel("float32" if f == nt.float32 else "float64")
        # the device trainer's kernels and the task draw (tokens in either dtype)
        sigs["adam_out"] = (a1, a1, a1, a1, nt.NamedUniTuple(f, 9, AdamHyper), a1, a1, a1, a1)
        sigs["record"] = (a1, f, f, f64, a2, nt.int64)
        sigs["assemble"] = (nt.int64, nt.int64, nt.int64, f64, f64, a3, a1)
        fns.update(gt.step_kernels(), assemble=gd.draw_kernels()["assemble"])
        if with_task:
            sigs["draw_w"] = (*[nt.int64] * 5, nt.float64, f64)
            sigs["draw_x"] = (*[nt.int64] * 5, nt.float64, f64)
            fns.update(draw_w=gd.draw_kernels()["w"], draw_x=gd.draw_kernels()["x"])
        for name, sig in sigs.items():
            ptx, _ = cuda.compile_ptx(fns[name].py_func, sig, cc=(9, 0))
            assert ".target sm_90" in ptx, name
            print("compiled", name, f, len(ptx))
        total += len(sigs)
    print("kernels", sorted(ks), "total", total)
""")


@pytest.mark.slow
def test_every_numba_cuda_kernel_compiles_to_ptx():
    """The task kernels of two modes (float32: the per-task code is dtype-generic), the warp-per-task
    kernels (attention only; LayerNorm / MLP) and the small kernels in both dtypes."""
    reason = _numba_cuda_reason()
    if reason:
        pytest.skip(reason)
    r = _run(["-c", PTX_SCRIPT], {"NUMBA_ENABLE_CUDASIM": "0"})
    if r.returncode != 0 and "NVVM" in (r.stderr + r.stdout) and "not found" in (r.stderr + r.stdout):
        pytest.skip("NVVM (libnvvm from the cu12 extra) not found: " + r.stderr[-500:])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    total = int(r.stdout.split("total")[-1])
    assert total >= 18 and r.stdout.count("compiled") == total, r.stdout


def _gpu_reason():
    if _numba_cuda_reason():
        return _numba_cuda_reason()
    r = _run(["-c", "from numba import cuda; print(cuda.is_available())"], {"NUMBA_ENABLE_CUDASIM": "0"},
             timeout=120)
    return None if r.stdout.strip().endswith("True") else "no CUDA GPU available"


@pytest.mark.gpu
def test_numba_cuda_matches_oracle_on_gpu():
    reason = _gpu_reason()
    if reason:
        pytest.skip(reason)
    r = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels/test_numba_backends.py", "-k",
              "numba-cuda"], {"NUMBA_ENABLE_CUDASIM": "0"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
