"""numba-cpu's GPT-2 model (kernels/numba/gpt2.py, gpt2_host.py) against the oracle refimpl/gpt2.py
on the same inputs: predictions, every parameter gradient and the input gradient under a random
upstream gradient, the loss, ten Adam steps, bit-for-bit determinism, NaN-poisoned buffers, and
the errors for bad inputs. Shapes are all different and T < 2n, so some positions go unused."""
import numba
import numpy as np
import pytest

from numba import njit
from numba.core.registry import CPUDispatcher as Dispatcher

from kernels import get_backend
from kernels.numba import gpt2 as numba_gpt2
from kernels.numba import gpt2_host
from refimpl import gpt2, layers
from refimpl.config import AdamConfig
from tests.conftest import RTOL_FLOAT64, assert_close_to_oracle

CFG = gpt2.GPT2Config(input_dim=3, num_pairs=4, embed_dim=8, num_layers=2, num_heads=2)
B, T = 3, 6  # T = 6 of the 2n = 8 positions: pos rows 6 and 7 get gradient 0
REDUCTION = B * T * CFG.mlp_widening * CFG.embed_dim  # float32: bound on the longest chain of sums
DTYPES = [np.float64, np.float32]


@pytest.fixture(scope="module")
def cpu():
    return get_backend("numba-cpu")


def _inputs(rng, dtype=np.float64, batch=B):
    """Perturbed initial parameters (LayerNorm scales and offsets, biases all non-trivial), tokens
    and targets; the oracle's float64 copies and the backend's in `dtype`."""
    params = gpt2.init_params(CFG, rng)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    tokens = rng.standard_normal((batch, T, CFG.input_dim))
    y = rng.standard_normal((batch, T // 2))
    if dtype == np.float32:  # the oracle sees the float32 numbers in float64
        params = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
        tokens, y = (a.astype(np.float32).astype(np.float64) for a in (tokens, y))
    cast = {k: v.astype(dtype) for k, v in params.items()}
    return (params, tokens, y), (cast, tokens.astype(dtype), y.astype(dtype))


def _assert_grads_close(got, want, dtype):
    """Every gradient; b_k's is zero up to rounding (a key bias adds one constant to a query's scores,
    which the softmax removes), so it is held to the scale of W_k's gradient."""
    assert set(got) == set(want) == set(gpt2.param_shapes(CFG))
    for name, g in want.items():
        assert got[name].dtype == dtype and got[name].shape == g.shape, name
        if name.endswith("attn.b_k"):
            scale = np.abs(want[name.replace("b_k", "W_k")]).max()
            assert np.abs(got[name]).max() <= 1e3 * np.finfo(dtype).eps * scale, name
            continue
        assert_close_to_oracle(got[name], g, dtype, REDUCTION, name=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_predictions_every_gradient_and_the_input_gradient_match_the_oracle(cpu, rng, dtype):
    (p64, tok64, _), (p, tok, _) = _inputs(rng, dtype)
    pred, cache = cpu.model_forward(p, tok, CFG)
    want_pred, want_cache = gpt2.gpt2_forward(p64, tok64, CFG)
    assert pred.dtype == dtype and pred.shape == (B, T // 2)
    assert_close_to_oracle(pred, want_pred, dtype, REDUCTION, name="pred")
    dpred = rng.standard_normal(pred.shape)  # a random upstream gradient through (pred * dpred).sum()
    dtok, grads = cpu.model_backward(dpred.astype(dtype), cache)
    want_dtok, want_grads = gpt2.gpt2_backward(dpred, want_cache)
    assert dtok.dtype == dtype
    assert_close_to_oracle(dtok, want_dtok, dtype, REDUCTION, name="dtokens")
    _assert_grads_close(grads, gpt2.full_pos_grad(want_grads, CFG), dtype)
    assert np.all(grads["pos"][T:] == 0)
    assert cpu.model_backward(dpred.astype(dtype), cache, input_grad=False)[0] is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_and_grads_match_the_oracle(cpu, rng, dtype):
    (p64, tok64, y64), (p, tok, y) = _inputs(rng, dtype)
    loss, per_readout, grads = cpu.loss_and_grads(p, tok, y, CFG)
    want_loss, want_per, want_grads = gpt2.loss_and_grads(p64, tok64, y64, CFG)
    assert isinstance(loss, float) and per_readout.shape == want_per.shape == (1,)
    assert_close_to_oracle(np.array([loss]), np.array([want_loss]), dtype, REDUCTION, name="loss")
    assert per_readout[0] == loss
    _assert_grads_close(grads, want_grads, dtype)
    np.testing.assert_array_equal(cpu.readouts(p, tok, CFG), cpu.model_forward(p, tok, CFG)[0])


@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_ten_adam_steps_follow_the_oracle(cpu, rng, grad_clip):
    """float64: the losses and the final parameters to 1e-10 (relative to the parameters' scale:
    the b_k parameters move by Adam steps of their rounding-noise gradients, ~lr * 1e-9 each)."""
    oracle = get_backend("numpy")
    adam = AdamConfig(lr=1e-2, grad_clip=grad_clip)
    (params, tokens, y), _ = _inputs(rng)
    runs = {}
    for be in (oracle, cpu):
        p, state, losses, norms = dict(params), be.adam_init(params), [], []
        for step in range(10):
            tok = tokens + 0.1 * step  # a different batch every step
            p, state, loss = be.train_step(p, state, tok, y, CFG, adam)
            losses.append(loss)
            norms.append(state["grad_norm"])
        runs[be.name] = (p, np.array(losses), np.array(norms), state)
    (p_ref, l_ref, n_ref, s_ref), (p_got, l_got, n_got, s_got) = runs["numpy"], runs["numba-cpu"]
    if grad_clip:
        assert np.all(n_ref > grad_clip)  # clipping applied at every step
    np.testing.assert_allclose(l_got, l_ref, rtol=RTOL_FLOAT64)
    np.testing.assert_allclose(n_got, n_ref, rtol=RTOL_FLOAT64)
    assert s_got["t"] == s_ref["t"] == 10
    scale = max(np.abs(v).max() for v in p_ref.values())
    for k in p_ref:
        np.testing.assert_allclose(p_got[k], p_ref[k], rtol=RTOL_FLOAT64, atol=RTOL_FLOAT64 * scale, err_msg=k)


def test_same_bits_every_run_and_for_any_thread_count(cpu, rng):
    _, (p, tok, y) = _inputs(rng, batch=11)  # 8 chunks of 1 or 2 prompts
    runs = []
    for threads in (numba.config.NUMBA_NUM_THREADS, 1, numba.config.NUMBA_NUM_THREADS):
        old = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            loss, _, grads = cpu.loss_and_grads(p, tok, y, CFG)
        finally:
            numba.set_num_threads(old)
        runs.append((loss, np.concatenate([g.ravel() for g in grads.values()])))
    for loss, g in runs[1:]:
        assert loss == runs[0][0]
        np.testing.assert_array_equal(g, runs[0][1])


def test_no_kernel_reads_a_buffer_entry_it_did_not_write(cpu, rng):
    _, (p, tok, y) = _inputs(rng, batch=11)
    dpred = rng.standard_normal((11, T // 2))

    def run():
        pred, cache = cpu.model_forward(p, tok, CFG)
        return pred, cpu.model_backward(dpred, cache), cpu.loss_and_grads(p, tok, y, CFG)

    (pred, (dtok, g), (loss, _, grads)) = run()
    cpu.fill_buffers(CFG, T, 11, np.float64, np.nan)  # the training and the forward-only buffers
    (pred2, (dtok2, g2), (loss2, _, grads2)) = run()
    assert loss2 == loss
    np.testing.assert_array_equal(pred2, pred)
    np.testing.assert_array_equal(dtok2, dtok)
    for k in grads:
        np.testing.assert_array_equal(grads2[k], grads[k], err_msg=k)
        np.testing.assert_array_equal(g2[k], g[k], err_msg=k)


def test_bad_inputs_are_refused_naming_the_argument(cpu, rng):
    _, (p, tok, y) = _inputs(rng)
    with pytest.raises(ValueError, match="^tokens: expected token width"):
        cpu.model_forward(p, tok[..., :2], CFG)
    with pytest.raises(ValueError, match="^tokens: expected an even number of tokens"):
        cpu.loss_and_grads(p, tok[:, :5], y, CFG)
    with pytest.raises(ValueError, match="^tokens: expected an even number of tokens"):
        cpu.train_step(p, cpu.adam_init(p), np.concatenate([tok, tok], axis=1), y, CFG, AdamConfig())
    with pytest.raises(ValueError, match="^y: "):
        cpu.loss_and_grads(p, tok, y[:, :2], CFG)
    with pytest.raises(ValueError, match="^dpred: "):
        cpu.model_backward(np.zeros((B, T)), cpu.model_forward(p, tok, CFG)[1])
    with pytest.raises(ValueError, match="^cfg: "):
        cpu.readouts_and_query_gradient(p, tok, CFG)


def test_initial_parameters_are_the_oracles_and_every_kernel_is_announced(cpu):
    want = gpt2.init_params(CFG, np.random.default_rng(3), np.float32)
    got = cpu.init_params(CFG, np.random.default_rng(3), np.float32)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    entries = {f for f in vars(numba_gpt2).values() if isinstance(f, Dispatcher) and f.targetoptions.get("nogil")}
    assert entries and entries <= set(gpt2_host.kernels(CFG))  # every kernel the host calls is announced
    names = {f"{k.py_func.__module__.rsplit('.', 1)[-1]}.{k.py_func.__name__}" for k in gpt2_host.kernels(CFG)}
    assert set(cpu.kernels_to_compile(CFG)) <= names | {"cpu.sum_squares", "adam.adam_kernel"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_and_its_derivative_match_the_oracle_over_the_whole_float_range(dtype):
    """gelu_fwd builds e^2u from a polynomial and the exponent bits, clamped where tanh is +-1 (1e15:
    in float32 its cube overflows to inf, its square does not)."""
    x = np.concatenate([[-1e15, -1e3, -40.0, -9.0, -1e-9, 0.0, 1e-30, 1e-9, 9.0, 40.0, 1e3, 1e15],
                        np.linspace(-12, 12, 2001)]).astype(dtype)[None, :]  # (1, F)
    cst = gpt2_host.constants(CFG, dtype)
    bits = np.empty(x.shape[1], np.int32 if dtype == np.float32 else np.int64)
    g, t = np.empty_like(x), np.empty_like(x)
    numba_gpt2.gelu_fwd(x, g, t, bits, bits.view(dtype), cst)
    want, cache = layers.gelu_forward(x.astype(np.float64))
    tol = 1e-14 if dtype == np.float64 else 2e-6  # relative to max(1, |value|)
    assert np.all(np.isfinite(g)) and g[0, 5] == 0 and g[0, 0] == 0 and g[0, 11] == x[0, 11]
    np.testing.assert_allclose(g, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(t, np.tanh(layers.GELU_C * (x + 0.044715 * x.astype(np.float64) ** 3)),
                               rtol=tol, atol=tol)
    dg = np.linspace(-1, 1, x.size).astype(dtype)[None, :]
    numba_gpt2.gelu_bwd(dg, x, t, cst)
    np.testing.assert_allclose(dg, layers.gelu_backward(np.linspace(-1, 1, x.size)[None, :], cache)[0],
                               rtol=tol, atol=tol)


def test_float32_building_blocks_never_widen_to_float64():
    """float32 stays float32: no `fpext` (float -> double) in the compiled code of the blocks that mix
    counts or constants into their arithmetic (as tests/kernels/test_numba_float32_purity.py)."""
    f = np.zeros((4, 8), np.float32)
    v8, v4, cst = np.ones(8, np.float32), np.zeros(4, np.float32), gpt2_host.constants(CFG, np.float32)
    qkv, o, p = np.zeros((6, 24), np.float32), np.zeros((6, 8), np.float32), np.zeros((6, 6), np.float32)
    bits, scratch = np.zeros(8, np.int32), np.zeros((7, 6, 4), np.float32)
    cases = {numba_gpt2.ln_fwd: (f, v8, v8, f.copy(), f.copy(), v4, cst),
             numba_gpt2.ln_bwd: (f, f.copy(), v4, v8, f.copy(), 1, v8.copy(), v8.copy(), cst),
             numba_gpt2.gelu_fwd: (f, f.copy(), f.copy(), bits, bits.view(np.float32), cst),
             numba_gpt2.gelu_bwd: (f, f.copy(), f.copy(), cst),
             numba_gpt2.head_fwd: (qkv, p, o, 0, 4, scratch, cst),
             numba_gpt2.head_bwd: (o, qkv, p, qkv.copy(), 0, 4, scratch, v8[:6].copy(), cst)}
    for fn, args in cases.items():
        fresh = njit(fn.py_func, error_model="numpy", fastmath=fn.targetoptions.get("fastmath", False))
        fresh(*args)  # an uncached copy: the compiled code of a cached one cannot be inspected
        widened = [line.strip() for ir in fresh.inspect_llvm().values() for line in ir.splitlines()
                   if "fpext float" in line]
        assert widened == [], f"{fn.py_func.__name__}: float32 widened to float64: {widened[:3]}"
