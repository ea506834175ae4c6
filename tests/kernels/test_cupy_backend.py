"""The `cupy` and `cupy-unfused` backends against the oracle on the same inputs (needs a CUDA GPU;
skipped with the reason otherwise). Run: python -m pytest -m gpu tests/kernels/test_cupy_backend.py"""
import numpy as np
import pytest

import kernels
from tests.conftest import TOL, assert_close_to_oracle, model_configs, tolerance
from kernels.cupy import build as cb
from kernels.cupy import graph
from kernels.cupy import philox
from refimpl.config import AdamConfig
from refimpl.loss import loss_and_grads
from refimpl.model import model_backward, model_forward
from refimpl.optim import adam_init, adam_update
from refimpl.params import init_params

AVAILABLE, REASON = kernels.availability("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not AVAILABLE, reason=f"needs a CUDA GPU: {REASON}")]

# fused path: model_step for fig2, tied2, deep5_clip, dampened_yupdate, the softmax ones and the
# linear last layers with several heads or the query among the keys (deep3_2head_clip_damp,
# tied3_yupdate_query, deep2_3head_query_yupdate_clip: model_step.cu's rank-one query row,
# H K != D); the block kernels for softmax_ln_mlp and tied_ln_mlp_clip; unfused for front_end and
# too_wide_for_shared_memory
CONFIGS = model_configs("fig2", "tied2", "deep5_clip", "dampened_yupdate", "softmax_2heads_causal",
                        "first_softmax_query", "deep3_2head_clip_damp", "tied3_yupdate_query",
                        "deep2_3head_query_yupdate_clip", "softmax_ln_mlp", "tied_ln_mlp_clip",
                        "front_end", "too_wide_for_shared_memory",
                        renamed={"dampened_yupdate": "tied3_yupdate_damped",
                                 "softmax_ln_mlp": "softmax_ln_mlp_2layer"})


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.fixture
def backend_name():
    """The shared `backend` fixture (tests/conftest.py), for the cupy backend only."""
    return "cupy"


def problem(cfg, rng, dtype, B=37, N=8):
    """Odd shapes: B = 37 tasks, T = 9 tokens, D = 11, weights of order one."""
    params = init_params(cfg, rng, np.float64)
    params = {k: (v + 0.3 * rng.standard_normal(v.shape)).astype(dtype) for k, v in params.items()}
    tokens = rng.uniform(-1, 1, size=(B, N + 1, cfg.token_dim)).astype(dtype)
    y = rng.standard_normal(B).astype(dtype)
    return params, tokens, y


def dev(cp, d):
    return {k: cp.asarray(v) for k, v in d.items()}


def host(cp, d):
    return {k: cp.asnumpy(v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_and_grads_match_oracle(cp, backend, rng, name, dtype):
    cfg = CONFIGS[name]
    params, tokens, y = problem(cfg, rng, dtype)
    loss, per_layer, grads = loss_and_grads(params, tokens, y, cfg)
    d_loss, d_per_layer, d_grads = backend.loss_and_grads(dev(cp, params), cp.asarray(tokens), cp.asarray(y), cfg)
    red = tokens.shape[0] * tokens.shape[1] * 44
    assert_close_to_oracle(cp.asnumpy(d_per_layer), per_layer, dtype, red, "per-layer losses")
    assert_close_to_oracle(float(d_loss), loss, dtype, red, "loss")
    assert set(d_grads) == set(grads)
    for k, g in host(cp, d_grads).items():
        assert_close_to_oracle(g, grads[k], dtype, red, f"grads[{k}]")


def test_fused_path_follows_config_and_shapes(backend):
    assert backend.fused_path(CONFIGS["fig2"], 11) == "model_step"
    assert backend.fused_path(CONFIGS["softmax_ln_mlp"], 11) == "blocks"
    assert backend.fused_path(CONFIGS["front_end"], 11) is None
    assert backend.fused_path(CONFIGS["too_wide_for_shared_memory"], 11, np.float64) is None


def test_fused_gradients_are_deterministic(cp, backend, rng):
    cfg = CONFIGS["deep5_clip"]
    params, tokens, y = problem(cfg, rng, np.float32, B=3000)
    args = (dev(cp, params), cp.asarray(tokens), cp.asarray(y), cfg)
    a = host(cp, backend.loss_and_grads(*args)[2])
    b = host(cp, backend.loss_and_grads(*args)[2])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # fixed-order reductions: bit for bit


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_model_step_kernel_writes_every_output(cp, backend, rng, dtype, B=1001):
    """NaN-prefilled outputs (grads, stats) must all backend overwritten with the oracle's numbers."""
    cfg = CONFIGS["tied2"]
    params, tokens, y = problem(cfg, rng, dtype, B=B)
    loss, per_layer, grads = loss_and_grads(params, tokens, y, cfg)
    buf = backend.StepBuffers(cfg, tokens.shape[0], tokens.shape[1], dtype)
    g = cp.full(buf.dims.num_params, np.nan, dtype)
    buf.stats.fill(np.nan)
    buf.partials.fill(np.nan)
    buf.launch_step(cb.pack(dev(cp, params), cfg, cp), cp.asarray(tokens), cp.asarray(y), None, g, 0,
                    None, None, cp.zeros(1, cp.int32), None)
    stats = cp.asnumpy(buf.stats)
    assert_close_to_oracle(stats[:cfg.num_layers], per_layer, dtype, 10**5, "stats")
    gn = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in grads.values()))
    assert_close_to_oracle(stats[-1], gn, dtype, 10**5, "gradient norm")
    for k, v in cb.unpack(cp.asnumpy(g), cfg).items():
        assert_close_to_oracle(v, grads[k], dtype, 10**5, f"grads[{k}]")


def test_step_variants_give_the_same_bits(cp, backend, rng, monkeypatch, B=1001):
    """model_step compiled generic or for the model's shapes, with the partial rows summed by the
    last block or by the multi-block launch: the same fixed order of sums, the same bits."""
    cfg = CONFIGS["deep5_clip"]
    params, tokens, y = problem(cfg, rng, np.float32, B=B)
    vec = cb.pack(dev(cp, params), cfg, cp)
    out = {}
    for entries in (cb.REDUCE_IN_KERNEL_ENTRIES, 0):
        monkeypatch.setattr(cb, "REDUCE_IN_KERNEL_ENTRIES", entries)
        for specialize in (False, True):
            buf = backend.StepBuffers(cfg, B, tokens.shape[1], np.float32, specialize=specialize)
            g = cp.full(buf.dims.num_params, np.nan, np.float32)
            buf.launch_step(vec, cp.asarray(tokens), cp.asarray(y), None, g, 0, None, None,
                            cp.zeros(1, cp.int32), None)
            out[entries, specialize] = (cp.asnumpy(g), cp.asnumpy(buf.stats))
    first = next(iter(out.values()))
    assert np.all(np.isfinite(first[0])) and np.all(np.isfinite(first[1]))
    for key, (g, stats) in out.items():
        np.testing.assert_array_equal(g, first[0], err_msg=str(key))
        np.testing.assert_array_equal(stats, first[1], err_msg=str(key))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_kernels_write_every_output(cp, backend, rng, dtype):
    cfg = CONFIGS["softmax_ln_mlp"]
    params, tokens, _ = problem(cfg, rng, dtype, B=45)
    b = cb.block_dims(cfg, 0, tokens.shape[1])
    ln = cb.block_launch(45, b, dtype, backend.device_limits(), **backend.kernel_limits(
        backend.kernel("block.cu", "block_forward", dtype), backend.kernel("block.cu", "block_backward", dtype)))
    vec = cb.pack(dev(cp, params), cfg, cp)
    X = cp.asarray(tokens)
    out = cp.full_like(X, np.nan)
    backend.kernel("block.cu", "block_forward", dtype, ln.smem_bytes)(
        (-(-45 // ln.warps_per_block),), (ln.block,), cb.block_forward_args(b, 45, X, vec, out),
        shared_mem=ln.smem_bytes)
    dX = cp.full_like(X, np.nan)
    grads = cp.zeros(b.num_params, dtype)
    partials = cp.full((ln.grid, ln.partial_cols), np.nan, dtype)
    backend.kernel("block.cu", "block_backward", dtype, ln.smem_bytes)(
        (ln.grid,), (ln.block,),
        cb.block_backward_args(b, 45, ln, X, vec, cp.asarray(rng.standard_normal(X.shape).astype(dtype)),
                               dX, partials, cp.zeros(1, cp.uint32), grads), shared_mem=ln.smem_bytes)
    if not ln.finish_in_kernel:
        backend.kernel("block.cu", "block_add_partials", dtype)(
            (ln.finish_grid,), (cb.FINISH_THREADS,), cb.block_add_partials_args(ln, partials, grads))
    assert np.all(np.isfinite(cp.asnumpy(out))) and np.all(np.isfinite(cp.asnumpy(dX)))
    assert np.all(np.isfinite(cp.asnumpy(grads)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unfused_model_forward_backward_match_oracle(cp, backend, rng, dtype):
    cfg = CONFIGS["softmax_ln_mlp"]
    params, tokens, _ = problem(cfg, rng, dtype)
    read, cache = model_forward(params, tokens, cfg)
    dread = rng.standard_normal(read.shape).astype(dtype)
    dtok, grads = model_backward(dread, cache)
    d_read, d_cache = backend.model_forward(dev(cp, params), cp.asarray(tokens), cfg)
    d_dtok, d_grads = backend.model_backward(cp.asarray(dread), d_cache)
    assert_close_to_oracle(cp.asnumpy(d_read), read, dtype, 10**4, "readouts")
    assert_close_to_oracle(cp.asnumpy(d_dtok), dtok, dtype, 10**4, "dtokens")
    for k, g in host(cp, d_grads).items():
        assert_close_to_oracle(g, grads[k], dtype, 10**4, f"grads[{k}]")


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", ["cupy", "cupy-unfused"])
@pytest.mark.parametrize("name", ["fig2", "deep5_clip", "softmax_ln_mlp"])
def test_ten_step_adam_trajectory_matches_oracle(cp, rng, backend, name, B=64):
    cfg = CONFIGS[name]
    adam_cfg = AdamConfig(lr=1e-2, grad_clip=0.5)
    params, _, _ = problem(cfg, rng, np.float64)
    state = adam_init(params)
    d_params, d_state = dev(cp, params), backend.adam_init(dev(cp, params))
    for step in range(10):
        tokens, y = philox.linear_regression_tasks(1, step, B, dtype=np.float64)
        loss, _, grads = loss_and_grads(params, tokens, y, cfg)
        params, state, _ = adam_update(params, grads, state, adam_cfg)
        d_params, d_state, d_loss = backend.train_step(d_params, d_state, cp.asarray(tokens),
                                                       cp.asarray(y), cfg, adam_cfg)
        assert_close_to_oracle(float(d_loss), loss, np.float64, name=f"loss at step {step}")
    assert d_state["t"] == 10
    for k, p in host(cp, d_params).items():
        assert_close_to_oracle(p, params[k], np.float64, name=f"params[{k}] after 10 steps")


def test_gpt2_ten_step_trajectory_matches_oracle(cp, rng, backend, B=16):
    """The GPT-2 style model (refimpl.gpt2) on the GPU: the oracle's code on CuPy arrays, Adam fused
    (cupy) or not (cupy-unfused); predictions, gradients and 10 training steps against the oracle."""
    from refimpl import gpt2
    from refimpl.gaussian import GaussianTaskConfig, InterleavedTaskSource
    from refimpl.gradcheck_gpt2 import GPT2_CHECK, gpt2_check_params
    cfg, adam_cfg = GPT2_CHECK, AdamConfig(lr=1e-2, grad_clip=0.5)
    params = gpt2_check_params(cfg, rng)
    source = InterleavedTaskSource(GaussianTaskConfig(input_dim=cfg.input_dim, num_pairs=3), B)
    tokens, y = source.next_batch(rng, 0)
    pred, cache = gpt2.gpt2_forward(params, tokens, cfg)
    d_pred, d_cache = backend.model_forward(dev(cp, params), cp.asarray(tokens), cfg)
    assert_close_to_oracle(cp.asnumpy(d_pred), pred, np.float64, name="predictions")
    dpred = rng.standard_normal(pred.shape)
    dtok, grads = gpt2.gpt2_backward(dpred, cache)
    d_dtok, d_grads = backend.model_backward(cp.asarray(dpred), d_cache)
    assert_close_to_oracle(cp.asnumpy(d_dtok), dtok, np.float64, name="dtokens")
    for k, g in gpt2.full_pos_grad(grads, cfg).items():
        assert_close_to_oracle(cp.asnumpy(d_grads[k]), g, np.float64, name=f"grads[{k}]")
    state = adam_init(params)
    d_params, d_state = dev(cp, params), backend.adam_init(dev(cp, params))
    for step in range(10):
        tokens, y = source.next_batch(rng, step)
        loss, _, grads = gpt2.loss_and_grads(params, tokens, y, cfg)
        params, state, _ = adam_update(params, grads, state, adam_cfg)
        d_params, d_state, d_loss = backend.train_step(d_params, d_state, cp.asarray(tokens), cp.asarray(y),
                                                       cfg, adam_cfg)
        assert_close_to_oracle(float(d_loss), loss, np.float64, name=f"loss at step {step}")
    for k, p in host(cp, d_params).items():
        assert_close_to_oracle(p, params[k], np.float64, name=f"params[{k}] after 10 steps")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_adam_update_matches_oracle(cp, backend, rng, dtype):
    params = {"a": rng.standard_normal((70, 30)).astype(dtype), "b": rng.standard_normal(5).astype(dtype)}
    state, d_state = adam_init(params), backend.adam_init(dev(cp, params))
    d_params = dev(cp, params)
    for clip in (0.0, 1.0, 1e3):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
        cfg = AdamConfig(grad_clip=clip)
        params, state, norm = adam_update(params, grads, state, cfg)
        d_params, d_state, d_norm = backend.adam_update(d_params, dev(cp, grads), d_state, cfg)
        assert_close_to_oracle(d_norm, norm, np.float64, name="gradient norm")
        for k in params:
            assert_close_to_oracle(cp.asnumpy(d_params[k]), params[k], dtype, 100, f"params[{k}]")
            assert_close_to_oracle(cp.asnumpy(d_state["v"][k]), state["v"][k], dtype, 100, f"v[{k}]")


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_device_tasks_equal_host_mirror(cp, backend, dtype):
    tok, tgt = graph.draw_tasks(2**33 + 5, 17, 333, 9, 7, 1.3, 0.7, dtype)
    ref_tok, ref_tgt = philox.linear_regression_tasks(2**33 + 5, 17, 333, 9, 7, 1.3, 0.7, dtype)
    np.testing.assert_array_equal(cp.asnumpy(tok)[..., :-1], ref_tok[..., :-1])  # exact inputs
    tol = tolerance("device_libm_labels", dtype)  # labels: device log/sin/cos vs glibc
    np.testing.assert_allclose(cp.asnumpy(tok)[..., -1], ref_tok[..., -1], **tol)
    np.testing.assert_allclose(cp.asnumpy(tgt), ref_tgt, **tol)


def test_device_tasks_moments_and_determinism(cp, backend):
    B, N, d, r, s = 1 << 15, 10, 10, 1.0, 1.0
    tok, tgt = graph.draw_tasks(7, 0, B, N, d, r, s, np.float64)
    x = cp.asnumpy(tok)[..., :d]
    n = x.size
    assert abs(x.mean()) < 5 * np.sqrt(r**2 / 12 / n)
    assert abs(x.var() - r**2 / 12) < 5 * np.sqrt(r**4 / 180 / n)
    # y_q = w . x_q with w ~ N(0, s^2 I): E y_q^2 = s^2 d r^2 / 12
    yq = cp.asnumpy(tgt)
    assert abs(np.mean(yq**2) / (s**2 * d * r**2 / 12) - 1) < 0.05
    again, _ = graph.draw_tasks(7, 0, B, N, d, r, s, np.float64)
    other, _ = graph.draw_tasks(7, 1, B, N, d, r, s, np.float64)
    assert cp.array_equal(tok, again) and not cp.array_equal(tok, other)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_name", ["fig2", "deep5_clip"])
def test_graph_replay_equals_eager_launches_and_host_training(cp, backend, rng, cfg_name, batch=256,
                                                              steps=20):
    cfg = CONFIGS[cfg_name]
    adam_cfg = AdamConfig(grad_clip=0.001 if cfg.num_layers <= 2 else 10.0)
    params = init_params(cfg, rng, np.float64)
    runs = {}
    for use_graph in (True, False):
        tr = graph.GraphTrainer(params, cfg, adam_cfg, batch=batch, seed=3, dtype=np.float64,
                               use_graph=use_graph)
        log = tr.run(steps, log_every=5)
        runs[use_graph] = (tr.params(), log, tr.adam_state()["t"])
    for k in params:
        np.testing.assert_array_equal(runs[True][0][k], runs[False][0][k])
    assert runs[True][1] == runs[False][1] and runs[True][2] == steps
    # the same steps on the host: oracle on the mirror's batches
    p, state = params, adam_init(params)
    for step in range(steps):
        tokens, y = philox.linear_regression_tasks(3, step, batch, dtype=np.float64)
        loss, _, grads = loss_and_grads(p, tokens, y, cfg)
        p, state, _ = adam_update(p, grads, state, adam_cfg)
        if (step + 1) % 5 == 0:
            assert_close_to_oracle(runs[True][1][step // 5][1], loss, np.float64, name=f"loss {step}")
    tol = TOL["device_libm_trajectory"]  # labels differ from the mirror in the last bits
    for k in p:
        np.testing.assert_allclose(runs[True][0][k], p[k], rtol=tol, atol=tol * np.abs(p[k]).max())
