"""The GPT-2 style model of the oracle (refimpl/gpt2.py, SPEC 2.7): causality, the hidden states,
the read-out positions, the initialisation, the zero key-bias gradient and bad input. Its
gradients against finite differences are in test_gradcheck (the gpt2_* checks)."""
import numpy as np
import pytest

from refimpl import gpt2
from refimpl.gaussian import interleaved_tokens
from refimpl.gradcheck import check_function
from refimpl.gradcheck_gpt2 import GPT2_CHECK, gpt2_check_params
from refimpl import layers

CFG = GPT2_CHECK  # d 3, n 4, E 8, 2 layers, 2 heads


def _prompt(rng, B=3, n=4, cfg=CFG):
    x = rng.standard_normal((B, n, cfg.input_dim))  # (B, n, d)
    y = rng.standard_normal((B, n))  # (B, n)
    return interleaved_tokens(x, y), y


def test_prediction_i_sees_only_the_tokens_before_y_i(rng):
    """Changing token s changes no prediction at an x position 2i < s: y_i is predicted from the
    pairs before it and x_i alone (the causal mask), and does change the later ones."""
    params = gpt2_check_params(CFG, rng)
    tokens, _ = _prompt(rng)
    base = gpt2.predict(params, tokens, CFG)  # (B, n)
    for s in range(tokens.shape[1]):
        moved = tokens.copy()
        moved[:, s] += 1.0
        diff = np.abs(gpt2.predict(params, moved, CFG) - base).max(axis=0)  # (n,)
        i_first = (s + 1) // 2  # first x position 2i >= s
        np.testing.assert_array_equal(diff[:i_first], 0.0)
        assert np.all(diff[i_first:] > 0)


def test_a_shorter_prompt_gives_the_same_first_predictions(rng):
    """Positions do not depend on the prompt's length: the first 2k tokens of a prompt give its
    first k predictions (to rounding: the matmuls differ in size)."""
    params = gpt2_check_params(CFG, rng)
    tokens, _ = _prompt(rng)
    full = gpt2.predict(params, tokens, CFG)
    for k in (1, 2, 3):
        np.testing.assert_allclose(gpt2.predict(params, tokens[:, :2 * k], CFG), full[:, :k], rtol=1e-13, atol=1e-14)


def test_hidden_states_follow_hugging_face_and_feed_the_read_out(rng):
    params = gpt2_check_params(CFG, rng)
    tokens, _ = _prompt(rng)
    pred, cache = gpt2.gpt2_forward(params, tokens, CFG)
    states = cache["states"]  # (L + 1, B, T, E)
    assert states.shape == (CFG.num_layers + 1,) + tokens.shape[:2] + (CFG.embed_dim,)
    emb = tokens @ params["read_in.W"] + params["read_in.b"] + params["pos"][:tokens.shape[1]]
    np.testing.assert_allclose(states[0], emb, rtol=1e-14)
    H = states[0]
    for l in range(CFG.num_layers):
        H = gpt2.block_forward(H, params, CFG, l)[0]
        if l < CFG.num_layers - 1:
            np.testing.assert_allclose(states[l + 1], H, rtol=1e-14)
    Hf = layers.layernorm_forward(H, params["ln_f.scale"], params["ln_f.offset"])[0]
    np.testing.assert_allclose(states[-1], Hf, rtol=1e-14)  # the last one with the final LN
    np.testing.assert_allclose(pred, (Hf[:, 0::2] @ params["read_out.W"])[..., 0] + params["read_out.b"],
                               rtol=1e-13)


def test_key_bias_gradient_is_zero_and_a_wrong_one_fails(rng):
    """softmax ignores a shift common to all keys: d/d b_k is 0 to rounding, and a backward that
    made it nonzero fails the finite-difference check."""
    params = gpt2_check_params(CFG, rng)
    tokens, y = _prompt(rng)
    _, _, grads = gpt2.loss_and_grads(params, tokens, y, CFG)
    scale = max(np.abs(g).max() for g in grads.values())
    for l in range(CFG.num_layers):
        assert np.abs(grads[f"block{l}.attn.b_k"]).max() < 1e-14 * scale
    H = rng.standard_normal((3, 6, CFG.embed_dim))
    attn = {k.split(".")[-1]: v for k, v in params.items() if k.startswith("block0.attn.")}

    def fwd(x, **p):
        return gpt2.causal_attention_forward(x, p, CFG.num_heads)[0]

    def wrong_bwd(dout, inp):
        _, cache = gpt2.causal_attention_forward(inp["x"], {k: v for k, v in inp.items() if k != "x"}, CFG.num_heads)
        dx, g = gpt2.causal_attention_backward(dout, cache)
        g["b_k"] = g["b_k"] + 1e-3 * np.abs(g["b_q"]).max()
        return {"x": dx, **g}

    rows = {r["param"]: r for r in check_function("gpt2_wrong_bk", fwd, wrong_bwd, {"x": H, **attn}, rng)}
    assert not rows["b_k"]["passed"]
    assert rows["b_q"]["passed"]


def test_loss_is_the_plain_mean_squared_error_and_pos_grad_is_padded(rng):
    params = gpt2_check_params(CFG, rng)
    tokens, y = _prompt(rng, n=3)  # 6 of the 8 positions
    loss, per, grads = gpt2.loss_and_grads(params, tokens, y, CFG)
    assert loss == pytest.approx(np.mean((gpt2.predict(params, tokens, CFG) - y) ** 2), rel=1e-14)
    assert per.shape == (1,) and per[0] == loss
    assert grads["pos"].shape == params["pos"].shape
    np.testing.assert_array_equal(grads["pos"][5:], 0.0)  # the last y and the unused positions reach no loss
    assert np.all(np.abs(grads["pos"][:5]).max(axis=1) > 0)


def test_initialisation_is_gpt2s(rng):
    cfg = gpt2.GPT2Config(input_dim=4, num_pairs=50, embed_dim=96, num_layers=3, num_heads=4)
    p = gpt2.init_params(cfg, rng)
    assert list(p) == list(gpt2.param_shapes(cfg))
    assert np.std(p["block0.attn.W_q"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(p["block1.mlp.W2"]) == pytest.approx(0.02 / np.sqrt(6), rel=0.05)
    assert np.std(p["pos"]) == pytest.approx(0.02, rel=0.05)
    assert np.all(p["block2.ln1.scale"] == 1) and np.all(p["block2.attn.b_v"] == 0)
    assert np.abs(p["read_in.W"]).max() <= 0.5 and np.std(p["read_in.W"]) == pytest.approx(0.5 / np.sqrt(3), rel=0.1)
    p32 = gpt2.init_params(cfg, np.random.default_rng(1), np.float32)
    assert all(v.dtype == np.float32 for v in p32.values())


def test_float32_stays_float32(rng):
    params = {k: v.astype(np.float32) for k, v in gpt2_check_params(CFG, rng).items()}
    tokens, y = _prompt(rng)
    loss, _, grads = gpt2.loss_and_grads(params, tokens.astype(np.float32), y.astype(np.float32), CFG)
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("bad,match", [
    (dict(embed_dim=10, num_heads=4), "model.embed_dim: expected a multiple of num_heads = 4, got 10"),
    (dict(num_layers=0), "model.num_layers"),
    (dict(init_std=0.0), "model.init_std"),
])
def test_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        gpt2.GPT2Config(**bad)


def test_bad_tokens(rng):
    params = gpt2_check_params(CFG, rng)
    tokens, _ = _prompt(rng)
    with pytest.raises(ValueError, match="tokens: expected token width input_dim = 3"):
        gpt2.predict(params, tokens[..., :2], CFG)
    with pytest.raises(ValueError, match=r"tokens: expected an even number of tokens in \[2, 8\] \(pairs x, y\), got 5"):
        gpt2.predict(params, tokens[:, :5], CFG)
    with pytest.raises(ValueError, match=r"tokens: expected an even number of tokens in \[2, 8\] \(pairs x, y\), got 10"):
        gpt2.predict(params, np.concatenate([tokens, tokens[:, :2]], axis=1), CFG)
    with pytest.raises(ValueError, match="params: missing"):
        gpt2.predict({k: v for k, v in params.items() if k != "pos"}, tokens, CFG)
