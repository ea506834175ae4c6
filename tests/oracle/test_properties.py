"""Properties of every op pair of the oracle, on drawn sizes (B, T, D, K ... in 1..5), dtypes
(float32, float64), values and model configs (hypothesis). Each draw either
  - spoils one thing (a NaN in a forward input, a forward input of the other dtype, or an upstream
    gradient with a NaN, an inf, a wrong shape or the other dtype): a ValueError names it; or
  - in float64: the backward agrees with central differences of sum(out * dout) for a random dout
    (refimpl.gradcheck.check_function, relative error <= 1e-6 at step 1e-6, or 1e-5 on a retry);
  - in float32: every gradient is float32 and agrees with the float64 backward on the same numbers
    to float32 tolerance (tests.conftest.backend_tolerance, on the scale of the largest gradient).
Values are uniform in [-s, s] from a Generator seeded by a drawn seed; token clipping's kink is kept
1e-3 away from every value that is clipped; draws that all but cut a tensor off are skipped
(MIN_RATIO). derandomize=True: the same examples on every run, no example database.
"""
import dataclasses
import re

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from refimpl import attention, layers
from refimpl.block import block_backward, block_forward
from refimpl.config import ModelConfig
from refimpl.gradcheck import block_check_params, check_function
from refimpl.loss import mse_backward, mse_forward
from refimpl.model import front_backward, front_forward, model_backward, model_forward
from tests.conftest import backend_tolerance
from tests.oracle.test_block import random_model_params

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)
MODEL_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)
CLIP_MARGIN = 1e-3
# Draws where some tensor's gradient is nonzero but below MIN_RATIO of the largest one are skipped:
# a clip or a saturated (or nearly uniform) softmax has all but cut that tensor off, and its numbers
# are then round-off of the others' for the finite differences (and for float32). About one drawn
# model in ten, one op in twenty.
MIN_RATIO = 1e-2
# models: small weights and tokens make the attention a tiny correction to the residual stream, whose
# gradients the finite differences then see under the residual's round-off (relative error ~1e-6)
MODEL_SCALES = (1.0, 2.0)
FAULTS = ("none",) * 6 + ("input_nan", "input_dtype", "dout_nan", "dout_inf", "dout_shape", "dout_dtype")
sizes = st.integers(1, 5)


@st.composite
def draws(draw, scales=(0.3, 1.0, 2.0)):
    """What every property draws besides its sizes: a seed, a dtype, a value range, a fault."""
    return dict(seed=draw(st.integers(0, 2**32 - 1)), dtype=draw(st.sampled_from([np.float64, np.float32])),
                scale=draw(st.sampled_from(scales)), fault=draw(st.sampled_from(FAULTS)))


def _other(dtype):
    return np.float32 if np.dtype(dtype) == np.float64 else np.float64


def _spoil(dout, fault, rng):
    """(a spoiled copy of the upstream gradient, the start of the error's text after the name)."""
    if fault in ("dout_nan", "dout_inf"):
        bad = dout.copy()
        bad.flat[rng.integers(bad.size)] = np.nan if fault == "dout_nan" else -np.inf
        return bad, "contains 1 NaN or inf value"
    if fault == "dout_dtype":
        other = np.dtype(_other(dout.dtype))
        return dout.astype(other), f"expected dtype {dout.dtype} (the forward's), got {other}"
    shape = list(dout.shape)
    kind = rng.integers(3)
    if kind == 0:
        shape = shape[1:]  # the leading axis dropped (NumPy would broadcast)
    elif kind == 1:
        shape = [1, *shape]  # an axis of 1 added in front (it would broadcast too)
    else:
        shape[rng.integers(len(shape))] += 1
    return rng.standard_normal(shape).astype(dout.dtype), "expected shape"


def smallest_gradient_ratio(grads):
    """min over the tensors with a nonzero gradient of max|gradient| / the largest max|gradient|."""
    peaks = [float(np.max(np.abs(g), initial=0.0)) for g in grads.values()]
    return min([p / max(peaks) for p in peaks if p > 0], default=1.0)


def agrees_with_central_differences(forward, backward, inputs, rng):
    """refimpl.gradcheck.check_function, each tensor passing (relative error <= 1e-6) at its step
    1e-6 or, failing that, at 1e-5: 100 times less round-off where a tensor's gradient is small
    beside the output, still a truncation error far below 1e-6 where it is not."""
    failed = {r["param"]: r["max_rel_err"] for r in check_function("fd", forward, backward, inputs, rng)
              if not r["passed"]}
    if failed:
        retry = {k: v for k, v in inputs.items() if k in failed}

        def forward_of_failed(**inp):
            return forward(**{**inputs, **inp})

        def backward_of_failed(dout, inp):
            grads = backward(dout, {**inputs, **inp})
            return {k: grads[k] for k in inp}
        rows = check_function("fd", forward_of_failed, backward_of_failed, retry, rng, step=1e-5)
        failed = {r["param"]: (failed[r["param"]], r["max_rel_err"]) for r in rows if not r["passed"]}
    assert not failed, f"relative errors above 1e-6 at steps 1e-6 and 1e-5: {failed}"


def check_case(pair, inputs, d, rng, arg="dout", faults=FAULTS):
    """pair = (forward(**inputs) -> out, backward(dout, inputs) -> {input name: gradient}).

    inputs: float64 arrays; they are cast to the drawn dtype (so the float64 checks of a float32
    draw see the same numbers). faults: those that apply (the others run as "none")."""
    forward, backward = pair
    dtype, fault = d["dtype"], d["fault"] if d["fault"] in faults else "none"
    fault = "none" if fault == "input_dtype" and len(inputs) == 1 else fault  # nothing to mismatch
    event(f"{np.dtype(dtype)} {fault}")  # --hypothesis-show-statistics: how often each branch ran
    typed = {k: v.astype(dtype) for k, v in inputs.items()}
    first = next(iter(typed))
    if fault.startswith("input"):
        bad = typed[first].copy()
        if fault == "input_nan":
            bad.flat[rng.integers(bad.size)] = np.nan
        with pytest.raises(ValueError, match=(rf"^{first}: contains 1 NaN" if fault == "input_nan"
                                              else rf"^dtype mismatch: {first}=")):
            forward(**{**typed, first: bad if fault == "input_nan" else bad.astype(_other(dtype))})
        return
    out = forward(**typed)
    assert out.dtype == dtype
    dout = rng.standard_normal(out.shape).astype(dtype)
    if fault != "none":
        bad, text = _spoil(dout, fault, rng)
        with pytest.raises(ValueError, match=f"^{arg}: {re.escape(text)}"):
            backward(bad, typed)
        return
    grads = backward(dout, typed)
    assert sorted(grads) == sorted(inputs)
    assert all(grads[k].dtype == dtype and grads[k].shape == inputs[k].shape for k in inputs)
    assume(smallest_gradient_ratio(grads) >= MIN_RATIO)
    if dtype == np.float32:
        # float32 round-off is relative to the terms a gradient sums (dout times O(1) derivatives),
        # which may cancel: judged on the scale of the largest gradient or dout entry
        want = backward(dout.astype(np.float64), {k: v.astype(np.float64) for k, v in typed.items()})
        rtol, _ = backend_tolerance(np.float32, max(v.size for v in inputs.values()))
        scale = max(float(np.max(np.abs(w), initial=0.0)) for w in [dout, *want.values()])
        for k in inputs:
            np.testing.assert_allclose(grads[k], want[k], rtol=rtol, atol=rtol * scale, err_msg=k)
        return
    agrees_with_central_differences(forward, backward, typed, rng)


def op_pair(fwd, bwd, **kw):
    """The pair of an op fwd(x, *params) -> (out, cache), bwd(dout, cache) -> (dx, grads)."""
    def backward(dout, inp):
        dx, grads = bwd(dout, fwd(**inp, **kw)[1])
        return {next(iter(inp)): dx, **grads}
    return (lambda **inp: fwd(**inp, **kw)[0]), backward


def uniform(d, rng):
    return lambda *shape: rng.uniform(-d["scale"], d["scale"], shape)


# ----------------------------------------------------------------------------------------------
# refimpl.layers
@SETTINGS
@given(d=draws(), B=sizes, T=sizes, D=sizes, F=sizes, bias=st.booleans())
def test_linear(d, B, T, D, F, bias):
    rng = np.random.default_rng(d["seed"])
    u = uniform(d, rng)
    inputs = {"x": u(B, T, D), "W": u(D, F), **({"b": u(F)} if bias else {})}
    check_case(op_pair(layers.linear_forward, layers.linear_backward), inputs, d, rng)


@SETTINGS
@given(d=draws(), B=sizes, T=sizes, D=st.sampled_from([1, 3, 4, 5]))
def test_layernorm(d, B, T, D):
    """D = 2 is left out: both xhat are +-1 up to O(eps / var), so dx is the tiny remainder of a
    cancellation, in float32 and in the finite differences alike (D = 1: dx is exactly 0)."""
    rng = np.random.default_rng(d["seed"])
    u = uniform(d, rng)
    inputs = {"x": u(B, T, D), "scale": 1 + u(D), "offset": u(D)}
    check_case(op_pair(layers.layernorm_forward, layers.layernorm_backward), inputs, d, rng)


@SETTINGS
@given(d=draws(), B=sizes, T=sizes, D=sizes)
def test_gelu(d, B, T, D):
    rng = np.random.default_rng(d["seed"])
    inputs = {"x": 2 * uniform(d, rng)(B, T, D)}
    check_case(op_pair(layers.gelu_forward, layers.gelu_backward), inputs, d, rng)


@SETTINGS
@given(d=draws(), B=sizes, T=sizes, D=sizes, F=sizes)
def test_mlp(d, B, T, D, F):
    rng = np.random.default_rng(d["seed"])
    u = uniform(d, rng)
    inputs = {"x": u(B, T, D), "W1": u(D, F), "b1": u(F), "W2": u(F, D), "b2": u(D)}
    check_case(op_pair(layers.mlp_forward, layers.mlp_backward), inputs, d, rng)


@SETTINGS
@given(d=draws(), B=sizes, T=sizes, D=sizes, P=sizes, concat=st.booleans())
def test_positional_encodings(d, B, T, D, P, concat):
    rng = np.random.default_rng(d["seed"])
    pair = (op_pair(layers.posenc_concat_forward, layers.posenc_concat_backward, size=P) if concat
            else op_pair(layers.posenc_add_forward, layers.posenc_add_backward))
    check_case(pair, {"x": uniform(d, rng)(B, T, D)}, d, rng)


@SETTINGS
@given(d=draws(), B=sizes, T=sizes, D=sizes, c=st.floats(0.1, 2.0))
def test_clip(d, B, T, D, c):
    rng = np.random.default_rng(d["seed"])
    x = uniform(d, rng)(B, T, D)
    near = np.abs(np.abs(x) - c) < CLIP_MARGIN  # the kink: moved 2e-3 outwards
    x[near] = np.sign(x[near]) * (c + 2 * CLIP_MARGIN)
    faults = [f for f in FAULTS if not f.startswith("input")]  # clipping takes NaN and inf
    check_case(op_pair(layers.clip_forward, layers.clip_backward, c=c), {"x": x}, d, rng, faults=faults)


# ----------------------------------------------------------------------------------------------
# refimpl.attention
@SETTINGS
@given(d=draws(), B=sizes, T=sizes, D=sizes, K=sizes, num_heads=st.integers(1, 3), softmax=st.booleans(),
       causal=st.booleans(), data=st.data())
def test_attention(d, B, T, D, K, num_heads, softmax, causal, data):
    rng = np.random.default_rng(d["seed"])
    u = uniform(d, rng)
    num_keys = data.draw(st.integers(1, T), label="num_keys")
    nhK = num_heads * K
    inputs = {"H": u(B, T, D), "W_q": u(D, nhK), "W_k": u(D, nhK), "W_v": u(D, nhK), "W_p": u(nhK, D)}
    fwd, bwd = attention.lsa_forward, attention.lsa_backward
    kw = dict(num_heads=num_heads, num_keys=num_keys)
    if softmax:
        fwd, bwd, kw = attention.softmax_attention_forward, attention.softmax_attention_backward, {
            **kw, "causal": causal}

    def backward(dout, inp):
        p = {k: v for k, v in inp.items() if k != "H"}
        dH, grads = bwd(dout, fwd(inp["H"], p, **kw)[1])
        return {"H": dH, **grads}

    forward = lambda H, **p: fwd(H, p, **kw)[0]  # noqa: E731
    check_case((forward, backward), inputs, d, rng)


# ----------------------------------------------------------------------------------------------
# refimpl.loss: dloss is a scalar (no dtype of its own; a wrong "shape" is an array)
@SETTINGS
@given(d=draws(), B=sizes)
def test_mse(d, B):
    rng = np.random.default_rng(d["seed"])
    u = uniform(d, rng)
    y_hat, y = u(B).astype(d["dtype"]), u(B).astype(d["dtype"])
    fault = d["fault"]
    if fault == "input_nan":
        y_hat[rng.integers(B)] = np.nan
        with pytest.raises(ValueError, match="^y_hat: contains 1 NaN"):
            mse_forward(y_hat, y)
        return
    loss, cache = mse_forward(y_hat, y)
    assert loss.dtype == d["dtype"]
    bad = {"dout_nan": np.nan, "dout_inf": np.inf, "dout_shape": np.ones(B + 1)}.get(fault)
    if bad is not None:
        with pytest.raises(ValueError, match="^dloss: expected a (finite )?real scalar"):
            mse_backward(bad, cache)
        return
    dloss = float(rng.standard_normal())
    assert mse_backward(dloss, cache).dtype == d["dtype"]
    forward = lambda y_hat, y: np.array(mse_forward(y_hat, y)[0])  # noqa: E731

    def backward(g, inp):
        dy_hat = mse_backward(g, mse_forward(inp["y_hat"], inp["y"])[1])
        return {"y_hat": dy_hat, "y": -dy_hat}

    rows = check_function("mse", forward, backward, {"y_hat": y_hat, "y": y}, rng)
    assert all(r["passed"] for r in rows), rows


# ----------------------------------------------------------------------------------------------
# refimpl.block and refimpl.model on drawn configs
@st.composite
def model_configs(draw):
    """Small configs over every option. LayerNorm only where the model is >= 3 wide: over 1 or 2
    coordinates its output is constant or +-1 (keys then coincide and softmax weights stop
    depending on W_q, W_k), so whole gradient tensors are round-off that central differences
    cannot judge relative to their own size."""
    embed_dim = draw(st.sampled_from([0, 0, 2, 3]))
    cfg = ModelConfig(
        token_dim=draw(st.integers(1, 4)), num_layers=draw(st.integers(1, 3)),
        weight_tied=draw(st.booleans()), num_heads=draw(st.integers(1, 3)), key_size=draw(st.integers(1, 4)),
        attention=draw(st.sampled_from(["linear", "softmax"])), first_layer_softmax=draw(st.booleans()),
        causal=draw(st.booleans()), include_query=draw(st.booleans()), layernorm=draw(st.booleans()),
        ln_placement=draw(st.sampled_from(["public", "pre"])), mlp=draw(st.booleans()),
        mlp_widening=draw(st.integers(1, 2)), dampening=draw(st.sampled_from([1.0, 0.75])),
        y_update=draw(st.booleans()), token_clip=draw(st.sampled_from([0.0, 0.0, 0.7, 1.5])),
        embed_dim=embed_dim, input_mlp=embed_dim > 0 and draw(st.booleans()),
        pos_enc=draw(st.sampled_from(["none", "add", "concat"])), pos_enc_size=draw(st.integers(1, 3)),
        init_scale=draw(st.sampled_from([1.0, 2.0])))
    return dataclasses.replace(cfg, layernorm=cfg.layernorm and cfg.model_dim >= 3)


def clip_margin(cfg, params, H, layers_=None):
    """min | |x| - c | over every value that token clipping sees in the given layers (inf if none):
    each layer's pre-clip values are the block's output with clipping and the MLP turned off."""
    if not cfg.token_clip:
        return np.inf
    bare, margin = dataclasses.replace(cfg, token_clip=0.0, mlp=False), np.inf
    for l in layers_ if layers_ is not None else range(cfg.num_layers):
        pre, _ = block_forward(H, params, bare, l)
        margin = min(margin, float(np.min(np.abs(np.abs(pre) - cfg.token_clip))))
        H, _ = block_forward(H, params, cfg, l)
    return margin


def check_stage(forward_fn, backward_fn, input_name, x, params, d, rng):
    """check_case for a model stage: forward_fn(x, params) -> (out, cache), backward_fn(dout, cache)
    -> (dx, grads); the upstream gradient is named dH. (The stage's input dtype must match its
    parameters', so that fault is left to the parameters.)"""
    def backward(dout, inp):
        p = {k: v for k, v in inp.items() if k != input_name}
        dx, grads = backward_fn(dout, forward_fn(inp[input_name], p)[1])
        return {input_name: dx, **grads}

    def forward(**inp):
        return forward_fn(inp.pop(input_name), inp)[0]

    faults = [f for f in FAULTS if f != "input_dtype"]
    check_case((forward, backward), {input_name: x, **params}, d, rng, "dH", faults)


def _tokens(cfg, d, rng, B):
    T = rng.integers(1 if cfg.include_query else 2, 5)
    return uniform(d, rng)(B, T, cfg.token_dim)


@MODEL_SETTINGS
@given(d=draws(MODEL_SCALES), cfg=model_configs(), B=st.integers(1, 3), data=st.data())
def test_block(d, cfg, B, data):
    rng = np.random.default_rng(d["seed"])
    layer = data.draw(st.integers(0, cfg.num_layers - 1), label="layer")
    params = block_check_params(cfg, layer, rng)
    H = _tokens(dataclasses.replace(cfg, token_dim=cfg.model_dim), d, rng, B)  # (B, T, D)
    assume(clip_margin(cfg, params, H, [layer]) > CLIP_MARGIN)

    check_stage(lambda x, p: block_forward(x, p, cfg, layer), block_backward, "H", H, params, d, rng)


@MODEL_SETTINGS
@given(d=draws(MODEL_SCALES), cfg=model_configs(), B=st.integers(1, 3))
def test_front_end(d, cfg, B):
    rng = np.random.default_rng(d["seed"])
    params = {k: v for k, v in random_model_params(cfg, rng).items() if k.startswith(("embed.", "input_mlp."))}
    tokens = _tokens(cfg, d, rng, B)

    check_stage(lambda x, p: front_forward(x, p, cfg), front_backward, "tokens", tokens, params, d, rng)


@pytest.mark.slow
@MODEL_SETTINGS
@given(d=draws(MODEL_SCALES), cfg=model_configs(), B=st.integers(1, 3))
def test_model(d, cfg, B):
    rng = np.random.default_rng(d["seed"])
    params = random_model_params(cfg, rng)
    tokens = _tokens(cfg, d, rng, B)
    assume(clip_margin(cfg, params, front_forward(tokens, params, cfg)[0]) > CLIP_MARGIN)

    def backward(dout, inp):
        p = {k: v for k, v in inp.items() if k != "tokens"}
        dtokens, grads = model_backward(dout, model_forward(p, inp["tokens"], cfg)[1])
        return {"tokens": dtokens, **grads}

    forward = lambda tokens, **p: model_forward(p, tokens, cfg)[0]  # noqa: E731
    check_case((forward, backward), {"tokens": tokens, **params}, d, rng, "dreadouts")
