"""numba-cpu's front-end path (kernels/numba/front.py: the embedding and input MLP on all tokens at
once, the blocks on the task kernel) against the oracle: its GELU over the whole float range, and
the sine model's loss, every gradient, read-outs and query gradient on uneven shapes."""
import numpy as np
import pytest

from kernels.numba import cpu, front, ops
from kernels.numba.layout import build_constants
from refimpl import layers
from refimpl import loss as oracle_loss
from refimpl import model as oracle_model
from refimpl.config import ModelConfig
from refimpl.params import init_params

SINE_LIKE = ModelConfig(token_dim=2, key_size=7, embed_dim=7, input_mlp=True, mlp_widening=3, init_scale=1.5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gelu_and_its_derivative_match_the_oracle_everywhere(dtype):
    x = np.concatenate([[-1e3, -40.0, -1e-9, 0.0, 1e-9, 40.0, 1e3],
                        np.linspace(-8, 8, 1001)]).astype(dtype)
    cst = build_constants(SINE_LIKE, dtype, 1)
    g, t = np.empty_like(x), np.empty_like(x)
    front.gelu_kernel(x, g, t, cst)
    want, cache = layers.gelu_forward(x.astype(np.float64))
    tol = 1e-14 if dtype == np.float64 else 2e-6  # absolute: t from an exp is exact to ~1e-16 absolute
    assert np.all(np.isfinite(g)) and g[3] == 0 and g[0] == 0 and g[6] == 1e3 and g[-1] == pytest.approx(8.0)
    np.testing.assert_allclose(g, want, rtol=tol, atol=tol)
    dy = np.linspace(-1, 1, x.size).astype(dtype)
    out = np.empty_like(x)
    front.gelu_backward_kernel(dy, x, t, out, cst)
    np.testing.assert_allclose(out, layers.gelu_backward(dy.astype(np.float64), cache)[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_task_kernels_gelu_matches_the_oracle_over_the_range_and_keeps_non_finite_values(dtype):
    """kernels.numba.ops.gelu_fwd / gelu_bwd (the per-task MLP's; their tanh from a polynomial exp,
    2^k from k's binary digits) against refimpl.layers, computed in the same dtype: within a few eps
    of the scale of each term, over every exponent the clamp reaches and beyond, and the same
    NaN / inf / signed zero where the oracle's has them."""
    rng = np.random.default_rng(3)
    x = np.concatenate([3 * rng.standard_normal(4001), np.linspace(-60, 60, 6001), -np.logspace(-30, 30, 241),
                        np.logspace(-30, 30, 241), [0.0, -0.0, 1e-300, 1e30, -1e30]]).astype(dtype)
    cst = build_constants(SINE_LIKE, dtype, 1)
    g = np.full_like(x, 7.0)
    ops.gelu_fwd(x, 0, x.size, g, 0, cst)
    dy = rng.uniform(-1, 1, x.size).astype(dtype)
    dx = dy.copy()
    ops.gelu_bwd(dx, 0, x, 0, x.size, cst)
    with np.errstate(all="ignore"):  # x^3 overflows for |x| = 1e30 (1e13 in float32), in the oracle too
        want, cache = layers.gelu_forward(x)  # the oracle, in the same dtype
        want_dx = layers.gelu_backward(dy, cache)[0]
    ax = np.abs(x.astype(np.float64))
    eps = np.finfo(dtype).eps
    for got, ref, scale in ((g, want, np.maximum(ax, 1)), (dx, want_dx, 64 * (1 + ax ** 3))):
        fin = np.isfinite(ref)
        assert np.array_equal(got[~fin], ref[~fin], equal_nan=True)
        err = np.abs(got[fin].astype(np.float64) - ref[fin]) / scale[fin]
        assert err.max() <= 4 * eps, (dtype, err.max() / eps)
    assert g[-5] == 0 and np.signbit(g[-4]) == np.signbit(want[-4]) and g[-2] == x[-2] and g[-1] == 0
    # what the oracle refuses as input: gelu(inf) = inf, gelu(-inf) = -inf * 0 = NaN, NaN stays NaN
    odd = np.array([np.inf, -np.inf, np.nan], dtype)
    out = np.zeros_like(odd)
    ops.gelu_fwd(odd, 0, 3, out, 0, cst)
    assert out[0] == np.inf and np.isnan(out[1]) and np.isnan(out[2])
    ops.gelu_bwd(out, 0, odd, 0, 3, cst)
    assert np.isnan(out).all()


def test_the_sine_model_matches_the_oracle_in_float64():
    rng = np.random.default_rng(5)
    params = init_params(SINE_LIKE, rng)
    tokens, y = rng.standard_normal((37, 6, 2)), rng.standard_normal(37)  # B = 37, T = 6
    loss, per_layer, grads = oracle_loss.loss_and_grads(params, tokens, y, SINE_LIKE)
    got = cpu.loss_and_grads(params, tokens, y, SINE_LIKE)
    assert got[0] == pytest.approx(loss, rel=1e-12) and np.allclose(got[1], per_layer, rtol=1e-12)
    assert set(got[2]) == set(grads)
    for k in grads:
        np.testing.assert_allclose(got[2][k], grads[k], rtol=1e-10, atol=1e-13 * np.abs(grads[k]).max(), err_msg=k)
    rd, dq = cpu.readouts_and_query_gradient(params, tokens, SINE_LIKE)
    np.testing.assert_allclose(rd, oracle_model.model_forward(params, tokens, SINE_LIKE)[0], rtol=1e-12)
    np.testing.assert_allclose(dq, oracle_model.prediction_input_gradient(params, tokens, SINE_LIKE)[:, -1],
                               rtol=1e-10, atol=1e-14)
    dread = rng.standard_normal((1, 37))  # a random upstream gradient through model_forward / backward
    dtok, g2 = cpu.model_backward(dread, cpu.model_forward(params, tokens, SINE_LIKE)[1])
    want_dtok, want_g = oracle_model.model_backward(dread, oracle_model.model_forward(params, tokens, SINE_LIKE)[1])
    np.testing.assert_allclose(dtok, want_dtok, rtol=1e-10, atol=1e-14)
    for k in want_g:
        np.testing.assert_allclose(g2[k], want_g[k], rtol=1e-10, atol=1e-13 * np.abs(want_g[k]).max(), err_msg=k)


def test_only_models_with_an_embedding_or_input_mlp_take_the_front_path():
    assert front.supports(SINE_LIKE) and front.supports(ModelConfig(token_dim=3, embed_dim=4, key_size=4))
    assert not front.supports(ModelConfig(token_dim=3, pos_enc="add", key_size=3))
    b = front.block_config(SINE_LIKE)
    assert (b.token_dim, b.embed_dim, b.input_mlp, b.pos_enc, b.key_size) == (7, 0, False, "none", 7)
