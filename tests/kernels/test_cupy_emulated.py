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
from fake_cupy import FakeRawModule, installed  # noqa: E402

import kernels  # noqa: E402
from kernels.cupy import build as cb  # noqa: E402
from kernels.cupy import graph  # noqa: E402
from refimpl.config import AdamConfig  # noqa: E402
from refimpl.loss import loss_and_grads  # noqa: E402
from refimpl.params import init_params  # noqa: E402
from tests.conftest import assert_close_to_oracle  # noqa: E402

pytestmark = pytest.mark.slow  # the fast subset leaves these out: the CPU emulation of the CUDA kernels: tens of seconds


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    try:
        return Emulator(str(tmp_path_factory.mktemp("cuda_emu")))
    except RuntimeError as e:
        pytest.skip(f"CPU emulation of the kernels unavailable: {e}")


@pytest.fixture
def cp(monkeypatch, emulator):
    with installed(monkeypatch, emulator) as fake:  # a device of 2 SMs and 64 KiB shared memory
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


def test_step_variants_give_the_same_bits(cp, be, rng, monkeypatch):
    gpu_tests.test_step_variants_give_the_same_bits(cp, be, rng, monkeypatch, B=12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_kernels_write_every_output(cp, be, rng, dtype):
    gpu_tests.test_block_kernels_write_every_output(cp, be, rng, dtype)


@pytest.mark.parametrize("backend", ["cupy", "cupy-unfused"])
def test_gpt2_ten_step_trajectory_matches_oracle(cp, rng, backend):
    gpu_tests.test_gpt2_ten_step_trajectory_matches_oracle(cp, rng, kernels.get_backend(backend))


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
                            "--graph-steps", "3", "--peers", "unfused,jax,torch,numba_cuda",
                            "--sweep", "--sweep-batches", "8,20"]) == 0
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
    assert set(res["sweep"]) == {"8", "20"}
    for B, r in res["sweep"].items():
        assert np.isfinite(r["graph_step_s"]) and r["grid"] * r["warps_per_block"] * r["tasks_per_warp"] >= int(B)
    assert res["complete"] is True
    for key in ("compute_s", "one_launch_step_s", "two_launch_step_s", "tail_one_launch_s",
                "tail_two_launch_s", "generic_one_launch_step_s"):
        assert np.isfinite(res["tail"][key]), key


@pytest.mark.parametrize("name", ["deep5_clip", "softmax_ln_mlp"])
def test_multi_block_reduction_matches_oracle_and_the_in_kernel_one(cp, be, rng, monkeypatch, name):
    """Above REDUCE_IN_KERNEL_ENTRIES partial entries a second, multi-block launch sums the partial
    rows (model_step_finish / block_add_partials); forced here, it must give the oracle's numbers
    and the in-kernel reduction's bits (the same fixed order of sums)."""
    cfg = gpu_tests.CONFIGS[name]
    params, tokens, y = gpu_tests.problem(cfg, rng, np.float64, B=40)
    args = (gpu_tests.dev(cp, params), cp.asarray(tokens), cp.asarray(y), cfg)
    ln = cb.model_step_launch if name == "deep5_clip" else None
    in_kernel = be.loss_and_grads(*args)
    monkeypatch.setattr(cb, "REDUCE_IN_KERNEL_ENTRIES", 0)
    if ln is not None:
        assert not ln(40, cb.model_dims(cfg, tokens.shape[1]), 0, np.float64,
                      be.device_limits()).finish_in_kernel
    multi = be.loss_and_grads(*args)
    loss, per_layer, grads = loss_and_grads(params, tokens, y, cfg)
    red = tokens.shape[0] * tokens.shape[1] * 44
    assert_close_to_oracle(np.asarray(multi[1]), per_layer, np.float64, red, "per-layer losses")
    for k in grads:
        assert_close_to_oracle(multi[2][k], grads[k], np.float64, red, f"grads[{k}]")
        np.testing.assert_array_equal(multi[2][k], in_kernel[2][k])


@pytest.mark.slow
def test_multi_block_reduction_in_the_graph_trainer_equals_eager_in_kernel(cp, be, rng, monkeypatch):
    """GraphTrainer with the two-launch step (captured together) follows the one-launch step."""
    cfg = gpu_tests.CONFIGS["deep5_clip"]
    params = init_params(cfg, rng, np.float32)
    adam = AdamConfig(lr=1e-3, grad_clip=1.0)
    one = graph.GraphTrainer(params, cfg, adam, batch=24, seed=5, use_graph=False)
    one.run(3)
    monkeypatch.setattr(cb, "REDUCE_IN_KERNEL_ENTRIES", 0)
    two = graph.GraphTrainer(params, cfg, adam, batch=24, seed=5, use_graph=True)
    assert not two.buf.launch.finish_in_kernel
    two.run(3)
    for k, v in one.params().items():
        np.testing.assert_array_equal(two.params()[k], v)
    assert two.adam_state()["t"] == 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_run_compiles_only_its_dtype(cp, be, rng, dtype):
    FakeRawModule.compiled.clear()
    cfg = gpu_tests.CONFIGS["softmax_ln_mlp"]
    params, tokens, y = gpu_tests.problem(cfg, rng, dtype, B=5)
    be.loss_and_grads(gpu_tests.dev(cp, params), cp.asarray(tokens), cp.asarray(y), cfg)
    real = cb.real_type(dtype)
    assert FakeRawModule.compiled, "nothing compiled"
    for src, names, _ in FakeRawModule.compiled:
        assert names == sorted(f"{k}<{real}>" for k in cb.KERNELS[src]), src


@pytest.mark.parametrize("name", ["softmax_2heads_causal", "tied2", "deep2_3head_query_yupdate_clip"])
def test_model_step_compiled_for_the_model_shapes_gives_the_generic_bits(cp, be, rng, name):
    """With specialize=True model_step.cu is built with this model's sizes and flags as constants
    (model_step_defines; the emulation compiles those -D options too): the same bits as the
    generic build, which the interface's one-off calls use (and which matches the oracle)."""
    FakeRawModule.compiled.clear()
    cfg = gpu_tests.CONFIGS[name]
    params, tokens, y = gpu_tests.problem(cfg, rng, np.float64, B=9)
    vec = cb.pack(gpu_tests.dev(cp, params), cfg, cp)
    out = []
    for specialize in (False, True):
        buf = be.StepBuffers(cfg, 9, tokens.shape[1], np.float64, specialize=specialize)
        g = cp.full(buf.dims.num_params, np.nan)
        buf.launch_step(vec, cp.asarray(tokens), cp.asarray(y), None, g, 0, None, None,
                        cp.zeros(1, cp.int32), None)
        out.append((np.array(g), np.array(buf.stats)))
    defines = cb.model_step_defines(cb.model_dims(cfg, tokens.shape[1]))
    assert [c[2] for c in FakeRawModule.compiled if c[0] == "model_step.cu"] == [(), defines]
    np.testing.assert_array_equal(out[1][0], out[0][0])
    np.testing.assert_array_equal(out[1][1], out[0][1])
    _, per_layer, grads = loss_and_grads(params, tokens, y, cfg)
    assert_close_to_oracle(out[1][1][:cfg.num_layers], per_layer, np.float64, 9 * 9 * 44, "per-layer")
    for k, v in cb.unpack(out[1][0], cfg).items():
        assert_close_to_oracle(v, grads[k], np.float64, 9 * 9 * 44, f"grads[{k}]")


@pytest.mark.slow
def test_gpu_smoke_script_passes_on_the_emulator(cp, be, capsys):
    """benchmarks/gpu_smoke.py (stage 2 of benchmarks/gpu_check.sh) runs its every check on the
    `cupy` backend and they pass; here the device is the CPU emulator, so this checks the script."""
    from benchmarks import gpu_smoke
    assert gpu_smoke.main(["--small", "--backends", "cupy,no-such-backend",
                           "--models", "tied2,softmax_ln_mlp"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not [line for line in out if line.startswith("FAIL")], out
    passed = [line for line in out if line.startswith("PASS cupy ")]
    # 2 models x (losses, grads, losses of 3 steps) x 2 dtypes + float64 parameters + 2 extras x 2
    assert len(passed) == 2 * 3 * 2 + 2 + 2 * 2, out
    assert any(line.startswith("SKIP no-such-backend") for line in out)


@pytest.mark.slow
def test_compile_stage_modules_build_and_are_the_ones_the_runs_load(cp, be, rng):
    """benchmarks/gpu_compile.py's list compiles (here: on the emulator) and holds the modules a
    fig2 GraphTrainer and a one-off LN/MLP gradient load, so the later stages find them cached."""
    from benchmarks import gpu_compile
    items = gpu_compile.modules()
    for item in items:
        assert gpu_compile.compile_one(item) >= 0
    FakeRawModule.compiled.clear()
    graph.GraphTrainer(init_params(gpu_tests.CONFIGS["fig2"], rng, np.float32), gpu_tests.CONFIGS["fig2"],
                       AdamConfig(), batch=8, seed=1).run(1)
    cfg = gpu_tests.CONFIGS["softmax_ln_mlp"]
    params, tokens, y = gpu_tests.problem(cfg, rng, np.float64, B=3)
    be.loss_and_grads(gpu_tests.dev(cp, params), cp.asarray(tokens), cp.asarray(y), cfg)
    listed = {(src, dt, defines) for src, _, dt, defines in items}
    for src, names, defines in FakeRawModule.compiled:
        assert (src, "float64" if "double" in names[0] else "float32", defines) in listed, (src, names, defines)
