"""The numba-cpu one-block kernel (kernels/numba/query_block.py: the query row alone, tasks in SIMD
lanes) against the oracle: loss and every parameter gradient, on uneven shapes and every option it
takes, with NaN-poisoned buffers, partial SIMD groups, and the same bits whatever the thread count."""
import numpy as np
import pytest
from tests.conftest import (RTOL_FLOAT64, assert_loss_and_grads_match_oracle, assert_same_bits_for_any_thread_count,
                            lane_kernel_inputs)

from kernels import get_backend
from kernels.numba import query_block
from refimpl import loss as oracle_loss
from refimpl import model as oracle_model
from refimpl import optim
from refimpl.config import AdamConfig, ModelConfig
from refimpl.params import init_params

# name -> (config, tokens per task T). Weights at init_scale 1: the scores spread the softmax
# weights and the clip bites (test_options_are_exercised), which the paper's 0.002 would not.
CONFIGS = {
    "softmax_2head_ln_mlp": (ModelConfig(token_dim=7, num_heads=2, key_size=5, attention="softmax",
                                         layernorm=True, mlp=True, init_scale=1.0), 9),
    "softmax_1head": (ModelConfig(token_dim=6, key_size=4, attention="softmax", init_scale=1.0), 8),
    "linear_3head_mlp_clip_damped": (ModelConfig(token_dim=5, num_heads=3, key_size=3, mlp=True, mlp_widening=3,
                                                 token_clip=0.3, dampening=0.75, init_scale=1.0), 6),
    "softmax_yupdate_query_causal_ln_mlp": (ModelConfig(token_dim=6, num_heads=2, key_size=6, attention="softmax",
                                                        y_update=True, include_query=True, causal=True,
                                                        layernorm=True, mlp=True, mlp_widening=2,
                                                        token_clip=2.0, init_scale=1.0), 7),
}
BATCHES = [1, 13, 150]  # one task (padded lanes), a partial group, several chunks


inputs = lane_kernel_inputs


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_and_grads_match_oracle(name, B, dtype, rng):
    cfg, T = CONFIGS[name]
    assert query_block.supports(cfg)
    params, tok, y = inputs(cfg, T, B, rng, dtype)
    query_block.fill_buffers(cfg, T, B, dtype, np.nan)
    assert_loss_and_grads_match_oracle(query_block.loss_and_grads, params, tok, y, cfg, dtype,
                                       B * T * cfg.model_dim * cfg.num_heads * cfg.mlp_widening)


def test_options_are_exercised(rng):
    """The test configs really clip some query entries and spread the softmax weights (else the
    clip mask and the softmax backward would go untested)."""
    for name in ("linear_3head_mlp_clip_damped", "softmax_yupdate_query_causal_ln_mlp"):
        cfg, T = CONFIGS[name]
        params, tok, _ = inputs(cfg, T, 150, rng, np.float64)
        _, cache = oracle_model.model_forward(params, tok, cfg)
        inside = cache["layers"][0]["clip"][:, -1]  # the query row
        assert 0.01 < 1 - inside.mean() < 0.99, name
    cfg, T = CONFIGS["softmax_2head_ln_mlp"]
    params, tok, _ = inputs(cfg, T, 150, rng, np.float64)
    _, cache = oracle_model.model_forward(params, tok, cfg)
    P = cache["layers"][0]["attn"]["P"][:, :, -1]  # (B, nh, N) the query's weights
    assert P.max() > 3 * P.min() and P.max() > 2.0 / P.shape[-1]


def test_bits_do_not_depend_on_the_thread_count(rng):
    cfg, T = CONFIGS["softmax_2head_ln_mlp"]
    params, tok, y = inputs(cfg, T, 150, rng, np.float64)
    assert_same_bits_for_any_thread_count(query_block.loss_and_grads, params, tok, y, cfg)


def test_which_models_come_here():
    assert query_block.supports(ModelConfig(attention="softmax"))
    assert query_block.supports(ModelConfig(attention="softmax", num_heads=2, layernorm=True, mlp=True))
    assert query_block.supports(ModelConfig(mlp=True))  # linear attention with an MLP
    assert not query_block.supports(ModelConfig())  # plain LSA: kernels.numba.lsa
    assert not query_block.supports(ModelConfig(attention="softmax", num_layers=2))
    assert not query_block.supports(ModelConfig(attention="softmax", layernorm=True, ln_placement="pre"))
    assert not query_block.supports(ModelConfig(attention="softmax", weight_tied=True, layernorm=True))
    assert not query_block.supports(ModelConfig(token_dim=2, key_size=40, embed_dim=40, input_mlp=True))


def test_train_step_uses_it_and_follows_the_oracle(rng, monkeypatch):
    """Five numba-cpu train steps of the case-(c)-like model against the oracle's, through this
    kernel (the general per-task kernel is made to fail, so the step cannot fall back to it)."""
    be = get_backend("numba-cpu")
    cfg, T = CONFIGS["softmax_2head_ln_mlp"]
    acfg = AdamConfig(lr=1e-2, grad_clip=1.0)
    p64 = init_params(cfg, rng)
    p, s = be.asarray(p64), be.adam_init(be.asarray(p64))
    s_o = optim.adam_init(p64)

    def general_kernel(*args):
        raise AssertionError("the per-task kernel ran")

    monkeypatch.setattr("kernels.numba.cpu.run_tasks", general_kernel)
    for _ in range(5):
        tok, y = rng.standard_normal((70, T, cfg.token_dim)), rng.standard_normal(70)
        p, s, loss = be.train_step(p, s, tok, y, cfg, acfg)
        loss_o, _, g_o = oracle_loss.loss_and_grads(p64, tok, y, cfg)
        p64, s_o, _ = optim.adam_update(p64, g_o, s_o, acfg)
        assert abs(loss - loss_o) <= RTOL_FLOAT64 * abs(loss_o)
    for k in p64:
        np.testing.assert_allclose(p[k], p64[k], rtol=1e-9, atol=1e-12, err_msg=k)
