"""Finite-difference checks of every hand-written backward (SPEC 7), run by `iclgd gradcheck`.

For a function f(inputs) -> out, a random upstream gradient g (never all ones) defines the scalar
phi = sum(f(inputs) * g). The analytic gradient of phi w.r.t. each input comes from the backward;
the numerical one from central differences with step h = 1e-6 (1e-5 for GPT-2, see GPT2_STEP) in float64:
    element-wise  (phi(x + h e_i) - phi(x - h e_i)) / 2h      for tensors of <= ELEMENTWISE_MAX entries
    directional   (phi(x + h v) - phi(x - h v)) / 2h vs <grad, v>, NUM_DIRECTIONS random unit v, else.
Relative error |a - n| / max(|a|, |n|, floor). The floor is FLOOR_FRACTION (1e-2) of the tensor's largest
gradient entry: with h = 1e-6 the round-off of a difference is ~1e-9 absolute on these models, so
an entry a hundred times smaller than its tensor's largest one is judged on the tensor's scale (a
wrong backward is off by O(1) on the large entries and fails by orders of magnitude; the tests
include a backward wrong by 1e-4 relative, which fails).
A tensor whose gradient is zero by the math (GPT-2's key bias: softmax ignores a shift common
to all keys) has analytic entries ~1e-17 and differences ~1e-10 of round-off: when its largest
entry is below ZERO_FRACTION of the check's largest, the floor is taken from the check's largest
(so a backward that made it nonzero fails).
The checks: every op (refimpl.layers, refimpl.attention, the loss), whole models (refimpl.model,
every parameter and the tokens) and single blocks (refimpl.block, every parameter of the block's
set and its input H). Every check uses unequal sizes: T != D != K, num_heads = 2.
"""

import numpy as np

from . import attention, layers
from .block import block_backward, block_forward
from .config import ModelConfig
from .gradcheck_gpt2 import gpt2_checks
from .loss import mse_backward, mse_forward
from .model import model_backward, model_forward
from .params import fan_in_std, init_params, param_shapes

STEP = 1e-6
# the GPT-2 model's outputs pass LayerNorms and softmaxes: O(1) values whose round-off in a difference
# (~1e-16 / h) is not small against its smallest attention gradients at h = 1e-6; at h = 1e-5 the
# truncation error (~h^2 relative) is still ~1e-10 and the round-off ten times smaller
GPT2_STEP = 1e-5
TOLERANCE = 1e-6  # SPEC 7: fail above
ELEMENTWISE_MAX = 400
NUM_DIRECTIONS = 24
FLOOR_FRACTION = 1e-2
ZERO_FRACTION = 1e-10  # a tensor whose largest gradient entry is below this fraction of the check's largest


def _rel_err(a, n, floor):
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)


def check_function(name, forward, backward, inputs, rng, step=None):
    """Compare backward with central differences for every input of `forward`; step h: STEP, or
    GPT2_STEP for the GPT-2 checks (name "gpt2_*") unless given.

    forward(**inputs) -> out (ndarray); backward(dout, inputs) -> {input name: gradient}.
    Returns a list of {"check", "param", "max_rel_err", "passed"}.
    """
    if step is None:
        step = GPT2_STEP if name.startswith("gpt2_") else STEP
    inputs = {k: np.array(v, dtype=np.float64) for k, v in inputs.items()}
    out = forward(**inputs)
    g = rng.standard_normal(np.shape(out))  # random upstream gradient

    def dphi(name_, delta):
        """phi(x + delta) - phi(x - delta), differencing the outputs before the weighted sum so
        that the outputs a perturbation leaves unchanged cancel exactly."""
        plus = forward(**{**inputs, name_: inputs[name_] + delta})
        minus = forward(**{**inputs, name_: inputs[name_] - delta})
        return float(np.sum((plus - minus) * g))

    analytic = backward(g, inputs)
    largest = max(float(np.max(np.abs(np.asarray(analytic[k])), initial=0.0)) for k in inputs)
    rows = []
    for pname, x in inputs.items():
        a = np.asarray(analytic[pname], dtype=np.float64)
        if a.shape != x.shape:
            raise AssertionError(f"{name}: gradient of {pname} has shape {a.shape}, expected {x.shape}")
        floor = max(FLOOR_FRACTION * float(np.max(np.abs(a), initial=0.0)), 1e-300)
        if floor < ZERO_FRACTION * FLOOR_FRACTION * largest:  # a gradient that is exactly 0 by the math
            floor = FLOOR_FRACTION * largest  # (GPT-2's key bias): judged on the check's largest entry
        if x.size <= ELEMENTWISE_MAX:
            num = np.empty(x.size)
            for i in range(x.size):
                e = np.zeros(x.size)
                e[i] = step
                e = e.reshape(x.shape)
                num[i] = dphi(pname, e) / (2 * step)
            err = float(np.max(_rel_err(a.ravel(), num, floor), initial=0.0))
        else:
            errs = []
            for _ in range(NUM_DIRECTIONS):
                v = rng.standard_normal(x.shape)
                v /= np.linalg.norm(v)
                num = dphi(pname, step * v) / (2 * step)
                errs.append(float(_rel_err(np.sum(a * v), num, floor)))
            err = max(errs)
        rows.append({"check": name, "param": pname, "max_rel_err": err, "passed": bool(err <= TOLERANCE)})
    return rows


# ----------------------------------------------------------------------------------------------
# operation checks: (name, forward(**inputs) -> out, backward(dout, inputs) -> grads, inputs)
B, T, D, K, NUM_HEADS = 3, 7, 5, 3, 2  # unequal sizes on purpose


def _op_pair(fwd, bwd, **kw):
    """Wrap an op pair whose first argument is the input `x`, with parameters after."""
    def forward(**inp):
        return fwd(**inp, **kw)[0]

    def backward(dout, inp):
        _, cache = fwd(**inp, **kw)
        dx, grads = bwd(dout, cache)
        first = next(iter(inp))
        return {first: dx, **grads}
    return forward, backward


def _attention_pair(fwd, bwd, **kw):
    """Wrap an attention pair fwd(H, params, num_heads, ...): inputs H and W_q, W_k, W_v, W_p."""
    def forward(H, **p):
        return fwd(H, p, num_heads=NUM_HEADS, **kw)[0]

    def backward(dout, inp):
        p = {k: v for k, v in inp.items() if k != "H"}
        _, cache = fwd(inp["H"], p, num_heads=NUM_HEADS, **kw)
        dH, grads = bwd(dout, cache)
        return {"H": dH, **grads}
    return forward, backward


def _layer_checks(rng, x3):
    r = rng.standard_normal
    return [
        ("linear", *_op_pair(layers.linear_forward, layers.linear_backward),
         {"x": x3, "W": r((D, K)), "b": r(K)}),
        ("linear_nobias", *_op_pair(layers.linear_forward, layers.linear_backward),
         {"x": x3, "W": r((D, K))}),
        ("layernorm", *_op_pair(layers.layernorm_forward, layers.layernorm_backward),
         {"x": x3, "scale": r(D), "offset": r(D)}),
        ("gelu", *_op_pair(layers.gelu_forward, layers.gelu_backward), {"x": 2 * x3}),
        ("mlp", *_op_pair(layers.mlp_forward, layers.mlp_backward),
         {"x": x3, "W1": r((D, 4 * D)), "b1": r(4 * D), "W2": r((4 * D, D)), "b2": r(D)}),
        ("posenc_concat", *_op_pair(layers.posenc_concat_forward, layers.posenc_concat_backward, size=4),
         {"x": x3}),
        ("posenc_add", *_op_pair(layers.posenc_add_forward, layers.posenc_add_backward), {"x": x3}),
        ("token_clip", *_op_pair(layers.clip_forward, layers.clip_backward, c=0.8), {"x": x3}),
    ]


def _attention_checks(H, attn_params):
    lsa = (attention.lsa_forward, attention.lsa_backward)
    softmax = (attention.softmax_attention_forward, attention.softmax_attention_backward)
    inputs = {"H": H, **attn_params}
    return [
        ("lsa", *_attention_pair(*lsa), inputs),
        ("lsa_include_query", *_attention_pair(*lsa, num_keys=T), inputs),
        ("softmax_attention", *_attention_pair(*softmax), inputs),
        ("softmax_attention_causal", *_attention_pair(*softmax, causal=True), inputs),
    ]


def _mse_check(rng):
    def mse_fwd(y_hat, y):
        return np.array(mse_forward(y_hat, y)[0])

    def mse_bwd(dout, inp):
        _, cache = mse_forward(inp["y_hat"], inp["y"])
        dy_hat = mse_backward(float(dout), cache)
        return {"y_hat": dy_hat, "y": -dy_hat}

    return "mse_loss", mse_fwd, mse_bwd, {"y_hat": rng.standard_normal(B), "y": rng.standard_normal(B)}


def _op_checks(rng):
    """Every op of refimpl.layers, refimpl.attention and refimpl.loss; inputs drawn in this order."""
    r = rng.standard_normal
    x3 = r((B, T, D))  # (B, T, D)
    nhK = NUM_HEADS * K
    attn_params = {"W_q": r((D, nhK)), "W_k": r((D, nhK)), "W_v": r((D, nhK)), "W_p": r((nhK, D))}
    return _layer_checks(rng, x3) + _attention_checks(x3, attn_params) + [_mse_check(rng)]


# ----------------------------------------------------------------------------------------------
# whole-model checks: every parameter and the input tokens; the upstream gradient covers the
# read-outs of every layer
SIZES = dict(token_dim=D, key_size=K, num_heads=NUM_HEADS)  # the sizes every model check shares
MODEL_CHECKS = {
    "model_lsa_1layer": ModelConfig(**SIZES, init_scale=1.0),
    "model_lsa_deep3_clip": ModelConfig(**SIZES, num_layers=3, token_clip=1.5, init_scale=4.0),
    "model_lsa_tied2_dampened": ModelConfig(**SIZES, num_layers=2, weight_tied=True, dampening=0.75,
                                            init_scale=2.0),
    "model_lsa_tied3_y_update": ModelConfig(**SIZES, num_layers=3, weight_tied=True, dampening=0.75,
                                            y_update=True, init_scale=3.0),
    "model_softmax_2head_ln_mlp": ModelConfig(**SIZES, num_layers=2, attention="softmax", layernorm=True,
                                              mlp=True, init_scale=2.0),
    "model_softmax_causal_preln": ModelConfig(**SIZES, num_layers=2, attention="softmax", causal=True,
                                              layernorm=True, ln_placement="pre", mlp=True, init_scale=2.0),
    "model_first_softmax_posconcat": ModelConfig(**SIZES, num_layers=2, first_layer_softmax=True,
                                                 pos_enc="concat", pos_enc_size=4, init_scale=2.0),
    "model_tied_ln_public": ModelConfig(**SIZES, num_layers=2, weight_tied=True, layernorm=True,
                                        init_scale=2.0),
    "model_sine_embed_inputmlp": ModelConfig(**{**SIZES, "token_dim": 2}, embed_dim=6, input_mlp=True,
                                             pos_enc="add", init_scale=0.5),
}


def _model_check(name, cfg, rng):
    params = init_params(cfg, rng)
    tokens = rng.standard_normal((B, T, cfg.token_dim))

    def forward(tokens, **p):
        return model_forward(p, tokens, cfg)[0]

    def backward(dout, inp):
        p = {k: v for k, v in inp.items() if k != "tokens"}
        _, cache = model_forward(p, inp["tokens"], cfg)
        dtokens, grads = model_backward(dout, cache)
        return {"tokens": dtokens, **grads}

    return name, forward, backward, {"tokens": tokens, **params}


def _model_checks(rng):
    return [_model_check(n, c, rng) for n, c in MODEL_CHECKS.items()]


# ----------------------------------------------------------------------------------------------
# block checks: one block (refimpl.block) of a model, (cfg, layer); every parameter of its set and
# the input H. Parameters are random (LayerNorm scales near 1, offsets and biases nonzero) so that
# no backward term hides behind a 1 or a 0.
BLOCK_CHECKS = {  # name: (cfg, layer); names fit the table's column of the op and model checks
    "block_lsa_clip_yupdate_damp": (ModelConfig(**SIZES, token_clip=1.2, y_update=True, dampening=0.75,
                                                init_scale=1.0), 0),
    "block_softmax_causal_ln_mlp": (ModelConfig(**SIZES, attention="softmax", causal=True, layernorm=True,
                                                ln_placement="pre", mlp=True, mlp_widening=3,
                                                init_scale=1.0), 0),
    "block_deep_layer1_ln_mlp": (ModelConfig(**SIZES, num_layers=2, layernorm=True, mlp=True,
                                             include_query=True, init_scale=0.25), 1),  # query is a key
    "block_tied_app2_ln_mlp": (ModelConfig(**SIZES, num_layers=3, weight_tied=True, layernorm=True,
                                           mlp=True, init_scale=0.25), 2),
}


def block_check_params(cfg, layer, rng):
    """Random parameters of the set application `layer` uses: weights N(0, fan_in_std(init_scale)^2),
    LayerNorm scales 1 + N(0, 0.3^2), offsets and biases N(0, 0.3^2)."""
    prefix = f"layer{cfg.param_layer(layer)}."
    params = {}
    for name, shape in param_shapes(cfg).items():
        if not name.startswith(prefix):
            continue
        leaf = name.rsplit(".", 1)[1]
        z = rng.standard_normal(shape)
        if leaf == "scale":
            params[name] = 1.0 + 0.3 * z
        elif leaf in ("offset", "b1", "b2"):
            params[name] = 0.3 * z
        else:
            params[name] = fan_in_std(shape[0], cfg.init_scale) * z
    return params


def _block_check(name, cfg, layer, rng):
    params = block_check_params(cfg, layer, rng)
    H = rng.standard_normal((B, T, cfg.model_dim))  # (B, T, D)

    def forward(H, **p):
        return block_forward(H, p, cfg, layer)[0]

    def backward(dout, inp):
        p = {k: v for k, v in inp.items() if k != "H"}
        _, cache = block_forward(inp["H"], p, cfg, layer)
        dH, grads = block_backward(dout, cache)
        return {"H": dH, **grads}

    return name, forward, backward, {"H": H, **params}


def _block_checks(rng):
    return [_block_check(n, cfg, layer, rng) for n, (cfg, layer) in BLOCK_CHECKS.items()]


# ----------------------------------------------------------------------------------------------
def all_checks(rng):
    """Every check as (name, forward, backward, inputs): ops, whole models, blocks, then GPT-2's."""
    return _op_checks(rng) + _model_checks(rng) + _block_checks(rng) + gpt2_checks(rng)


def run_all(seed=0):
    """Rows of check_function for every check, inputs and upstream gradients from Generator(seed).

    The op and model checks draw their inputs first and run first; the block checks draw theirs
    after that, then the GPT-2 checks, so that earlier rows are the same numbers with or without
    the later groups.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for group in (lambda r: _op_checks(r) + _model_checks(r), _block_checks, gpt2_checks):
        for name, fwd, bwd, inputs in group(rng):
            rows += check_function(name, fwd, bwd, inputs, rng)
    return rows
