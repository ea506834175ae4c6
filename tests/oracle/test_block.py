"""The block pair (refimpl.block): the model is its front end, the blocks chained and the read-outs;
the block computes SPEC 2.3 step by step; its backward matches finite differences."""
import dataclasses

import numpy as np
import pytest

from refimpl import attention, block, layers
from refimpl.block import block_backward, block_forward, y_update_mask
from refimpl.config import ModelConfig
from refimpl.gradcheck import BLOCK_CHECKS, TOLERANCE, block_check_params, check_function
from refimpl.model import front_backward, front_forward, model_backward, model_forward
from refimpl.params import init_params, param_shapes

B, T = 3, 6  # with token widths 4, 5 and key size 3 below: no two sizes equal

LOOP_CONFIGS = {
    "lsa_1layer": ModelConfig(token_dim=5, key_size=3),
    "deep3_lsa_clip": ModelConfig(token_dim=5, key_size=3, num_heads=2, num_layers=3, token_clip=1.0,
                                  init_scale=4.0),
    "tied3_y_update_dampened": ModelConfig(token_dim=5, key_size=3, num_layers=3, weight_tied=True,
                                           y_update=True, dampening=0.75, init_scale=3.0),
    "deep3_public_ln_mlp": ModelConfig(token_dim=5, key_size=3, num_heads=2, num_layers=3, layernorm=True,
                                       mlp=True, init_scale=2.0),
    "tied2_public_ln_mlp": ModelConfig(token_dim=5, key_size=3, num_layers=2, weight_tied=True,
                                       layernorm=True, mlp=True, init_scale=2.0),
    "deep2_pre_ln_softmax_causal": ModelConfig(token_dim=5, key_size=3, num_heads=2, num_layers=2,
                                               attention="softmax", causal=True, layernorm=True,
                                               ln_placement="pre", mlp=True, init_scale=2.0),
    "first_softmax_query_key_posconcat": ModelConfig(token_dim=4, key_size=3, num_layers=2,
                                                     first_layer_softmax=True, include_query=True,
                                                     pos_enc="concat", pos_enc_size=2, init_scale=2.0),
    "embed_input_mlp_posadd": ModelConfig(token_dim=4, key_size=3, num_layers=2, embed_dim=5,
                                          input_mlp=True, pos_enc="add", init_scale=1.0),
}


def random_model_params(cfg, rng):
    """init_params with LayerNorm scales, offsets and biases moved off 1 and 0."""
    params = init_params(cfg, rng)
    for name, value in params.items():
        if name.rsplit(".", 1)[1] in ("scale", "offset", "b1", "b2"):
            params[name] = value + 0.3 * rng.standard_normal(value.shape)
    return params


def chained_blocks(params, tokens, cfg, dreadouts, input_grad=True):
    """The model written out: front end, block_forward l = 0..L-1 with read-outs, then block_backward
    l = L-1..0 with each read-out's gradient added, a tied block's gradients summed by hand."""
    H, front = front_forward(tokens, params, cfg)
    readouts, caches = [], []
    for l in range(cfg.num_layers):
        H, c = block_forward(H, params, cfg, l)
        readouts.append(-H[:, -1, -1])
        caches.append(c)
    dH, grads = np.zeros_like(H), {}
    for l in reversed(range(cfg.num_layers)):
        dH[:, -1, -1] -= dreadouts[l]
        dH, g = block_backward(dH, caches[l], input_grad=input_grad or l > 0 or bool(front))
        for name, value in g.items():
            grads[name] = grads[name] + value if name in grads else value
    if dH is None:
        return np.stack(readouts), None, grads
    dtokens, g = front_backward(dH, front)
    return np.stack(readouts), (dtokens if input_grad else None), {**grads, **g}


@pytest.mark.parametrize("name", list(LOOP_CONFIGS))
@pytest.mark.parametrize("input_grad", [True, False])
def test_chained_blocks_reproduce_the_model_bitwise(name, input_grad, rng):
    cfg = LOOP_CONFIGS[name]
    params = random_model_params(cfg, rng)
    tokens = rng.standard_normal((B, T, cfg.token_dim))
    dreadouts = rng.standard_normal((cfg.num_layers, B))
    readouts, cache = model_forward(params, tokens, cfg)
    dtokens, grads = model_backward(dreadouts, cache, input_grad=input_grad)
    readouts_b, dtokens_b, grads_b = chained_blocks(params, tokens, cfg, dreadouts, input_grad)
    assert np.array_equal(readouts, readouts_b)
    if input_grad:
        assert np.array_equal(dtokens, dtokens_b)
    else:
        assert dtokens is None and dtokens_b is None
    assert list(grads) == list(grads_b), "the same gradients, in the same order"
    assert set(grads) == set(param_shapes(cfg)), "every parameter gets a gradient"
    for k in grads:
        assert np.array_equal(grads[k], grads_b[k]), k


def test_weight_tied_gradient_is_the_sum_over_applications(rng):
    cfg = LOOP_CONFIGS["tied2_public_ln_mlp"]
    params = random_model_params(cfg, rng)
    tokens = rng.standard_normal((B, T, cfg.token_dim))
    dreadouts = rng.standard_normal((cfg.num_layers, B))
    _, grads = model_backward(dreadouts, model_forward(params, tokens, cfg)[1])
    H0, _ = front_forward(tokens, params, cfg)
    H1, c0 = block_forward(H0, params, cfg, 0)
    H2, c1 = block_forward(H1, params, cfg, 1)
    dH2 = np.zeros_like(H2)
    dH2[:, -1, -1] = -dreadouts[1]
    dH1, g1 = block_backward(dH2, c1)
    dH1[:, -1, -1] -= dreadouts[0]
    _, g0 = block_backward(dH1, c0)
    assert set(g0) == set(g1) == set(grads)
    for k in grads:
        assert np.array_equal(grads[k], g1[k] + g0[k]), k
        assert not np.array_equal(grads[k], g1[k]), k  # the first application contributes


def test_block_is_the_spec_steps(rng):
    """SPEC 2.3 with every option: H + lam * mask * Attn(LN1(H)), clip, + lam * MLP(LN2(H))."""
    cfg = ModelConfig(token_dim=5, key_size=3, num_heads=2, num_layers=2, attention="softmax", causal=True,
                      layernorm=True, mlp=True, y_update=True, dampening=0.6, token_clip=1.1)
    params = random_model_params(cfg, rng)
    H = rng.standard_normal((B, T, 5))
    p = {k[len("layer1."):]: v for k, v in params.items() if k.startswith("layer1.")}
    a_in, _ = layers.layernorm_forward(H, p["ln1.scale"], p["ln1.offset"])
    attn = {k[len("attn."):]: v for k, v in p.items() if k.startswith("attn.")}
    a, _ = attention.softmax_attention_forward(a_in, attn, 2, T - 1, causal=True)
    H1 = np.clip(H + 0.6 * (a * y_update_mask(5, a.dtype)), -1.1, 1.1)
    m_in, _ = layers.layernorm_forward(H1, p["ln2.scale"], p["ln2.offset"])
    m, _ = layers.mlp_forward(m_in, p["mlp.W1"], p["mlp.b1"], p["mlp.W2"], p["mlp.b2"])
    expected = H1 + 0.6 * m
    out, cache = block_forward(H, params, cfg, 1)
    assert np.array_equal(out, expected)
    assert not cache["clip"].all(), "the clip is active on some entries"
    assert "ln1" not in block_forward(H, params, cfg, 0)[1], "deep public model: no LN1 in layer 0"


def test_block_reads_and_returns_only_its_parameter_set(rng):
    cfg = LOOP_CONFIGS["deep3_public_ln_mlp"]
    params = random_model_params(cfg, rng)
    H = rng.standard_normal((B, T, cfg.model_dim))
    own = {k: v for k, v in params.items() if k.startswith("layer1.")}
    out_all, cache = block_forward(H, params, cfg, 1)
    out_own, _ = block_forward(H, own, cfg, 1)
    assert np.array_equal(out_all, out_own)
    _, grads = block_backward(rng.standard_normal(H.shape), cache)
    assert sorted(grads) == sorted(k for k in param_shapes(cfg) if k.startswith("layer1."))


def record_attention_input_grad(monkeypatch):
    """A list that receives the input_grad flag of every linear-attention backward call."""
    forward, backward = block.ATTENTION["linear"]
    seen = []

    def recording_backward(dout, cache, input_grad=True):
        seen.append(input_grad)
        return backward(dout, cache, input_grad)

    monkeypatch.setitem(block.ATTENTION, "linear", (forward, recording_backward))
    return seen


@pytest.mark.parametrize("layernorm", [False, True])
def test_input_grad_false_skips_only_what_nobody_needs(layernorm, rng, monkeypatch):
    """input_grad=False: dH is None, the parameter gradients are bitwise those of input_grad=True, and
    the attention's input gradient is skipped unless LN1 is below it."""
    cfg = ModelConfig(token_dim=5, key_size=3, num_heads=2, layernorm=layernorm, ln_placement="pre", mlp=True,
                      token_clip=2.0, init_scale=2.0)
    params = random_model_params(cfg, rng)
    H = rng.standard_normal((B, T, 5))
    dout = rng.standard_normal(H.shape)
    _, cache = block_forward(H, params, cfg, 0)
    asked = record_attention_input_grad(monkeypatch)
    dH_full, g_full = block_backward(dout, cache)
    dH_none, g_none = block_backward(dout, cache, input_grad=False)
    assert dH_full.shape == H.shape and dH_none is None
    assert asked == [True, layernorm]
    assert list(g_full) == list(g_none)
    for k in g_full:
        assert np.array_equal(g_full[k], g_none[k]), k


@pytest.mark.parametrize("name,asked", [("lsa_1layer", [False]),
                                        ("tied3_y_update_dampened", [True, True, False]),
                                        ("embed_input_mlp_posadd", [True, True])])
def test_training_backward_skips_the_first_attention_input_gradient(name, asked, rng, monkeypatch):
    """model_backward(input_grad=False) asks layer 0's attention for no input gradient unless the
    front end lies below it; the later layers always pass one down."""
    cfg = LOOP_CONFIGS[name]
    params = random_model_params(cfg, rng)
    _, cache = model_forward(params, rng.standard_normal((B, T, cfg.token_dim)), cfg)
    seen = record_attention_input_grad(monkeypatch)
    dtokens, _ = model_backward(rng.standard_normal((cfg.num_layers, B)), cache, input_grad=False)
    assert dtokens is None
    assert seen == asked


# ------------------------------------------------------------------------------ finite differences
def block_pair(cfg, layer, backward=block_backward):
    def forward(H, **p):
        return block_forward(H, p, cfg, layer)[0]

    def grads(dout, inp):
        p = {k: v for k, v in inp.items() if k != "H"}
        dH, g = backward(dout, block_forward(inp["H"], p, cfg, layer)[1])
        return {"H": dH, **g}
    return forward, grads


FD_CONFIGS = {
    **BLOCK_CHECKS,
    "block_first_softmax_query_key": (ModelConfig(token_dim=4, key_size=3, num_heads=2, num_layers=2,
                                                  first_layer_softmax=True, include_query=True,
                                                  mlp=True, mlp_widening=2, dampening=0.6,
                                                  init_scale=1.0), 0),
}


@pytest.mark.parametrize("name", list(FD_CONFIGS))
def test_block_backward_matches_finite_differences(name, rng):
    cfg, layer = FD_CONFIGS[name]
    params = block_check_params(cfg, layer, rng)
    H = rng.standard_normal((2, 7, cfg.model_dim))  # B = 2, T = 7, D = 4 or 5, K = 3
    inputs = {"H": H, **params}
    rows = check_function(name, *block_pair(cfg, layer), inputs, rng)
    assert [r["param"] for r in rows] == list(inputs), "H and every parameter of the set are checked"
    bad = [(r["param"], r["max_rel_err"]) for r in rows if not r["passed"]]
    assert not bad, f"{name}: relative error above {TOLERANCE}: {bad}"


def test_wrong_block_backwards_fail_the_check(rng):
    """A parameter gradient off by 1e-4 relative, or an input gradient that ignores the clip, fails."""
    cfg, layer = BLOCK_CHECKS["block_softmax_causal_ln_mlp"]
    cfg = dataclasses.replace(cfg, token_clip=1.0)
    inputs = {"H": rng.standard_normal((2, 7, cfg.model_dim)), **block_check_params(cfg, layer, rng)}

    def scaled_ln2(dout, cache):
        dH, g = block_backward(dout, cache)
        return dH, {**g, "layer0.ln2.scale": g["layer0.ln2.scale"] * (1 + 1e-4)}

    def clip_ignored(dout, cache):
        return block_backward(dout, {**cache, "clip": np.ones_like(cache["clip"])})

    def rows_of(backward):
        return {r["param"]: r for r in check_function("wrong", *block_pair(cfg, layer, backward), inputs, rng)}

    rows = rows_of(scaled_ln2)
    assert not rows["layer0.ln2.scale"]["passed"]
    assert all(r["passed"] for p, r in rows.items() if p != "layer0.ln2.scale")
    rows = rows_of(clip_ignored)
    _, cache = block_forward(inputs["H"], inputs, cfg, layer)
    assert not cache["clip"].all(), "some entries are clipped"
    assert not rows["H"]["passed"]
