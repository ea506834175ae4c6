"""Finite-difference checks of every hand-written backward (SPEC 7), run by `iclgd gradcheck`.

For a function f(inputs) -> out, a random upstream gradient g (never all ones) defines the scalar
phi = sum(f(inputs) * g). The analytic gradient of phi w.r.t. each input comes from the backward;
the numerical one from central differences with step h = 1e-6 in float64:
    element-wise  (phi(x + h e_i) - phi(x - h e_i)) / 2h      for tensors of <= ELEMENTWISE_MAX entries
    directional   (phi(x + h v) - phi(x - h v)) / 2h vs <grad, v>, NUM_DIRECTIONS random unit v, else.
Relative error |a - n| / max(|a|, |n|, floor). The floor is FLOOR_FRACTION (1e-2) of the tensor's largest
gradient entry: with h = 1e-6 the round-off of a difference is ~1e-9 absolute on these models, so
an entry a hundred times smaller than its tensor's largest one is judged on the tensor's scale (a
wrong backward is off by O(1) on the large entries and fails by orders of magnitude; the tests
include a backward wrong by 1e-4 relative, which fails).
Every check uses unequal sizes: T != D != K, H = 2.
"""

import numpy as np

from . import attention, layers
from .config import ModelConfig
from .loss import mse_backward, mse_forward
from .model import model_backward, model_forward
from .params import init_params

STEP = 1e-6
TOLERANCE = 1e-6  # SPEC 7: fail above
ELEMENTWISE_MAX = 400
NUM_DIRECTIONS = 24
FLOOR_FRACTION = 1e-2


def _rel_err(a, n, floor):
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)


def check_function(name, forward, backward, inputs, rng, step=STEP):
    """Compare backward with central differences for every input of `forward`.

    forward(**inputs) -> out (ndarray); backward(dout, inputs) -> {input name: gradient}.
    Returns a list of {"check", "param", "max_rel_err", "passed"}.
    """
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
    rows = []
    for pname, x in inputs.items():
        a = np.asarray(analytic[pname], dtype=np.float64)
        if a.shape != x.shape:
            raise AssertionError(f"{name}: gradient of {pname} has shape {a.shape}, expected {x.shape}")
        floor = max(FLOOR_FRACTION * float(np.max(np.abs(a), initial=0.0)), 1e-300)
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
B, T, D, K, H = 3, 7, 5, 3, 2  # unequal sizes on purpose


def _op_checks(rng):
    r = rng.standard_normal
    x3 = r((B, T, D))
    attn_params = {"W_q": r((D, H * K)), "W_k": r((D, H * K)), "W_v": r((D, H * K)), "W_p": r((H * K, D))}

    def pair(fwd, bwd, **kw):
        """Wrap an op pair whose first argument is the input `x`/`H`, with parameters after."""
        def forward(**inp):
            return fwd(**inp, **kw)[0]

        def backward(dout, inp):
            _, cache = fwd(**inp, **kw)
            dx, grads = bwd(dout, cache)
            first = next(iter(inp))
            return {first: dx, **grads}
        return forward, backward

    def attn(fwd, bwd, **kw):
        def forward(H, **p):
            return fwd(H, p, num_heads=2, **kw)[0]

        def backward(dout, inp):
            p = {k: v for k, v in inp.items() if k != "H"}
            _, cache = fwd(inp["H"], p, num_heads=2, **kw)
            dH, grads = bwd(dout, cache)
            return {"H": dH, **grads}
        return forward, backward

    checks = [
        ("linear", *pair(layers.linear_forward, layers.linear_backward),
         {"x": x3, "W": r((D, K)), "b": r(K)}),
        ("linear_nobias", *pair(layers.linear_forward, layers.linear_backward),
         {"x": x3, "W": r((D, K))}),
        ("layernorm", *pair(layers.layernorm_forward, layers.layernorm_backward),
         {"x": x3, "scale": r(D), "offset": r(D)}),
        ("gelu", *pair(layers.gelu_forward, layers.gelu_backward), {"x": 2 * x3}),
        ("mlp", *pair(layers.mlp_forward, layers.mlp_backward),
         {"x": x3, "W1": r((D, 4 * D)), "b1": r(4 * D), "W2": r((4 * D, D)), "b2": r(D)}),
        ("posenc_concat", *pair(layers.posenc_concat_forward, layers.posenc_concat_backward, size=4),
         {"x": x3}),
        ("posenc_add", *pair(layers.posenc_add_forward, layers.posenc_add_backward), {"x": x3}),
        ("token_clip", *pair(layers.clip_forward, layers.clip_backward, c=0.8), {"x": x3}),
        ("lsa", *attn(attention.lsa_forward, attention.lsa_backward), {"H": x3, **attn_params}),
        ("lsa_include_query", *attn(attention.lsa_forward, attention.lsa_backward, num_keys=T),
         {"H": x3, **attn_params}),
        ("softmax_attention", *attn(attention.softmax_attention_forward,
                                    attention.softmax_attention_backward), {"H": x3, **attn_params}),
        ("softmax_attention_causal", *attn(attention.softmax_attention_forward,
                                           attention.softmax_attention_backward, causal=True),
         {"H": x3, **attn_params}),
    ]

    def mse_fwd(y_hat, y):
        return np.array(mse_forward(y_hat, y)[0])

    def mse_bwd(dout, inp):
        _, cache = mse_forward(inp["y_hat"], inp["y"])
        dy_hat = mse_backward(float(dout), cache)
        return {"y_hat": dy_hat, "y": -dy_hat}

    checks.append(("mse_loss", mse_fwd, mse_bwd, {"y_hat": r(B), "y": r(B)}))
    return checks


# ----------------------------------------------------------------------------------------------
# whole-model checks: every parameter and the input tokens; the upstream gradient covers the
# read-outs of every layer
MODEL_CHECKS = {
    "model_lsa_1layer": ModelConfig(token_dim=D, key_size=K, num_heads=H, init_scale=1.0),
    "model_lsa_deep3_clip": ModelConfig(token_dim=D, key_size=K, num_heads=H, num_layers=3,
                                        token_clip=1.5, init_scale=4.0),
    "model_lsa_tied2_dampened": ModelConfig(token_dim=D, key_size=K, num_heads=H, num_layers=2,
                                            weight_tied=True, dampening=0.75, init_scale=2.0),
    "model_lsa_tied3_y_update": ModelConfig(token_dim=D, key_size=K, num_heads=H, num_layers=3,
                                            weight_tied=True, dampening=0.75, y_update=True,
                                            init_scale=3.0),
    "model_softmax_2head_ln_mlp": ModelConfig(token_dim=D, key_size=K, num_heads=H, num_layers=2,
                                              attention="softmax", layernorm=True, mlp=True,
                                              init_scale=2.0),
    "model_softmax_causal_preln": ModelConfig(token_dim=D, key_size=K, num_heads=H, num_layers=2,
                                              attention="softmax", causal=True, layernorm=True,
                                              ln_placement="pre", mlp=True, init_scale=2.0),
    "model_first_softmax_posconcat": ModelConfig(token_dim=D, key_size=K, num_heads=H, num_layers=2,
                                                 first_layer_softmax=True, pos_enc="concat",
                                                 pos_enc_size=4, init_scale=2.0),
    "model_tied_ln_public": ModelConfig(token_dim=D, key_size=K, num_heads=H, num_layers=2,
                                        weight_tied=True, layernorm=True, init_scale=2.0),
    "model_sine_embed_inputmlp": ModelConfig(token_dim=2, key_size=K, num_heads=H, embed_dim=6,
                                             input_mlp=True, pos_enc="add", init_scale=0.5),
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


def all_checks(rng):
    return _op_checks(rng) + [_model_check(n, c, rng) for n, c in MODEL_CHECKS.items()]


def run_all(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for name, fwd, bwd, inputs in all_checks(rng):
        rows += check_function(name, fwd, bwd, inputs, rng)
    return rows
