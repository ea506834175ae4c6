"""The kernels' own per-task arithmetic (kernels/cupy/cuda/*.cu built with g++ for one lane, see
tests/kernels/cuda_host/harness.cpp) against the oracle on the same inputs; the Philox device source
against the NumPy mirror; the C++ workspace layouts against kernels/cupy/build.py's mirrors.
No GPU needed: this checks the math of the kernels, not their parallel schedule."""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import assert_close_to_oracle, model_configs, tolerance
from kernels.cupy import build as cb
from kernels.cupy import philox
from refimpl.block import block_backward, block_forward
from refimpl.config import AdamConfig, ModelConfig
from refimpl.loss import loss_and_grads
from refimpl.optim import adam_update
from refimpl.params import init_params

HERE = os.path.dirname(os.path.abspath(__file__))
P_DBL = ctypes.POINTER(ctypes.c_double)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: the CPU build of the kernel sources needs a C++ compiler")
    out = str(tmp_path_factory.mktemp("cuda_host") / "harness.so")
    cmd = [cxx, "-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", f"-I{cb.CUDA_DIR}",
           os.path.join(HERE, "cuda_host", "harness.cpp"), "-o", out]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"g++ build of the kernel sources failed:\n{res.stderr}"
    return ctypes.CDLL(out)


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def i32(values):
    return np.ascontiguousarray(values, dtype=np.int32)


def f64(values):
    return np.ascontiguousarray(values, dtype=np.float64)


def model_dims_arrays(d):
    ints = i32([d.T, d.D, d.H, d.K, d.S, d.L, d.tied, d.first_softmax, d.softmax, d.causal, d.y_update])
    return ints, f64([d.lam, d.clip])


def block_dims_arrays(b):
    ints = i32([b.T, b.D, b.H, b.K, b.S, b.F, b.softmax, b.causal, b.y_update, b.ln1, b.mlp, b.ln2])
    return ints, f64([b.lam, b.clip])


def perturbed_params(cfg, rng, dtype, scale=0.3):
    """Init plus noise: weights of order one, so that every path carries signal."""
    params = init_params(cfg, rng, np.float64)
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(dtype) for k, v in params.items()}


# linear last layers (model_step.cu's rank-one query row): one head with H K = D, several heads with
# H K != D, include_query off and on, tied and deep, y_update, clipping, dampening; softmax last
# layers (the query row of attention_forward): every layer softmax, or one layer made softmax by
# first_layer_softmax
MODEL_CONFIGS = {**model_configs("fig2", "tied3_yupdate_damped", "deep3_clip_2heads", "deep3_2head_clip_damp",
                                 "tied3_yupdate_query", "deep2_3head_query_yupdate_clip", "first_softmax",
                                 "first_softmax_query",
                                 "softmax_causal_query", "softmax_2heads_causal"),
                 "heads3_query_clip_damped_1layer": ModelConfig(token_dim=5, num_heads=3, key_size=2,
                                                                include_query=True, token_clip=0.9,
                                                                dampening=0.7),
                 "first_softmax_1layer": ModelConfig(first_layer_softmax=True, num_heads=2, key_size=4)}


# ----------------------------------------------------------------------------------------------
def test_philox_device_source_gives_the_host_mirror_stream(lib, rng):
    counters = rng.integers(0, 2**32, size=(64, 4), dtype=np.uint64).astype(np.uint32)
    key = rng.integers(0, 2**32, size=2, dtype=np.uint64).astype(np.uint32)
    out = np.zeros_like(counters)
    lib.philox_blocks(64, ptr(counters), ctypes.c_uint32(int(key[0])), ctypes.c_uint32(int(key[1])),
                      ptr(out))
    np.testing.assert_array_equal(out, philox.philox(counters, key))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_task_draw_device_source_matches_host_mirror(lib, dtype):
    seed, step, B, N, d, r, s = 2**40 + 12345, 7, 37, 9, 6, 1.5, 2.0  # d even and odd N
    tok = np.full((B, N + 1, d + 1), np.nan, dtype)
    tgt = np.full(B, np.nan, dtype)
    fn = lib.draw_tasks_f64 if dtype == np.float64 else lib.draw_tasks_f32
    fn(ctypes.c_uint64(seed), ctypes.c_uint32(step), B, N, d, ctypes.c_double(r), ctypes.c_double(s),
       ptr(tok), ptr(tgt))
    ref_tok, ref_tgt = philox.linear_regression_tasks(seed, step, B, N, d, r, s, dtype=dtype)
    # inputs are exact arithmetic on the same bits; labels go through libm's log/cos/sin
    np.testing.assert_array_equal(tok[..., :-1], ref_tok[..., :-1])
    np.testing.assert_allclose(tok[..., -1], ref_tok[..., -1], **tolerance("libm_labels", dtype))
    np.testing.assert_allclose(tgt, ref_tgt, **tolerance("libm_labels", dtype))


def test_workspace_layouts_match_python_mirrors(lib):
    for name, cfg in MODEL_CONFIGS.items():
        d = cb.model_dims(cfg, 11)
        ints, _ = model_dims_arrays(d)
        assert lib.model_workspace_reals(ptr(ints)) == d.step_workspace_reals, name
        # the rank-one buffers follow the layout numba-cuda's warp kernel shares
        assert lib.model_workspace_query_row_offset(ptr(ints)) == d.workspace_reals, name
        linear_last = cfg.layer_attention(cfg.num_layers - 1) == "linear"
        assert d.last_layer_rank_one == linear_last, name
        assert d.step_workspace_reals - d.workspace_reals == (4 * d.H * d.D if linear_last else 0), name
    for cfg in (ModelConfig(layernorm=True, mlp=True, num_heads=2, key_size=3),
                ModelConfig(num_layers=2, layernorm=True), ModelConfig(mlp=True, mlp_widening=3)):
        for layer in range(cfg.num_layers):
            b = cb.block_dims(cfg, layer, 9)
            ints, _ = block_dims_arrays(b)
            assert lib.block_workspace_reals(ptr(ints)) == b.workspace_reals
            assert lib.block_num_params(ptr(ints)) == b.num_params


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_model_step_task_math_matches_oracle_loss_and_grads(lib, rng, name, dtype):
    cfg = MODEL_CONFIGS[name]
    B, N = 13, 8  # T = 9 tokens, width D = token_dim: unequal to T, K
    T, D = N + 1, cfg.token_dim
    params = perturbed_params(cfg, rng, dtype)
    tokens = rng.uniform(-1, 1, size=(B, T, D)).astype(dtype)
    targets = rng.standard_normal(B).astype(dtype)
    loss, per_layer, grads = loss_and_grads(params, tokens, targets, cfg)
    d = cb.model_dims(cfg, T)
    ints, fl = model_dims_arrays(d)
    packed = np.ascontiguousarray(cb.pack(params, cfg))
    g = np.full(d.num_params, np.nan, dtype)
    stats = np.full(d.L, np.nan, dtype)
    fn = lib.model_loss_grads_f64 if dtype == np.float64 else lib.model_loss_grads_f32
    fn(ptr(ints), ptr(fl), B, ptr(packed), ptr(tokens), ptr(targets), ptr(g), ptr(stats))
    red = B * T * cfg.num_layers * max(D, cfg.num_heads * cfg.key_size)
    assert_close_to_oracle(stats, per_layer, dtype, red, "per-layer losses")
    for k, v in cb.unpack(g, cfg).items():
        assert_close_to_oracle(v, grads[k], dtype, red, f"grads[{k}]")


WORKSPACE_FIELDS = ("Xs", "Xc", "Q", "Kt", "V", "P", "O", "U", "dX", "dU", "dO", "dP", "dQ", "dK", "dV",
                    "dXin", "gacc", "readout", "target", "qu", "qz", "qw", "qg", "total")


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_model_step_task_reads_only_what_it_wrote_and_rank_one_forms_no_keys(lib, rng, name):
    """One task on a workspace of NaNs (the accumulator zeroed, tokens and target in place): the
    gradients still equal the oracle's, so nothing unwritten is read. With one linear layer the
    rank-one form fills its u, z, w, g and never touches the keys, values or their gradients;
    with a softmax last layer those are formed and there are no rank-one buffers."""
    cfg = MODEL_CONFIGS[name]
    T, D = 9, cfg.token_dim
    params = perturbed_params(cfg, rng, np.float64)
    tokens = rng.uniform(-1, 1, size=(1, T, D))
    target = rng.standard_normal(1)
    d = cb.model_dims(cfg, T)
    ints, fl = model_dims_arrays(d)
    offs = np.zeros(len(WORKSPACE_FIELDS), np.int32)
    lib.model_workspace_offsets(ptr(ints), ptr(offs))
    o = dict(zip(WORKSPACE_FIELDS, offs.tolist()))
    ws = np.full(o["total"], np.nan)
    ws[o["Xs"]:o["Xs"] + T * D] = tokens.ravel()
    ws[o["target"]] = target[0]
    ws[o["gacc"]:o["readout"]] = 0.0
    packed = np.ascontiguousarray(cb.pack(params, cfg))
    lib.model_task_step_f64(ptr(ints), ptr(fl), ptr(packed), ptr(ws))
    _, per_layer, grads = loss_and_grads(params, tokens, target, cfg)
    g = ws[o["gacc"]:o["gacc"] + d.num_params]
    assert_close_to_oracle(ws[o["gacc"] + d.num_params:o["readout"]], per_layer, np.float64,
                           name="per-layer losses")
    for k, v in cb.unpack(g, cfg).items():
        assert_close_to_oracle(v, grads[k], np.float64, name=f"grads[{k}]")
    keys = np.concatenate([ws[o[b]:o[b] + d.S * d.H * d.K] for b in ("Kt", "V", "dK", "dV")])
    rank_one = ws[o["qu"]:o["total"]]
    if d.last_layer_rank_one:
        assert rank_one.size == 4 * d.H * D and np.all(np.isfinite(rank_one))
        if d.L == 1:
            assert np.all(np.isnan(keys)), "the rank-one last layer formed keys or values"
    else:
        assert rank_one.size == 0 and np.all(np.isfinite(keys))


def oracle_block(cfg, layer, params, X, dXout):
    """The oracle's block pair (refimpl.block) for one layer: (output, input gradient, gradients
    named within the block, e.g. "attn.W_q")."""
    out, cache = block_forward(X, params, cfg, layer)
    dX, grads = block_backward(dXout, cache)
    prefix = f"layer{cfg.param_layer(layer)}."
    return out, dX, {name[len(prefix):]: g for name, g in grads.items()}


BLOCK_CONFIGS = model_configs("softmax_ln_mlp", "causal_ln_mlp_clip_query", "linear_mlp_no_ln_yupdate",
                              "deep_public_ln_layer1", renamed={"softmax_ln_mlp": "softmax_ln_mlp_1layer"})


@pytest.mark.parametrize("name", list(BLOCK_CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_task_math_matches_oracle_layer(lib, rng, name, dtype):
    cfg = BLOCK_CONFIGS[name]
    layer = cfg.num_layers - 1
    B, T, D = 6, 9, cfg.model_dim
    params = perturbed_params(cfg, rng, dtype)
    X = rng.uniform(-1, 1, size=(B, T, D)).astype(dtype)
    dXout = rng.standard_normal((B, T, D)).astype(dtype)  # a random upstream gradient
    x_ref, dx_ref, g_ref = oracle_block(cfg, layer, params, X, dXout)
    b = cb.block_dims(cfg, layer, T)
    ints, fl = block_dims_arrays(b)
    prefix = f"layer{cfg.param_layer(layer)}."
    names = [n for n in params if n.startswith(prefix)]
    W = np.ascontiguousarray(np.concatenate([params[n].ravel() for n in names]))
    assert [n[len(prefix):] for n in names] == [n for n, _ in b.param_layout()]
    Xout = np.full_like(X, np.nan)
    dX = np.full_like(X, np.nan)
    g = np.full(b.num_params, np.nan, dtype)
    fn = lib.block_f64 if dtype == np.float64 else lib.block_f32
    fn(ptr(ints), ptr(fl), B, ptr(W), ptr(X), ptr(dXout), ptr(Xout), ptr(dX), ptr(g))
    red = B * T * b.F
    assert_close_to_oracle(Xout, x_ref, dtype, red, "block output")
    assert_close_to_oracle(dX, dx_ref, dtype, red, "block input gradient")
    o = 0
    for n, size in b.param_layout():
        assert_close_to_oracle(g[o:o + size].reshape(g_ref[n].shape), g_ref[n], dtype, red, f"grads[{n}]")
        o += size


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_adam_entry_matches_oracle_over_steps(lib, rng, dtype, grad_clip):
    cfg = AdamConfig(grad_clip=grad_clip)
    names = {"a": (3, 5), "b": (7,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in names.items()}
    state = {"t": 0, "m": {k: np.zeros_like(v) for k, v in params.items()},
             "v": {k: np.zeros_like(v) for k, v in params.items()}}
    p = np.concatenate([v.ravel() for v in params.values()])
    m, v = np.zeros_like(p), np.zeros_like(p)
    c = f64([cfg.lr, cfg.b1, cfg.b2, cfg.eps, cfg.grad_clip])
    fn = lib.adam_f64 if dtype == np.float64 else lib.adam_f32
    for t in range(1, 11):  # 10 steps with fresh gradients
        grads = {k: rng.standard_normal(s).astype(dtype) for k, s in names.items()}
        params, state, _ = adam_update(params, grads, state, cfg)
        g = np.concatenate([x.ravel() for x in grads.values()])
        fn(p.size, ptr(p), ptr(m), ptr(v), ptr(g), t, ptr(c))
    ref = np.concatenate([x.ravel() for x in params.values()])
    assert_close_to_oracle(p, ref, dtype, 10, "params after 10 Adam steps")
