"""numba-cuda's device task draw (kernels/numba/gpu_draw.py) against its NumPy mirror, and its
DeviceTrainer (kernels/numba/gpu_trainer.py) against the functional train_step and the oracle.
Runs where numba-cuda runs: on a GPU, or under NUMBA_ENABLE_CUDASIM=1
(tests/kernels/test_numba_cuda_sim.py runs this file that way in a subprocess); skipped with the
reason otherwise. Batches are tiny under the simulator, which runs every thread as Python."""
import numpy as np
import pytest

import kernels
from tests.conftest import SIMULATED, assert_close_to_oracle
from kernels.cupy import philox
from refimpl.config import AdamConfig, ModelConfig
from refimpl.loss import loss_and_grads
from refimpl.params import init_params

AVAILABLE, REASON = kernels.availability("numba-cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not AVAILABLE, reason=f"numba-cuda cannot run here: {REASON}")]

B = 3 if SIMULATED else 257
# one model of each path: one warp per task (attention only), and the LN / MLP model
ATTENTION = ModelConfig(token_dim=4, num_layers=2, num_heads=2, key_size=3)
BLOCK = ModelConfig(token_dim=4, num_layers=2, attention="softmax", layernorm=True, mlp=True,
                    mlp_widening=2, key_size=3)
ADAM = AdamConfig(lr=0.05, grad_clip=1e-3)  # clipping active on the later steps


def _draw_modules():
    from kernels.numba import gpu, gpu_draw, gpu_trainer
    return gpu, gpu_draw, gpu_trainer


def _equal_or_ulps(got, want, dtype):
    """Bit for bit under the simulator (Python's math = NumPy's); a few ulps on a GPU."""
    if SIMULATED:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=8 * np.finfo(dtype).eps, atol=8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(10, 10, 7, 0), (4, 3, 2**40 + 5, 123456), (5, 1, 0, 2**32 - 1)])
def test_device_draw_equals_the_mirror(dtype, shape):
    _, gpu_draw, _ = _draw_modules()
    N, d, seed, step = shape
    tok, y = gpu_draw.linear_regression_tasks(seed, step, B, N, d, 1.5, 0.7, dtype)
    t2, y2 = philox.linear_regression_tasks(seed, step, B, N, d, 1.5, 0.7, dtype)
    assert tok.shape == t2.shape and tok.dtype == np.dtype(dtype) and y.dtype == np.dtype(dtype)
    _equal_or_ulps(tok.copy_to_host(), t2, dtype)
    _equal_or_ulps(y.copy_to_host(), y2, dtype)


def test_device_draw_rejects_bad_seed_and_step():
    _, gpu_draw, _ = _draw_modules()
    with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\^64\), got -1"):
        gpu_draw.DeviceDraw(-1, 2)
    dd = gpu_draw.DeviceDraw(1, 2)
    with pytest.raises(ValueError, match="step: expected an integer below 2\\^32, got 4294967296"):
        dd.draw(2**32)


@pytest.mark.parametrize("cfg", [ATTENTION, BLOCK], ids=["attention", "ln_mlp"])
def test_trainer_equals_train_step_on_the_same_batches(cfg):
    """n trainer steps = n functional train_step calls on the device-drawn batches: the same
    parameters, moments, losses and norms bit for bit; the log read back across a full ring."""
    gpu, gpu_draw, gpu_trainer = _draw_modules()
    p0 = init_params(cfg, np.random.default_rng(1), np.float64)
    steps, N, d = 3, 5, 3
    tr = gpu_trainer.DeviceTrainer(p0, cfg, ADAM, B, seed=11, num_context=N, input_dim=d,
                                   dtype=np.float64, log_capacity=2)
    log = tr.run(steps, log_every=2)
    params = gpu.asarray(p0)
    state = gpu.adam_init(params)
    losses, norms = [], []
    for s in range(steps):
        tok, y = gpu_draw.linear_regression_tasks(11, s, B, N, d, dtype=np.float64)
        before = [gpu.to_numpy(d) for d in (params, state["m"], state["v"])]
        new_params, new_state, loss = gpu.train_step(params, state, tok, y, cfg, ADAM)
        for old, snap in zip((params, state["m"], state["v"]), before):  # inputs read, not written
            assert all(np.array_equal(gpu.to_numpy(old[k]), snap[k]) for k in snap)
        params, state = new_params, new_state
        losses.append(loss)
        norms.append(state["grad_norm"])
    got = tr.params()
    for k, v in gpu.to_numpy(params).items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    mom = tr.adam_state()
    assert mom["t"] == steps == state["t"]
    for k, v in gpu.to_numpy(state["m"]).items():
        np.testing.assert_array_equal(mom["m"][k], v, err_msg=k)
    table = tr.losses()
    assert table.shape == (steps, cfg.num_layers + 1)
    np.testing.assert_array_equal(table[:, -2], losses)
    np.testing.assert_allclose(table[:, -1], norms, rtol=1e-15)
    assert max(norms) > ADAM.grad_clip  # clipping was exercised
    assert log == [(2, losses[1])]


def test_trainer_first_loss_is_the_oracles_on_the_mirrors_batch():
    _, _, gpu_trainer = _draw_modules()
    cfg = ATTENTION
    p0 = init_params(cfg, np.random.default_rng(2), np.float64)
    tr = gpu_trainer.DeviceTrainer(p0, cfg, ADAM, B, seed=5, num_context=5, input_dim=3, dtype=np.float64)
    tr.step()
    tok, y = philox.linear_regression_tasks(5, 0, B, 5, 3)
    _, per_layer, _ = loss_and_grads(p0, tok, y, cfg)
    assert_close_to_oracle(tr.losses()[0, :-1], per_layer, np.float64, B * 4, "per-layer losses")


def test_trainer_takes_given_device_batches_and_refuses_host_ones():
    gpu, gpu_draw, gpu_trainer = _draw_modules()
    cfg = ATTENTION
    p0 = init_params(cfg, np.random.default_rng(3), np.float64)
    drawn = gpu_trainer.DeviceTrainer(p0, cfg, ADAM, B, seed=8, num_context=4, input_dim=3, dtype=np.float64)
    given = gpu_trainer.DeviceTrainer(p0, cfg, ADAM, B, seed=99, num_context=4, input_dim=3, dtype=np.float64)
    drawn.step()
    given.step(*gpu_draw.linear_regression_tasks(8, 0, B, 4, 3, dtype=np.float64))
    for k, v in drawn.params().items():
        np.testing.assert_array_equal(given.params()[k], v, err_msg=k)
    tok, y = philox.linear_regression_tasks(8, 1, B, 4, 3)
    with pytest.raises(ValueError, match="tokens, targets: expected device arrays"):
        given.step(tok, y)
    with pytest.raises(ValueError, match="tokens: expected dtype float64"):
        given.step(*gpu_draw.linear_regression_tasks(8, 1, B, 4, 3, dtype=np.float32))
    with pytest.raises(ValueError, match="cfg.token_dim: expected input_dim \\+ 1 = 6, got 4"):
        gpu_trainer.DeviceTrainer(p0, cfg, ADAM, B, seed=1, input_dim=5)


def test_the_gpu_benchmark_times_the_trainer_and_the_functional_step():
    """benchmarks/bench_cupy.py's numba-cuda part runs (tiny sizes) and reports every number."""
    from types import SimpleNamespace

    from benchmarks import bench_cupy
    params = init_params(bench_cupy.FIG2, np.random.default_rng(0), np.float64)
    args = SimpleNamespace(batch=2 if SIMULATED else 2048, steps=2 if SIMULATED else 100, repeats=2, seed=0)
    res = bench_cupy.bench_numba_cuda(params, args, np.float64)
    assert res["backend"] == "numba-cuda"
    for key in ("setup_s", "step_s", "fig2_s", "functional_step_s"):
        assert res[key] > 0, key
    assert np.isfinite(res["fig2_final_batch_loss"])
