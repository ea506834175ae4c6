"""Shared test fixtures: one random generator per test, one backend fixture, one tolerance table
(SPEC 7) and one table of model configs."""
import os
import zlib

import numpy as np
import pytest

from refimpl.config import ModelConfig

# float64: rtol 1e-10 against the oracle (SPEC 7). float32: derived from its epsilon and the size
# of the longest reduction that produced the value (error grows ~ sqrt(n) for random-sign sums;
# the factor 8 covers the few chained reductions of a layer).
RTOL_FLOAT64 = 1e-10

# Every other tolerance of the suite, named for the comparison it serves: the keyword arguments
# passed to np.testing.assert_allclose (or read one by one for a scalar bound). A name ending in
# _float64 / _float32 is the dtype's entry of that comparison (tolerance(name, dtype) picks it).
TOL = {
    # float64, the same arithmetic with the operations in another order (a sum of O(10) terms,
    # a softmax normalisation, tied vs. copied weights): a few ulps
    "float64_reordered": dict(rtol=1e-14),
    "float64_reordered_near_zero": dict(rtol=1e-14, atol=1e-14),
    # float64, undoing the W_Q -> c W_Q, W_P -> W_P / c ambiguity gives GD's layer back (m = c, its
    # products W_KQ and W_PV): exact algebra up to rounding of entries of order one
    "rescaling_undone_float64": dict(atol=1e-14),
    # SPEC 5: the constructed transformer's read-outs equal one GD step; chains of O(100) products
    "construction_vs_gd": dict(rtol=0, atol=1e-12),
    # the batched oracle against a per-task Python loop of the same formula
    "oracle_vs_per_task_loop": dict(rtol=1e-12, atol=1e-12),
    # GD++ read-outs against the explicit per-step formula, and the sensitivity map against W1
    "gdpp_vs_explicit": dict(rtol=1e-12, atol=1e-13),
    "sensitivity_vs_weights": dict(rtol=1e-12, atol=1e-14),
    # a reported scalar recomputed from its inputs (fit curve end, exact quadratic law)
    "recomputed_scalar": dict(rtol=1e-12),
    # Adam against the plain-Python loop of SPEC 4 (moments divide by 1 - b^t: a little more)
    "adam_vs_python_loop": dict(rtol=1e-13, atol=1e-15),
    "adam_step_vs_formula": dict(rtol=1e-12),
    # central finite differences with h = 1e-6: truncation O(h^2), cancellation O(eps / h)
    "finite_difference": dict(rtol=1e-7),
    # cosine of a vector with itself: 1e-8 is added to the norms (SPEC 5)
    "cosine_of_parallel": dict(atol=1e-7),
    # task draws: inputs rescaled after the draw vs. drawn at that range; unit-norm inputs;
    # labels recomputed from the least-squares solve of the context
    "rescaled_draw": dict(rtol=1e-12, atol=1e-15),
    "unit_norm": dict(rtol=1e-12),
    "label_from_context_solve": dict(atol=1e-10),
    "label_from_weights": dict(rtol=1e-9, atol=1e-9),
    # labels through libm's log/cos/sin (host C or device) against the NumPy mirror
    "libm_labels_float64": dict(rtol=1e-13, atol=1e-14),
    "libm_labels_float32": dict(rtol=1e-6, atol=1e-6),
    "device_libm_labels_float64": dict(rtol=1e-12, atol=1e-12),
    "device_libm_labels_float32": dict(rtol=1e-6, atol=1e-6),
    # float64 runs of a backend against the oracle's (training losses and weights, or Figure 1's
    # 12 repeated GD layers): each step compounds the per-step 1e-10 (RTOL_FLOAT64); the weights'
    # atol is training_weights_atol_scale x max|weights|
    "training_trajectory": dict(rtol=1e-9),
    "training_weights_atol_scale": 1e-12,
    # two float64 runs of the GD++ fit (fast and reference path): same batches, same Adam
    "gdpp_fit_fast_vs_reference": dict(rtol=1e-10),
    # a device training run against the host oracle on the mirror's batches: the labels differ in
    # the last bits (device libm), compounded over the steps; rtol, and atol as a factor x max|p|
    "device_libm_trajectory": 1e-9,
    # an algorithm of SPEC 4.4 by its recursion against its closed form from one eigendecomposition
    # (23 chained d x d products, or 60 GD steps, on prompts with labels of order 5)
    "recursion_vs_closed_form": dict(rtol=1e-10, atol=1e-10),
    # a converged iteration (Newton, GD) or a probe against numpy.linalg.lstsq: the solve's rounding
    # amplified by the condition number of the prefix
    "solve_vs_lstsq": dict(rtol=1e-8, atol=1e-8),
}


def tolerance(name, dtype):
    """The dtype's entry of a dtype-dependent comparison of TOL."""
    return TOL[f"{name}_{np.dtype(dtype).name}"]


def backend_tolerance(dtype, reduction_size=1):
    """(rtol, atol) for comparing a backend's result with the float64 oracle on the same inputs."""
    if np.dtype(dtype) == np.float64:
        return RTOL_FLOAT64, RTOL_FLOAT64
    eps = float(np.finfo(np.float32).eps)
    tol = 8.0 * eps * np.sqrt(max(int(reduction_size), 1)) * 10
    return tol, tol


def assert_close_to_oracle(actual, expected, dtype, reduction_size=1, name="value"):
    """Compare relative to the oracle tensor's scale: |a - e| <= atol * max|e| + rtol * |e|."""
    rtol, atol = backend_tolerance(dtype, reduction_size)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite entries (unwritten output?)"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    err = np.abs(actual - expected)
    bound = atol * scale + rtol * np.abs(expected)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    assert np.all(err <= bound), (f"{name}: max abs err {err.max():.3e} at {worst} exceeds "
                                  f"rtol {rtol:.1e} / atol {atol:.1e} x scale {scale:.3e}")


# ----------------------------------------------------------------------------------------------
# the numba-cpu lane kernels (kernels/numba/lsa.py, query_block.py): shared inputs and checks
def lane_kernel_inputs(cfg, T, B, rng, dtype):
    """(params, tokens (B, T, D), y (B,)) in dtype: the oracle's initialisation, normal tokens."""
    from refimpl.params import init_params, params_astype
    params = params_astype(init_params(cfg, rng), dtype)
    tokens = rng.standard_normal((B, T, cfg.token_dim)).astype(dtype)  # (B, T, D)
    y = rng.standard_normal(B).astype(dtype)  # (B,)
    return params, tokens, y


def assert_loss_and_grads_match_oracle(loss_and_grads, params, tok, y, cfg, dtype, reduction_size):
    """A kernel's (loss, per-layer losses, grads) against refimpl.loss.loss_and_grads in float64:
    the same names, shapes and dtype, every value within the backend tolerance."""
    from refimpl import loss as oracle_loss
    from refimpl.params import params_astype
    loss, per_layer, grads = loss_and_grads(params, tok, y, cfg)
    loss_o, per_layer_o, grads_o = oracle_loss.loss_and_grads(params_astype(params, np.float64),
                                                             tok.astype(np.float64), y.astype(np.float64), cfg)
    assert np.asarray(loss).dtype == dtype and per_layer.dtype == dtype
    assert_close_to_oracle(np.asarray(loss), np.asarray(loss_o), dtype, reduction_size, "loss")
    assert_close_to_oracle(per_layer, per_layer_o, dtype, reduction_size, "per-layer losses")
    assert sorted(grads) == sorted(grads_o)
    for k in grads_o:
        assert grads[k].dtype == dtype and grads[k].shape == grads_o[k].shape, k
        assert_close_to_oracle(grads[k], grads_o[k], dtype, reduction_size, f"grads[{k}]")


def assert_same_bits_for_any_thread_count(loss_and_grads, params, tok, y, cfg):
    """loss_and_grads on one thread, on Numba's default count and again: the same bits."""
    import numba
    old = numba.get_num_threads()
    outs = []
    try:
        for n in sorted({1, old}):
            numba.set_num_threads(n)
            outs.append(loss_and_grads(params, tok, y, cfg))
    finally:
        numba.set_num_threads(old)
    again = loss_and_grads(params, tok, y, cfg)
    for out in outs[1:] + [again]:
        assert out[0] == outs[0][0]
        for k in out[2]:
            assert np.array_equal(out[2][k], outs[0][2][k]), k


@pytest.fixture
def rng(request):
    """A generator seeded from the test's file name and name: reproducible, different per test, and
    the same when a test file moves between folders of tests/ (the seed string is the id the test
    had when every file sat in tests/ itself, "tests/FILE.py::NAME[PARAMS]")."""
    seed = zlib.crc32(f"tests/{request.node.path.name}::{request.node.name}".encode())
    return np.random.default_rng(seed)


# The backends compared with the oracle on the CPU machines. numba-cuda runs when a GPU is present
# or under NUMBA_ENABLE_CUDASIM=1 (tests/kernels/test_numba_cuda_sim.py runs the suite that way in a
# subprocess, where numba-cpu is skipped: it is checked in the main process).
ORACLE_BACKENDS = ["numba-cpu", "numba-cuda"]
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@pytest.fixture(params=ORACLE_BACKENDS)
def backend_name(request):
    """Which backend `backend` is; a test module overrides it (e.g. with "cupy") to test one only."""
    return request.param


@pytest.fixture
def backend(backend_name):
    """The backend module, or a skip naming why it cannot run here (no GPU, no cupy, simulator)."""
    from kernels import availability, get_backend  # here: the oracle's tests need no kernels
    ok, reason = availability(backend_name)
    if not ok:
        pytest.skip(f"{backend_name}: {reason}")
    if backend_name == "numba-cpu" and SIMULATED:
        pytest.skip("numba-cpu is checked in the main process, not under the CUDA simulator")
    return get_backend(backend_name)


# One table of the test models: name -> ModelConfig keyword arguments. Test files pick entries by
# name (model_configs); a name appears once, however many files test that model. Together they
# reach every option the experiments use; sizes are small and uneven (T != D != H*K).
MODELS = {
    # Figure 2's one-layer LSA at its defaults, and its deeper / tied / clipped variants
    "fig2": dict(),
    "paper_1layer": dict(token_dim=11, init_scale=1.0),
    "tied2": dict(num_layers=2, weight_tied=True),
    "deep5_clip": dict(num_layers=5, token_clip=0.5),
    "tied3_yupdate_damped": dict(num_layers=3, weight_tied=True, y_update=True, dampening=0.75),
    "deep3_clip_2heads": dict(num_layers=3, num_heads=2, key_size=5, token_clip=0.4),
    "deep3_2head_clip_damp": dict(token_dim=5, num_layers=3, num_heads=2, key_size=3, token_clip=0.6,
                                  dampening=0.8, init_scale=3.0),
    "tied3_yupdate_query": dict(token_dim=4, num_layers=3, weight_tied=True, key_size=6,
                                y_update=True, include_query=True, init_scale=2.0),
    "deep2_3head_wide_key_clip": dict(token_dim=6, num_layers=2, num_heads=3, key_size=8,
                                      token_clip=0.9, init_scale=2.0),
    "deep_lsa": dict(token_dim=4, num_layers=2, num_heads=2, key_size=3, init_scale=2.0),
    "deep2_3head_query_yupdate_clip": dict(token_dim=5, num_layers=2, num_heads=3, key_size=2,
                                           include_query=True, y_update=True, token_clip=0.9,
                                           dampening=0.7, init_scale=2.0),
    # softmax attention, alone or in the first layer only
    "softmax_2heads_causal": dict(attention="softmax", num_heads=2, key_size=6, causal=True),
    "softmax_causal_query": dict(num_layers=2, attention="softmax", causal=True,
                                 include_query=True, num_heads=3, key_size=4),
    "first_softmax": dict(num_layers=2, first_layer_softmax=True, key_size=7, token_dim=6),
    "first_softmax_query": dict(num_layers=2, first_layer_softmax=True, include_query=True),
    # LayerNorm and MLP blocks
    "softmax_ln_mlp_1layer": dict(attention="softmax", layernorm=True, mlp=True, num_heads=2,
                                  key_size=3),
    "softmax_ln_mlp_2layer": dict(attention="softmax", num_layers=2, layernorm=True, mlp=True,
                                  num_heads=2, key_size=4),
    "softmax_ln_mlp_causal": dict(token_dim=5, num_layers=2, num_heads=2, key_size=4,
                                  attention="softmax", causal=True, layernorm=True,
                                  ln_placement="pre", mlp=True, init_scale=2.0),
    "causal_ln_mlp_clip_query": dict(attention="softmax", causal=True, layernorm=True, mlp=True,
                                     token_clip=0.8, include_query=True, mlp_widening=3,
                                     token_dim=7),
    "linear_mlp_no_ln_yupdate": dict(mlp=True, y_update=True, dampening=0.6, key_size=5),
    "deep_public_ln_layer1": dict(num_layers=2, layernorm=True, attention="softmax"),
    "deep_ln_mlp": dict(token_dim=4, num_layers=3, num_heads=2, key_size=3, layernorm=True,
                        mlp=True),
    "tied_ln_mlp": dict(token_dim=4, num_layers=2, weight_tied=True, key_size=5, layernorm=True,
                        mlp=True),
    "tied_ln_mlp_clip": dict(num_layers=2, weight_tied=True, layernorm=True, mlp=True,
                             token_clip=1.0),
    "deep_pre_ln": dict(token_dim=4, num_layers=2, key_size=3, layernorm=True, ln_placement="pre"),
    "tied_softmax_ln_mlp": dict(token_dim=4, num_layers=2, weight_tied=True, num_heads=2,
                                key_size=3, attention="softmax", layernorm=True, mlp=True,
                                init_scale=2.0),
    "tied_yupdate_ln_query": dict(token_dim=4, num_layers=3, weight_tied=True, key_size=6,
                                  y_update=True, layernorm=True, include_query=True, mlp=True,
                                  init_scale=2.0),
    # front ends: embedding, input MLP, positional encodings
    "front_end": dict(embed_dim=8, input_mlp=True),
    "sine": dict(token_dim=2, num_layers=1, key_size=4, embed_dim=6, input_mlp=True),
    "front_concat_softmax0": dict(token_dim=3, embed_dim=6, input_mlp=True, pos_enc="concat",
                                  pos_enc_size=4, num_layers=2, first_layer_softmax=True,
                                  key_size=5, layernorm=True, init_scale=2.0),
    "posenc_add": dict(token_dim=4, embed_dim=5, pos_enc="add", key_size=3, init_scale=2.0),
    # larger than the fused CUDA kernels' shared memory: the unfused path
    "too_wide_for_shared_memory": dict(token_dim=11, key_size=96, num_heads=4),
}


def model_configs(*names, renamed=None):
    """{name: ModelConfig} for the names in order; renamed maps a name a test file uses (its test
    ids) to a differently named MODELS entry: model_configs("fig2", "dampened", renamed={"dampened":
    "tied3_yupdate_damped"})."""
    renamed = renamed or {}
    return {name: ModelConfig(**MODELS[renamed.get(name, name)]) for name in names}


# ----------------------------------------------------------------------------------------------
# the command line in a subprocess (tests of what a user sees: exit status, stdout, stderr)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Python starts with SIGINT ignored when its parent ignores it (a test run started in the
# background by a shell without job control); a run that a test interrupts with SIGINT first gets
# the handler a run started from a terminal has.
SIGINT_AS_IN_A_TERMINAL = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"


def cli_subprocess(*argv, cwd=None, prelude=""):
    """`python -m iclgd ARGV` from this checkout in a subprocess: a CompletedProcess (text).
    `prelude` is Python run first in that process, to inject a fault (a full disk, say)."""
    import subprocess
    import sys
    code = f"{prelude}\nimport sys\nfrom iclgd.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=cwd or ROOT, capture_output=True,
                          text=True, env=env, timeout=600)
