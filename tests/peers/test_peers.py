"""The benchmark's JAX and PyTorch peers compute the oracle's loss, gradients and Adam steps (on the
CPU here, at a small size): otherwise a speed-up over them would compare different work. Every option but the positional
encodings, which the peers refuse."""
import numpy as np
import pytest

from benchmarks.peers import JaxPeer, TorchPeer
from tests.conftest import assert_close_to_oracle
from kernels.cupy import philox
from refimpl.config import AdamConfig, ModelConfig
from refimpl.loss import loss_and_grads
from refimpl.optim import adam_init, adam_update
from refimpl.params import init_params

pytestmark = pytest.mark.slow  # the fast subset leaves these out: imports and compiles JAX and PyTorch

CONFIGS = {
    "fig2": ModelConfig(),
    "deep3_clip_yupdate_softmax0": ModelConfig(num_layers=3, token_clip=0.5, y_update=True,
                                               dampening=0.8, first_layer_softmax=True),
    "tied_softmax_causal_heads": ModelConfig(num_layers=2, weight_tied=True, attention="softmax",
                                             causal=True, num_heads=2, key_size=5, include_query=True),
    # the benchmark's case c, and the front end of the sine model (embedding, input MLP)
    "softmax_2head_ln_mlp": ModelConfig(attention="softmax", num_heads=2, layernorm=True, mlp=True),
    "deep2_pre_ln_mlp_front": ModelConfig(num_layers=2, layernorm=True, ln_placement="pre", mlp=True,
                                          embed_dim=7, input_mlp=True, key_size=7, mlp_widening=2),
    "tied2_ln_mlp": ModelConfig(num_layers=2, weight_tied=True, layernorm=True, mlp=True, key_size=6),
}


def problem(cfg, rng, B=9, N=6):
    params = init_params(cfg, rng)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    tokens = rng.uniform(-1, 1, size=(B, N + 1, cfg.token_dim))
    return params, tokens, rng.standard_normal(B)


@pytest.mark.parametrize("peer", ["jax", "torch"])
def test_peers_refuse_a_positional_encoding(peer):
    pytest.importorskip(peer, reason=f"{peer} not installed (pip install iclgd[peers])")
    cls = JaxPeer if peer == "jax" else TorchPeer
    with pytest.raises(ValueError, match="cfg.pos_enc: the peers have no positional encoding"):
        cls(ModelConfig(token_dim=3, key_size=3, pos_enc="add"), AdamConfig())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_peer_matches_oracle_float64(rng, name):
    pytest.importorskip("torch", reason="PyTorch not installed (pip install iclgd[peers])")
    cfg = CONFIGS[name]
    params, tokens, y = problem(cfg, rng)
    loss, _, grads = loss_and_grads(params, tokens, y, cfg)
    t_loss, t_grads = TorchPeer(cfg, AdamConfig(), dtype=np.float64).loss_and_grads(params, tokens, y)
    assert_close_to_oracle(t_loss, loss, np.float64, name="loss")
    for k in grads:
        assert_close_to_oracle(t_grads[k], grads[k], np.float64, name=f"grads[{k}]")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_jax_peer_matches_oracle_float64(rng, name):
    jax = pytest.importorskip("jax", reason="JAX not installed (pip install iclgd[peers])")
    cfg = CONFIGS[name]
    params, tokens, y = problem(cfg, rng)
    loss, _, grads = loss_and_grads(params, tokens, y, cfg)
    with jax.enable_x64(True):
        j_loss, j_grads = JaxPeer(cfg, AdamConfig(), dtype=np.float64).loss_and_grads(params, tokens, y)
    assert_close_to_oracle(j_loss, loss, np.float64, name="loss")
    for k in grads:
        assert_close_to_oracle(j_grads[k], grads[k], np.float64, name=f"grads[{k}]")


@pytest.mark.parametrize("peer", ["jax", "torch"])
def test_peer_adam_steps_match_oracle(rng, peer):
    pytest.importorskip(peer, reason=f"{peer} not installed (pip install iclgd[peers])")
    cfg, adam_cfg = CONFIGS["fig2"], AdamConfig(lr=1e-2, grad_clip=0.05)
    params = init_params(cfg, rng)
    state = adam_init(params)
    if peer == "jax":
        import jax
        ctx = jax.enable_x64(True)
        ctx.__enter__()
        p = JaxPeer(cfg, adam_cfg, dtype=np.float64)
    else:
        p = TorchPeer(cfg, adam_cfg, dtype=np.float64)
    try:
        pstate = p.init_state(params)
        for step in range(5):
            tokens, y = philox.linear_regression_tasks(4, step, 32)
            loss, _, grads = loss_and_grads(params, tokens, y, cfg)
            params, state, _ = adam_update(params, grads, state, adam_cfg)
            if peer == "jax":
                pstate, p_loss = p.train_step_on_batch(pstate, tokens, y)
            else:
                p_loss = p.train_step_on_batch(pstate, tokens, y)
            assert_close_to_oracle(p_loss, loss, np.float64, name=f"loss at step {step}")
        final = pstate[0] if peer == "jax" else pstate["params"]
        for k in params:
            got = np.asarray(final[k]) if peer == "jax" else final[k].numpy()
            assert_close_to_oracle(got, params[k], np.float64, name=f"params[{k}] after 5 steps")
    finally:
        if peer == "jax":
            ctx.__exit__(None, None, None)


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["jax", "torch"])
def test_peer_drawn_batches_follow_the_task_law_and_steps_run(peer):
    """The benchmark's own step draws its batch with the framework's generator: SPEC 1.1's law
    (moments of x and y_q), labels y = w . x, and the step moves the parameters."""
    pytest.importorskip(peer, reason=f"{peer} not installed (pip install iclgd[peers])")
    cfg = CONFIGS["fig2"]
    params = init_params(cfg, np.random.default_rng(0), np.float32)
    B, r, s = 4096, 1.0, 1.0
    if peer == "jax":
        import jax
        p = JaxPeer(cfg, AdamConfig(grad_clip=0.001), batch=B)
        tokens, y = (np.asarray(a) for a in p.draw(jax.random.PRNGKey(1)))
        state = p.init_state(params)
        for _ in range(3):
            state, loss = p.train_step(state)
        new = np.asarray(state[0]["layer0.attn.W_q"])
    else:
        p = TorchPeer(cfg, AdamConfig(grad_clip=0.001), batch=B)
        state = p.init_state(params)
        tokens, y = (a.numpy() for a in p.draw(state["gen"]))
        for _ in range(3):
            loss = p.train_step(state)
        new = state["params"]["layer0.attn.W_q"].numpy()
    assert np.isfinite(float(loss))
    assert not np.allclose(new, params["layer0.attn.W_q"])
    x = tokens[..., :-1]
    assert abs(x.mean()) < 5 * np.sqrt(r**2 / 12 / x.size) and x.min() >= -r / 2 and x.max() <= r / 2
    assert abs(x.var() / (r**2 / 12) - 1) < 0.02
    assert abs(np.mean(y**2) / (s**2 * 10 * r**2 / 12) - 1) < 0.1
    assert np.all(tokens[:, -1, -1] == 0)
