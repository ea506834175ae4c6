"""One transformer block of SPEC 2.3 as a forward/backward pair: layer `layer` of a deep model, or
application `layer` of the weight-tied block.

Shape legend: B tasks, T tokens, D model width, N keys, nh = num_heads heads, K key size.
    H                                                     (B, T, D) the token matrix
    H = H + lambda * mask_y * Attn(LN1(H))                LN1 where cfg.layer_has_ln(layer);
                                                          Attn linear or softmax: cfg.layer_attention(layer)
    H = clip(H, -c, c)                                    if token_clip = c > 0
    H = H + lambda * MLP(LN2(H))                          if mlp (LN2 if layernorm)
lambda = dampening. mask_y keeps only the last column of the attention update when y_update is set.
Keys and values: the first N = T - 1 tokens (all but the query), or all N = T with include_query.
Parameters are the model's flat names (refimpl.params) of set p = cfg.param_layer(layer):
layer{p}.ln1.*, layer{p}.attn.{W_q, W_k, W_v, W_p}, layer{p}.ln2.*, layer{p}.mlp.*; the gradients
come back under the same names.
"""
import numpy as np

from . import attention, layers
from .params import params_under
from .validate import array_module, check_array, check_upstream

ATTENTION = {
    "linear": (attention.lsa_forward, attention.lsa_backward),
    "softmax": (attention.softmax_attention_forward, attention.softmax_attention_backward),
}


def _named(prefix, sub):
    """{prefix.name: gradient} from an op's {name: gradient}."""
    return {f"{prefix}.{name}": g for name, g in sub.items()}


def y_update_mask(D, dtype):
    """(D,) with a 1 in the last (label) column only: the y_update option keeps the x part frozen."""
    mask = np.zeros(D, dtype)  # (D,)
    mask[-1] = 1
    return mask


def num_keys(cfg, num_tokens):
    """N: the leading tokens that are keys and values (all but the query, or all with include_query)."""
    return num_tokens if cfg.include_query else num_tokens - 1


def block_forward(H, params, cfg, layer):
    """H (B, T, D) -> (H after the block (B, T, D), cache) for application `layer` of cfg's model.

    params: the model's flat parameter mapping (only set cfg.param_layer(layer) is read).
    """
    check_array("H", H, ndim=3)
    p = f"layer{cfg.param_layer(layer)}"
    lam = cfg.dampening
    cache = {"cfg": cfg, "prefix": p}
    a_in = H  # (B, T, D)
    if cfg.layer_has_ln(layer):
        a_in, cache["ln1"] = layers.layernorm_forward(H, **params_under(params, p + ".ln1"))  # (B, T, D)
    kind = cfg.layer_attention(layer)
    kwargs = {"causal": cfg.causal} if kind == "softmax" else {}
    a, cache["attn"] = ATTENTION[kind][0](a_in, params_under(params, p + ".attn"), cfg.num_heads,
                                          num_keys(cfg, H.shape[1]), **kwargs)  # (B, T, D)
    cache["kind"] = kind
    if cfg.y_update:
        a = a * array_module(a).asarray(y_update_mask(a.shape[-1], a.dtype))  # (B, T, D): x part frozen
    H = H + lam * a  # (B, T, D)
    if cfg.token_clip > 0:
        H, (cache["clip"], _) = layers.clip_forward(H, cfg.token_clip)  # (B, T, D); the bare mask
    if cfg.mlp:
        m_in = H  # (B, T, D)
        if cfg.layernorm:
            m_in, cache["ln2"] = layers.layernorm_forward(H, **params_under(params, p + ".ln2"))  # (B, T, D)
        m, cache["mlp"] = layers.mlp_forward(m_in, **params_under(params, p + ".mlp"))  # (B, T, D)
        H = H + lam * m  # (B, T, D)
    cache["out_shape"], cache["dtype"] = H.shape, H.dtype  # what block_backward's dH must be
    return H, cache


def block_backward(dH, cache, input_grad=True):
    """dH (B, T, D) at the block's output -> (dH at its input (B, T, D), {name: gradient}).

    input_grad=False: the caller needs no gradient of the block's input (layer 0 with nothing below
    it, in training); dH comes back None and the attention's input gradient is skipped unless LN1's
    parameters need it. Steps in the reverse order of block_forward.
    """
    cfg, p = cache["cfg"], cache["prefix"]
    check_upstream("dH", dH, cache["out_shape"], cache["dtype"])
    lam = cfg.dampening
    grads = {}
    if "mlp" in cache:
        dm_in, g = layers.mlp_backward(lam * dH, cache["mlp"])  # (B, T, D)
        grads.update(_named(p + ".mlp", g))
        if "ln2" in cache:
            dm_in, g = layers.layernorm_backward(dm_in, cache["ln2"])  # (B, T, D)
            grads.update(_named(p + ".ln2", g))
        dH = dH + dm_in  # residual + MLP branch
    if "clip" in cache:
        dH, _ = layers.clip_backward(dH, (cache["clip"], cache["dtype"]))  # (B, T, D)
    da = lam * dH  # (B, T, D)
    if cfg.y_update:
        da = da * array_module(da).asarray(y_update_mask(da.shape[-1], da.dtype))
    attn_input_grad = input_grad or "ln1" in cache
    da_in, g = ATTENTION[cache["kind"]][1](da, cache["attn"], attn_input_grad)  # (B, T, D) or None
    grads.update(_named(p + ".attn", g))
    if "ln1" in cache:
        da_in, g = layers.layernorm_backward(da_in, cache["ln1"])  # (B, T, D)
        grads.update(_named(p + ".ln1", g))
    if not input_grad:
        return None, grads
    return dH + da_in, grads  # residual + attention branch
