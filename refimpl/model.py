"""The transformer of SPEC 2.3-2.6: front end, L blocks (deep or weight-tied), read-out per layer.

Shape legend: B tasks, T tokens, D_in input width, D model width, L layers (applications).
    x = tokens                                             (B, T, D_in)
    [concat positional encoding] [embedding] [x + input MLP(x)] [add positional encoding]
    for l in 0..L-1 (parameter set p = 0 if weight-tied else l):
        x = x + lambda * mask_y * Attn_l(LN1_l(x))         attention over S key tokens
        x = clip(x, -c, c)                                 if token_clip > 0
        x = x + lambda * MLP_l(LN2_l(x))                   if mlp
        readout[l] = -x[:, -1, -1]                         SPEC 2.6: minus the query's last coordinate
Keys and values: the first T - 1 tokens (all but the query), or all T with include_query.
mask_y keeps only the last column of the attention update when y_update is set.
"""
import numpy as np

from . import attention, layers
from .config import ModelConfig
from .params import check_params
from .validate import array_module, check_array, check_same_dtype

ATTENTION = {
    "linear": (attention.lsa_forward, attention.lsa_backward),
    "softmax": (attention.softmax_attention_forward, attention.softmax_attention_backward),
}


def _sub(params, prefix):
    """The parameters under `prefix.` with the prefix stripped."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def _add_grads(grads, prefix, sub):
    """grads[prefix.name] += sub[name]: a weight-tied block's gradients sum over applications."""
    for name, g in sub.items():
        key = f"{prefix}.{name}"
        if key in grads:
            grads[key] = grads[key] + g
        else:
            grads[key] = g


def y_update_mask(D, dtype):
    mask = np.zeros(D, dtype)  # (D,)
    mask[-1] = 1
    return mask


def check_tokens(tokens, cfg: ModelConfig, name="tokens"):
    check_array(name, tokens, ndim=3)
    if tokens.shape[2] != cfg.token_dim:
        raise ValueError(f"{name}: expected token width token_dim = {cfg.token_dim}, got shape {tokens.shape}")
    if tokens.shape[1] < 2 and not cfg.include_query:
        raise ValueError(f"{name}: expected at least 2 tokens (context + query), got shape {tokens.shape}")
    if tokens.shape[0] < 1:
        raise ValueError(f"{name}: expected at least one task, got shape {tokens.shape}")
    return tokens


def model_forward(params, tokens, cfg: ModelConfig):
    """tokens (B, T, D_in) -> (readouts (L, B), cache). readouts[-1] is the prediction y_hat."""
    check_tokens(tokens, cfg)
    check_params(params, cfg)
    check_same_dtype(tokens=tokens, params=next(iter(params.values())))
    B, T, _ = tokens.shape
    lam = cfg.dampening
    cache = {"cfg": cfg, "T": T, "front": []}
    x = tokens  # (B, T, D_in)
    if cfg.pos_enc == "concat":
        x, c = layers.posenc_concat_forward(x, cfg.pos_enc_size)  # (B, T, P + D_in)
        cache["front"].append(("posenc_concat", c))
    if cfg.embed_dim:
        x, c = layers.linear_forward(x, params["embed.W"])  # (B, T, E)
        cache["front"].append(("embed", c))
    if cfg.input_mlp:
        m, c = layers.mlp_forward(x, **_sub(params, "input_mlp"))  # (B, T, E)
        x = x + m
        cache["front"].append(("input_mlp", c))
    if cfg.pos_enc == "add":
        x, c = layers.posenc_add_forward(x)  # (B, T, D)
        cache["front"].append(("posenc_add", c))
    num_keys = T if cfg.include_query else T - 1
    readouts = array_module(tokens).empty((cfg.num_layers, B), dtype=tokens.dtype)  # (L, B)
    cache["layers"] = []
    for l in range(cfg.num_layers):
        p = f"layer{cfg.param_layer(l)}"
        lc = {"prefix": p}
        a_in = x
        if cfg.layer_has_ln(l):
            a_in, lc["ln1"] = layers.layernorm_forward(x, **_sub(params, p + ".ln1"))  # (B, T, D)
        kind = cfg.layer_attention(l)
        fwd = ATTENTION[kind][0]
        kwargs = {"causal": cfg.causal} if kind == "softmax" else {}
        a, lc["attn"] = fwd(a_in, _sub(params, p + ".attn"), cfg.num_heads, num_keys, **kwargs)
        lc["kind"] = kind
        if cfg.y_update:
            a = a * array_module(a).asarray(y_update_mask(a.shape[-1], a.dtype))  # (B, T, D): x part frozen
        x = x + lam * a  # (B, T, D)
        if cfg.token_clip > 0:
            x, lc["clip"] = layers.clip_forward(x, cfg.token_clip)
        if cfg.mlp:
            m_in = x
            if cfg.layernorm:
                m_in, lc["ln2"] = layers.layernorm_forward(x, **_sub(params, p + ".ln2"))
            m, lc["mlp"] = layers.mlp_forward(m_in, **_sub(params, p + ".mlp"))  # (B, T, D)
            x = x + lam * m
        readouts[l] = -x[:, -1, -1]
        cache["layers"].append(lc)
    cache["x_shape"] = x.shape
    cache["dtype"] = x.dtype
    return readouts, cache


def model_backward(dreadouts, cache, input_grad=True):
    """dreadouts (L, B) -> (dtokens (B, T, D_in), {name: gradient}) for every parameter.

    input_grad=False (training needs only the parameter gradients) returns dtokens = None and skips
    the first layer's attention input gradient when nothing below it (LayerNorm, front end) needs it.
    """
    cfg = cache["cfg"]
    L, B = cfg.num_layers, cache["x_shape"][0]
    check_array("dreadouts", dreadouts, shape=(L, B))
    lam = cfg.dampening
    grads = {}
    dx = array_module(dreadouts).zeros(cache["x_shape"], dtype=cache["dtype"])  # (B, T, D)
    for l in reversed(range(L)):
        lc = cache["layers"][l]
        p = lc["prefix"]
        dx[:, -1, -1] -= dreadouts[l]  # readout[l] = -x[:, -1, -1]
        if cfg.mlp:
            dm_in, g = layers.mlp_backward(lam * dx, lc["mlp"])
            _add_grads(grads, p + ".mlp", g)
            if cfg.layernorm:
                dm_in, g = layers.layernorm_backward(dm_in, lc["ln2"])
                _add_grads(grads, p + ".ln2", g)
            dx = dx + dm_in  # residual + MLP branch
        if "clip" in lc:
            dx, _ = layers.clip_backward(dx, lc["clip"])
        da = lam * dx  # (B, T, D)
        if cfg.y_update:
            da = da * array_module(da).asarray(y_update_mask(da.shape[-1], da.dtype))
        needed = input_grad or l > 0 or "ln1" in lc or bool(cache["front"])
        da_in, g = ATTENTION[lc["kind"]][1](da, lc["attn"], needed)
        _add_grads(grads, p + ".attn", g)
        if not needed:
            return None, grads  # layer 0 with nothing below it: only dtokens would remain
        if "ln1" in lc:
            da_in, g = layers.layernorm_backward(da_in, lc["ln1"])
            _add_grads(grads, p + ".ln1", g)
        dx = dx + da_in  # residual + attention branch
    for kind, c in reversed(cache["front"]):
        if kind == "input_mlp":
            dm, g = layers.mlp_backward(dx, c)
            _add_grads(grads, "input_mlp", g)
            dx = dx + dm
        elif kind == "embed":
            dx, g = layers.linear_backward(dx, c)
            grads["embed.W"] = g["W"]
        elif kind == "posenc_concat":
            dx, _ = layers.posenc_concat_backward(dx, c)
        elif kind == "posenc_add":
            dx, _ = layers.posenc_add_backward(dx, c)
    return (dx if input_grad else None), grads


def predict(params, tokens, cfg):
    """y_hat (B,): the read-out after the last layer."""
    return model_forward(params, tokens, cfg)[0][-1]


def prediction_input_gradient(params, tokens, cfg):
    """d y_hat_b / d tokens_b (B, T, D_in), from the hand-written backward (SPEC 5 sensitivity)."""
    readouts, cache = model_forward(params, tokens, cfg)
    dread = np.zeros_like(readouts)  # (L, B)
    dread[-1] = 1.0
    return model_backward(dread, cache)[0]
