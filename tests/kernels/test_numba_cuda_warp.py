"""numba-cuda's one-warp-per-task kernel (kernels/numba/gpu_warp.py) for attention-only models,
against the oracle. Runs where numba-cuda runs: on a GPU, or under NUMBA_ENABLE_CUDASIM=1
(tests/kernels/test_numba_cuda_sim.py runs this file that way in a subprocess); skipped with the
reason otherwise. The host-side layout checks run everywhere."""
import numpy as np
import pytest

import kernels
from tests.conftest import SIMULATED, assert_close_to_oracle
from kernels.cupy import build as cb
from kernels.numba import gpu_warp as gw
from kernels.numba import gpu_warp_host as gwh
from refimpl.config import AdamConfig, ModelConfig
from refimpl.loss import loss_and_grads
from refimpl.optim import adam_init, adam_update
from refimpl.params import init_params

AVAILABLE, REASON = kernels.availability("numba-cuda")


def needs_numba_cuda(test):
    """GPU tests (pytest -m gpu runs them on a GPU) that the simulator runs too."""
    return pytest.mark.gpu(pytest.mark.skipif(not AVAILABLE, reason=f"numba-cuda cannot run here: "
                                              f"{REASON}")(test))

# small, uneven shapes (T != D != H K); every option of the attention-only models
CONFIGS = {
    "lsa": ModelConfig(token_dim=4, key_size=3),
    "deep3_2head_clip_damp": ModelConfig(token_dim=5, num_layers=3, num_heads=2, key_size=3,
                                         token_clip=0.6, dampening=0.8, init_scale=3.0),
    "softmax_causal_query": ModelConfig(token_dim=4, num_layers=2, attention="softmax", causal=True,
                                        include_query=True, num_heads=2, key_size=3),
    "tied3_first_softmax_yupdate": ModelConfig(token_dim=4, num_layers=3, weight_tied=True,
                                               y_update=True, dampening=0.75, first_layer_softmax=True),
}


def problem(cfg, rng, B, T=4):
    params = init_params(cfg, rng)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    tokens = rng.uniform(-1, 1, (B, T, cfg.token_dim))
    y = rng.standard_normal(B)
    return params, tokens, y


def test_workspace_table_matches_model_step_layout():
    for cfg in CONFIGS.values():
        dm, md = gwh.warp_dims(cfg, 6)
        assert dm[gw.W_TOTAL] == md.workspace_reals
        offs = dm[gw.W_XS:gw.W_TGT + 1]
        assert np.all(np.diff(offs) > 0) and offs[0] == 0  # buffers in order, none empty
        assert dm[gw.W_TGT] == md.workspace_reals - 1
    assert gwh.supported(CONFIGS["lsa"]) and not gwh.supported(ModelConfig(layernorm=True, mlp=True))


@needs_numba_cuda
@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_and_grads_match_oracle(rng, name):
    cfg = CONFIGS[name]
    be = kernels.get_backend("numba-cuda")
    B = 5 if SIMULATED else 301
    params, tokens, y = problem(cfg, rng, B)
    be.fill_buffers(cfg, tokens.shape[1], B, np.float64, np.nan)  # every buffer must be written
    loss, per_layer, grads = loss_and_grads(params, tokens, y, cfg)
    d_loss, d_per_layer, d_grads = be.loss_and_grads(be.asarray(params), tokens, y, cfg)
    assert_close_to_oracle(d_per_layer, per_layer, np.float64, B * 4, "per-layer losses")
    assert_close_to_oracle(d_loss, loss, np.float64, B * 4, "loss")
    for k in grads:
        assert_close_to_oracle(be.to_numpy(d_grads[k]), grads[k], np.float64, B * 4, f"grads[{k}]")
    from kernels.numba import gpu
    assert any(key[0] == cfg for key in gpu._WARP_PLANS)  # the warp kernel ran, not the thread one


@needs_numba_cuda
def test_several_tasks_per_warp_and_float32(rng):
    """B large enough that warps take several tasks each (and some warps idle at the end)."""
    cfg = CONFIGS["deep3_2head_clip_damp"]
    be = kernels.get_backend("numba-cuda")
    B = 37 if SIMULATED else 5000
    params, tokens, y = problem(cfg, rng, B)
    from kernels.numba import gpu
    for dtype in (np.float64, np.float32):
        p = {k: v.astype(dtype) for k, v in params.items()}
        tok, yy = tokens.astype(dtype), y.astype(dtype)
        _, per_layer, grads = loss_and_grads({k: v.astype(np.float64) for k, v in p.items()},
                                             tok.astype(np.float64), yy.astype(np.float64), cfg)
        _, d_per_layer, d_grads = be.loss_and_grads(be.asarray(p), tok, yy, cfg)
        assert gpu.warp_plan(cfg, 4, B, dtype).launch.tasks_per_warp > 1
        assert_close_to_oracle(d_per_layer, per_layer, dtype, B * 4, "per-layer losses")
        for k in grads:
            assert_close_to_oracle(be.to_numpy(d_grads[k]), grads[k], dtype, B * 4, f"grads[{k}]")


@needs_numba_cuda
def test_train_steps_match_oracle_and_are_deterministic(rng):
    cfg = CONFIGS["softmax_causal_query"]
    be = kernels.get_backend("numba-cuda")
    adam_cfg = AdamConfig(lr=1e-2, grad_clip=0.5)
    params, tokens, y = problem(cfg, rng, 6 if SIMULATED else 500)
    runs = []
    for _ in range(2):
        p, s = params, adam_init(params)
        dp = be.asarray(params)
        ds = be.adam_init(dp)
        for step in range(3):
            loss, _, g = loss_and_grads(p, tokens, y, cfg)
            p, s, _ = adam_update(p, g, s, adam_cfg)
            dp, ds, d_loss = be.train_step(dp, ds, tokens, y, cfg, adam_cfg)
            assert_close_to_oracle(d_loss, loss, np.float64, name=f"loss at step {step}")
        for k in p:
            assert_close_to_oracle(be.to_numpy(dp[k]), p[k], np.float64, name=f"params[{k}]")
        runs.append(be.to_numpy(dp))
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])


def test_launch_within_numba_shared_memory_and_threads():
    _, md = gwh.warp_dims(CONFIGS["deep3_2head_clip_damp"], 11)
    for B in (1, 37, 2048):
        ln = cb.model_step_launch(B, md, 0, np.float64, gwh.device_limits(True),
                                  max_threads=gwh.MAX_THREADS)
        assert ln.block <= gwh.MAX_THREADS and ln.smem_bytes <= gwh.NUMBA_SMEM
        assert ln.grid * ln.warps_per_block * ln.tasks_per_warp >= B
