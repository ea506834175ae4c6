"""The numba-cpu parameter-space kernel for linear-attention models (kernels/numba/lsa.py) against
the oracle: loss, per-layer losses and every parameter gradient, on uneven shapes, with NaN-poisoned
buffers, partial SIMD groups, and the same bits whatever the thread count."""
import numpy as np
import pytest
from tests.conftest import (RTOL_FLOAT64, TOL, assert_close_to_oracle, assert_loss_and_grads_match_oracle,
                            assert_same_bits_for_any_thread_count, lane_kernel_inputs, model_configs)

from kernels import get_backend

from kernels.numba import lsa as numba_lsa
from refimpl import loss as oracle_loss
from refimpl import model as oracle_model
from refimpl import optim
from refimpl.config import AdamConfig, ModelConfig
from refimpl.params import init_params, params_astype

# name -> (config, tokens per task T); every LSA option the experiments use appears somewhere
CONFIGS = {name: (cfg, T) for (name, cfg), T in zip(
    model_configs("paper_1layer", "deep3_2head_clip_damp", "tied3_yupdate_query",
                  "deep2_3head_wide_key_clip").items(), [11, 7, 5, 9])}
# with an MLP after every attention (fig8's models; weights at init_scale 1 so that the MLP and the
# clip matter): one block, a deep clipped two-head model, a tied one with y_update and the query
CONFIGS.update({
    "mlp_1layer": (ModelConfig(token_dim=6, key_size=4, mlp=True, init_scale=1.0), 8),
    "deep3_2head_mlp_clip_damp": (ModelConfig(token_dim=6, key_size=4, num_layers=3, num_heads=2, mlp=True,
                                              mlp_widening=3, token_clip=0.8, dampening=0.75, init_scale=1.0), 7),
    "tied2_mlp_yupdate_query": (ModelConfig(token_dim=5, key_size=5, num_layers=2, weight_tied=True, mlp=True,
                                            y_update=True, include_query=True, init_scale=1.0), 6),
})
BATCHES = [1, 13, 130]  # one task (seven padded lanes), a partial group, several chunks


inputs = lane_kernel_inputs


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_and_grads_match_oracle(name, B, dtype, rng):
    cfg, T = CONFIGS[name]
    assert numba_lsa.supports(cfg)
    params, tok, y = inputs(cfg, T, B, rng, dtype)
    numba_lsa.fill_buffers(cfg, T, B, dtype, np.nan)
    assert_loss_and_grads_match_oracle(numba_lsa.loss_and_grads, params, tok, y, cfg, dtype,
                                       B * T * cfg.model_dim * cfg.num_layers * cfg.num_heads * (cfg.mlp_widening if cfg.mlp else 1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_evaluation_readouts_and_query_gradient_match_oracle(name, B, dtype, rng):
    """The kernel's evaluation mode: every application's read-out and the query row of the final
    read-out's input gradient, as refimpl.model_forward and prediction_input_gradient give them,
    with no buffer entry read unwritten (NaN-poisoned)."""
    cfg, T = CONFIGS[name]
    params, tok, _ = inputs(cfg, T, B, rng, dtype)
    numba_lsa.fill_buffers(cfg, T, B, dtype, np.nan)
    readouts, dquery = get_backend("numba-cpu").readouts_and_query_gradient(params, tok, cfg)
    p64, t64 = params_astype(params, np.float64), tok.astype(np.float64)
    readouts_o, _ = oracle_model.model_forward(p64, t64, cfg)
    dquery_o = oracle_model.prediction_input_gradient(p64, t64, cfg)[:, -1]  # (B, D)
    red = B * T * cfg.model_dim * cfg.num_layers * cfg.num_heads * (cfg.mlp_widening if cfg.mlp else 1)
    assert readouts.dtype == dtype and dquery.dtype == dtype
    assert_close_to_oracle(readouts, readouts_o, dtype, red, "read-outs")
    assert_close_to_oracle(dquery, dquery_o, dtype, red, "d read-out / d query")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_readouts_alone_match_oracle(name, dtype, rng):
    """The kernel's read-outs-only mode (no backward): refimpl.model_forward's read-outs, with no
    buffer entry read unwritten; for a loss, as refimpl.metrics.losses asks for it."""
    cfg, T = CONFIGS[name]
    B = BATCHES[-1]
    params, tok, _ = inputs(cfg, T, B, rng, dtype)
    numba_lsa.fill_buffers(cfg, T, B, dtype, np.nan)
    readouts = get_backend("numba-cpu").readouts(params, tok, cfg)
    readouts_o, _ = oracle_model.model_forward(params_astype(params, np.float64), tok.astype(np.float64), cfg)
    assert readouts.dtype == dtype and readouts.shape == (cfg.num_layers, B)
    assert_close_to_oracle(readouts, readouts_o, dtype, B * T * cfg.model_dim * cfg.num_layers * cfg.num_heads,
                           "read-outs")


def test_evaluation_through_the_general_kernel_for_other_models(rng):
    """Models the linear-attention kernel does not take get the same pair from the general one."""
    cfg = model_configs("softmax_ln_mlp_2layer")["softmax_ln_mlp_2layer"]
    assert not numba_lsa.supports(cfg)
    params, tok, _ = inputs(cfg, 6, 9, rng, np.float64)
    readouts, dquery = get_backend("numba-cpu").readouts_and_query_gradient(params, tok, cfg)
    np.testing.assert_allclose(readouts, oracle_model.model_forward(params, tok, cfg)[0], rtol=RTOL_FLOAT64)
    np.testing.assert_array_equal(get_backend("numba-cpu").readouts(params, tok, cfg), readouts)
    np.testing.assert_allclose(dquery, oracle_model.prediction_input_gradient(params, tok, cfg)[:, -1],
                               rtol=RTOL_FLOAT64, atol=1e-14)


def test_clipping_is_exercised(rng):
    """The clipping configs really clip some entries (else their gradient masks go untested)."""
    for name in ("deep3_2head_clip_damp", "deep2_3head_wide_key_clip", "deep3_2head_mlp_clip_damp"):
        cfg, T = CONFIGS[name]
        params, tok, _ = inputs(cfg, T, 130, rng, np.float64)
        _, cache = oracle_model.model_forward(params, tok, cfg)
        inside = np.concatenate([lc["clip"].ravel() for lc in cache["layers"]])
        assert 0.01 < 1 - inside.mean() < 0.99, name


@pytest.mark.parametrize("name", ["deep3_2head_clip_damp", "deep3_2head_mlp_clip_damp"])
def test_bits_do_not_depend_on_the_thread_count(name, rng):
    cfg, T = CONFIGS[name]
    params, tok, y = inputs(cfg, T, 130, rng, np.float64)
    assert_same_bits_for_any_thread_count(numba_lsa.loss_and_grads, params, tok, y, cfg)


def test_numba_cpu_routes_linear_models_here_and_others_not():
    assert not numba_lsa.supports(ModelConfig(token_dim=5, attention="softmax"))
    assert not numba_lsa.supports(ModelConfig(token_dim=5, layernorm=True))
    assert numba_lsa.supports(ModelConfig(token_dim=5, mlp=True))
    assert numba_lsa.supports(ModelConfig(token_dim=5, mlp=True, num_layers=5, num_heads=2, token_clip=10.0))
    assert not numba_lsa.supports(ModelConfig(token_dim=5, mlp=True, layernorm=True))
    assert not numba_lsa.supports(ModelConfig(token_dim=5, first_layer_softmax=True, num_layers=2))
    assert not numba_lsa.supports(ModelConfig(token_dim=5, embed_dim=4))


def test_train_step_uses_it_and_follows_the_oracle(rng):
    """Five numba-cpu train steps of a clipped two-head deep model against the oracle's."""
    be = get_backend("numba-cpu")
    cfg, T = CONFIGS["deep2_3head_wide_key_clip"]
    acfg = AdamConfig(lr=1e-2, grad_clip=1.0)
    p64 = init_params(cfg, rng)
    p, s = be.asarray(p64), be.adam_init(be.asarray(p64))
    s_o = optim.adam_init(p64)
    for _ in range(5):
        tok, y = rng.standard_normal((70, T, cfg.token_dim)), rng.standard_normal(70)
        p, s, loss = be.train_step(p, s, tok, y, cfg, acfg)
        loss_o, _, g_o = oracle_loss.loss_and_grads(p64, tok, y, cfg)
        p64, s_o, _ = optim.adam_update(p64, g_o, s_o, acfg)
        assert abs(loss - loss_o) <= RTOL_FLOAT64 * abs(loss_o)
    for k in p64:
        np.testing.assert_allclose(p[k], p64[k], **TOL["training_trajectory"],
                                   atol=TOL["training_weights_atol_scale"] * np.abs(p64[k]).max())


@pytest.mark.parametrize("tied", [False, True])
def test_fu_shapes_on_gaussian_prompts_match_the_oracle(tied, rng):
    """The second paper's size (d = 20, 40 context pairs: T = 41, D = 21) on ill-conditioned
    Gaussian prompts from the training source, deep and tied with the token clip fu-lsa uses:
    three numba-cpu training steps against the oracle's."""
    from refimpl.gaussian import GaussianTaskConfig, GaussianTaskSource
    task = GaussianTaskConfig(covariance="ill_conditioned")
    cfg = ModelConfig(token_dim=21, key_size=21, num_layers=4, weight_tied=tied, token_clip=5.0)  # clips
    be, acfg = get_backend("numba-cpu"), AdamConfig(lr=1e-2, grad_clip=10.0)
    p64 = {k: v * 50 for k, v in init_params(cfg, rng).items()}  # large enough to reach the clip
    p, s, s_o = be.asarray(p64), be.adam_init(be.asarray(p64)), optim.adam_init(p64)
    source = GaussianTaskSource(task, 19)
    for step in range(3):
        tok, y = source.next_batch(rng, step)
        assert tok.shape == (19, 41, 21)
        p, s, loss = be.train_step(p, s, tok, y, cfg, acfg)
        loss_o, _, g_o = oracle_loss.loss_and_grads(p64, tok, y, cfg)
        p64, s_o, _ = optim.adam_update(p64, g_o, s_o, acfg)
        assert abs(loss - loss_o) <= RTOL_FLOAT64 * abs(loss_o)
    unclipped = ModelConfig(**{**cfg.__dict__, "token_clip": 0.0})
    assert oracle_loss.loss_and_grads(p64, tok, y, unclipped)[0] != oracle_loss.loss_and_grads(p64, tok, y, cfg)[0]
    for k in p64:
        np.testing.assert_allclose(p[k], p64[k], **TOL["training_trajectory"],
                                   atol=TOL["training_weights_atol_scale"] * np.abs(p64[k]).max())
