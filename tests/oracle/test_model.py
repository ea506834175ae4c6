"""Properties of the model's forward that the gradient checks cannot see: it computes the SPEC's math."""
import numpy as np
import pytest

from refimpl import attention
from refimpl.config import ModelConfig
from refimpl.model import model_forward, prediction_input_gradient
from refimpl.params import init_params, param_shapes
from tests.conftest import TOL


def lsa_per_task(Hb, p, num_heads, num_keys):
    """SPEC 2.1 written task by task, head by head, with explicit sums (no batching tricks)."""
    T, D = Hb.shape
    K = p["W_q"].shape[1] // num_heads
    out_heads = []
    for h in range(num_heads):
        cols = slice(h * K, (h + 1) * K)
        Q = Hb @ p["W_q"][:, cols]
        Kh = Hb[:num_keys] @ p["W_k"][:, cols]
        V = Hb[:num_keys] @ p["W_v"][:, cols]
        O = np.zeros((T, K))
        for t in range(T):
            for j in range(num_keys):
                O[t] += (Q[t] @ Kh[j]) * V[j]
        out_heads.append(O)
    return np.concatenate(out_heads, axis=1) @ p["W_p"]


def random_attention_params(rng, D, H, K):
    return {"W_q": rng.standard_normal((D, H * K)), "W_k": rng.standard_normal((D, H * K)),
            "W_v": rng.standard_normal((D, H * K)), "W_p": rng.standard_normal((H * K, D))}


@pytest.mark.parametrize("include_query", [False, True])
def test_lsa_matches_per_task_sums(include_query, rng):
    B, T, D, H, K = 4, 6, 5, 2, 3
    x = rng.standard_normal((B, T, D))
    p = random_attention_params(rng, D, H, K)
    S = T if include_query else T - 1
    out, _ = attention.lsa_forward(x, p, num_heads=H, num_keys=S)
    for b in range(B):
        np.testing.assert_allclose(out[b], lsa_per_task(x[b], p, H, S), **TOL["oracle_vs_per_task_loop"])


def test_query_token_is_not_a_key_by_default(rng):
    """Changing the query token changes only the query's own output row (it is not a key/value)."""
    x = rng.standard_normal((2, 5, 4))
    p = random_attention_params(rng, 4, 2, 3)
    y = x.copy()
    y[:, -1] += 1.0
    for fwd in (attention.lsa_forward, attention.softmax_attention_forward):
        a, _ = fwd(x, p, num_heads=2)
        b, _ = fwd(y, p, num_heads=2)
        np.testing.assert_allclose(a[:, :-1], b[:, :-1], rtol=0, atol=0)
        assert np.abs(a[:, -1] - b[:, -1]).max() > 1e-3


def test_softmax_rows_sum_to_one_and_causal_mask_hides_future(rng):
    B, T, D, H, K = 3, 6, 4, 2, 3
    x = rng.standard_normal((B, T, D))
    p = random_attention_params(rng, D, H, K)
    _, cache = attention.softmax_attention_forward(x, p, num_heads=H, num_keys=T, causal=True)
    P = cache["P"]  # (B, H, T, S)
    np.testing.assert_allclose(P.sum(-1), 1.0, **TOL["float64_reordered"])
    assert np.all(P[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)
    # token t's output does not change when a later token changes
    y = x.copy()
    y[:, 4:] += 3.0
    a, _ = attention.softmax_attention_forward(x, p, num_heads=H, num_keys=T, causal=True)
    b, _ = attention.softmax_attention_forward(y, p, num_heads=H, num_keys=T, causal=True)
    np.testing.assert_allclose(a[:, :4], b[:, :4], **TOL["float64_reordered_near_zero"])


def test_softmax_is_stable_for_large_scores(rng):
    x = rng.standard_normal((2, 5, 4)) * 1e3
    p = random_attention_params(rng, 4, 1, 3)
    out, cache = attention.softmax_attention_forward(x, p)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(cache["P"]))


def test_weight_tied_is_one_block_applied_L_times(rng):
    """A tied L-layer model equals a deep model whose L blocks all hold the same parameters."""
    tied = ModelConfig(token_dim=5, key_size=3, num_heads=2, num_layers=3, weight_tied=True,
                       dampening=0.6, init_scale=3.0)
    deep = ModelConfig(token_dim=5, key_size=3, num_heads=2, num_layers=3, dampening=0.6)
    pt = init_params(tied, rng)
    pd = {k.replace("layer0", f"layer{l}"): v for l in range(3) for k, v in pt.items()}
    assert set(pd) == set(param_shapes(deep))
    x = rng.standard_normal((4, 7, 5))
    np.testing.assert_allclose(model_forward(pt, x, tied)[0], model_forward(pd, x, deep)[0],
                               **TOL["float64_reordered"])


def test_readout_is_minus_last_coordinate_and_y_update_freezes_x(rng):
    cfg = ModelConfig(token_dim=5, key_size=3, num_layers=2, y_update=True, init_scale=2.0)
    p = init_params(cfg, rng)
    x = rng.standard_normal((3, 6, 5))
    r, cache = model_forward(p, x, cfg)
    # with y_update only the last column moves; the input gradient w.r.t. the query's x part is
    # still non-zero (the x parts feed the attention scores)
    g = prediction_input_gradient(p, x, cfg)
    assert np.abs(g[:, -1, :-1]).max() > 0
    # a one-layer model with zero W_p leaves tokens unchanged: readout = -query label slot
    cfg1 = ModelConfig(token_dim=5, key_size=3)
    p1 = init_params(cfg1, rng)
    p1["layer0.attn.W_p"][:] = 0
    np.testing.assert_array_equal(model_forward(p1, x, cfg1)[0][0], -x[:, -1, -1])


def test_layernorm_placement_of_the_public_code():
    deep = ModelConfig(num_layers=3, layernorm=True)
    tied = ModelConfig(num_layers=3, layernorm=True, weight_tied=True)
    pre = ModelConfig(num_layers=3, layernorm=True, ln_placement="pre")
    assert [deep.layer_has_ln(l) for l in range(3)] == [False, True, True]
    assert [tied.layer_has_ln(l) for l in range(3)] == [True, True, True]
    assert [pre.layer_has_ln(l) for l in range(3)] == [True, True, True]
    assert "layer0.ln1.scale" not in param_shapes(deep) and "layer1.ln1.scale" in param_shapes(deep)


def test_concatenated_positional_encoding_goes_in_front(rng):
    cfg = ModelConfig(token_dim=4, key_size=3, pos_enc="concat", pos_enc_size=6)
    assert cfg.model_dim == 10
    p = init_params(cfg, rng)
    assert p["layer0.attn.W_q"].shape == (10, 3)
    p["layer0.attn.W_p"][:] = 0
    x = rng.standard_normal((2, 5, 4))
    np.testing.assert_array_equal(model_forward(p, x, cfg)[0][0], -x[:, -1, -1])


@pytest.mark.parametrize("cfg", [
    ModelConfig(token_dim=5, key_size=3, num_heads=2, num_layers=2, init_scale=2.0),
    ModelConfig(token_dim=5, key_size=3, num_heads=2, num_layers=2, attention="softmax",
                layernorm=True, mlp=True, init_scale=2.0),
], ids=["lsa", "softmax_ln_mlp"])
def test_float32_follows_float64(cfg, rng):
    """float32 in, float32 out (no silent upcast), and close to the float64 result."""
    from refimpl.loss import loss_and_grads
    from refimpl.params import params_astype
    p64 = init_params(cfg, rng)
    x64 = rng.standard_normal((4, 7, 5))
    y64 = rng.standard_normal(4)
    p32, x32, y32 = params_astype(p64, np.float32), x64.astype(np.float32), y64.astype(np.float32)
    r32, _ = model_forward(p32, x32, cfg)
    assert r32.dtype == np.float32
    l32, _, g32 = loss_and_grads(p32, x32, y32, cfg)
    l64, _, g64 = loss_and_grads(p64, x64, y64, cfg)
    assert all(g.dtype == np.float32 for g in g32.values())
    tol = 2e3 * np.finfo(np.float32).eps
    assert abs(l32 - l64) <= tol * abs(l64)
    for k in g64:
        assert np.abs(g32[k] - g64[k]).max() <= tol * np.abs(g64[k]).max(), k


@pytest.mark.parametrize("cfg", [
    ModelConfig(token_dim=5, key_size=3, num_heads=2, init_scale=2.0),
    ModelConfig(token_dim=5, key_size=3, num_layers=2, weight_tied=True, layernorm=True, init_scale=2.0),
    ModelConfig(token_dim=2, key_size=3, embed_dim=6, input_mlp=True, init_scale=1.0),
], ids=["lsa", "tied_ln", "front_end"])
def test_parameter_gradients_do_not_depend_on_input_grad(cfg, rng):
    """Training skips the token gradient; the parameter gradients stay bit for bit the same."""
    from refimpl.model import model_backward
    p = init_params(cfg, rng)
    x = rng.standard_normal((3, 6, cfg.token_dim))
    r, cache = model_forward(p, x, cfg)
    g = rng.standard_normal(r.shape)
    dx_full, g_full = model_backward(g, cache)
    dx_none, g_none = model_backward(g, cache, input_grad=False)
    assert dx_full.shape == x.shape and dx_none is None
    assert set(g_full) == set(g_none) == set(p)
    for k in p:
        np.testing.assert_array_equal(g_full[k], g_none[k])
