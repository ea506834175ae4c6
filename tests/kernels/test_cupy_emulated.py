"""The GPU tests of tests/kernels/test_cupy_backend.py (at smaller sizes), run WITHOUT a GPU: `cupy` is
replaced by a CPU stand-in (tests/kernels/cuda_host/fake_cupy.py) whose RawKernels are the kernels/cupy/cuda/*.cu sources compiled
by g++ against a CPU model of CUDA's execution (tests/kernels/cuda_host/emu_prelude.h: one std::thread per
CUDA thread, barriers for __syncwarp/__syncthreads, per-block shared memory, real integer atomics).
So the kernels' parallel schedule and the backend's launch code run end to end against the oracle.
What this cannot show: CuPy's own behaviour, the CUDA compiler's code, the GPU memory model, speed."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "cuda_host"))

from tests.kernels import test_cupy_backend as gpu_tests  # noqa: E402
from emulator import Emulator  # noqa: E402
from fake_cupy import installed  # noqa: E402

import kernels  # noqa: E402
from kernels.cupy import build as cb  # noqa: E402


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    try:
        return Emulator(str(tmp_path_factory.mktemp("cuda_emu")))
    except RuntimeError as e:
        pytest.skip(f"CPU emulation of the kernels unavailable: {e}")


@pytest.fixture
def cp(monkeypatch, emulator):
    with installed(monkeypatch, emulator) as fake:
        # fewer warps in flight: several tasks per warp and several blocks even for small batches
        monkeypatch.setattr(cb, "TARGET_WARPS", 6)
        yield fake


@pytest.fixture
def be(cp):
    backend = kernels.get_backend("cupy")
    assert kernels.availability("cupy")[1].endswith("CPU emulator")
    return backend


@pytest.mark.slow
@pytest.mark.parametrize("name", list(gpu_tests.CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_and_grads_match_oracle(cp, be, rng, name, dtype):
    gpu_tests.test_loss_and_grads_match_oracle(cp, be, rng, name, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_model_step_kernel_writes_every_output(cp, be, rng, dtype):
    gpu_tests.test_model_step_kernel_writes_every_output(cp, be, rng, dtype, B=150)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_kernels_write_every_output(cp, be, rng, dtype):
    gpu_tests.test_block_kernels_write_every_output(cp, be, rng, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cupy", "cupy-unfused"])
@pytest.mark.parametrize("name", ["fig2", "deep5_clip", "softmax_ln_mlp"])
def test_ten_step_adam_trajectory_matches_oracle(cp, rng, backend, name):
    gpu_tests.test_ten_step_adam_trajectory_matches_oracle(cp, rng, kernels.get_backend(backend), name, B=24)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_adam_update_matches_oracle(cp, be, rng, dtype):
    gpu_tests.test_fused_adam_update_matches_oracle(cp, be, rng, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_device_tasks_equal_host_mirror(cp, be, dtype):
    gpu_tests.test_device_tasks_equal_host_mirror(cp, be, dtype)


@pytest.mark.parametrize("cfg_name", ["fig2", "deep5_clip"])
def test_graph_replay_equals_eager_launches_and_host_training(cp, be, rng, cfg_name):
    gpu_tests.test_graph_replay_equals_eager_launches_and_host_training(cp, be, rng, cfg_name,
                                                                        batch=24, steps=10)


def test_fused_path_follows_config_and_shapes(cp, be):
    gpu_tests.test_fused_path_follows_config_and_shapes(be)


def test_fused_gradients_are_deterministic(cp, be, rng):
    cfg = gpu_tests.CONFIGS["deep5_clip"]
    params, tokens, y = gpu_tests.problem(cfg, rng, np.float32, B=60)
    args = (gpu_tests.dev(cp, params), cp.asarray(tokens), cp.asarray(y), cfg)
    a, b = be.loss_and_grads(*args)[2], be.loss_and_grads(*args)[2]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
def test_benchmark_script_runs_end_to_end_on_the_emulator(cp, be, tmp_path, capsys):
    """The benchmark's own code path (not its numbers: the device is the CPU emulator) runs and
    writes every promised field; peers without a GPU are recorded as skipped with the reason."""
    import json

    from benchmarks import bench_cupy
    out = tmp_path / "bench.json"
    assert bench_cupy.main(["--out", str(out), "--steps", "12", "--repeats", "4", "--batch", "16",
                            "--graph-steps", "3", "--peers", "unfused,jax,torch,numba_cuda"]) == 0
    res = json.loads(out.read_text())
    assert res["device"]["name"] == "CPU emulator"
    assert set(res["shapes"]) >= {"B", "N", "d", "T", "D", "dtype", "steps"}
    fused = res["results"]["fused_cupy"]
    for key in ("step_s", "eager_step_s", "device_step_s", "launch_overhead", "fig2_s",
                "fig2_logged_s", "fig2_final_batch_loss"):
        assert np.isfinite(fused[key]), key
    assert len(fused["fig2_loss_every_100"]) == 0  # 12 steps: no log point
    assert "step_s" in res["results"]["unfused"] and "unfused" in res["speedup_vs"]
    for peer in ("jax", "torch", "numba_cuda"):
        assert "skipped" in res["results"][peer] or "error" not in res["results"][peer], peer
