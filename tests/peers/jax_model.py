"""The transformer of SPEC 2.3-2.6 written in JAX, once: over the public notebooks' Haiku parameter
tree for the cross-test (tests/peers/test_peer_jax.py), over refimpl's names for the benchmark peer
(benchmarks/peers.py). Importing this module imports JAX.

Shapes: B tasks, T tokens, S attended tokens (T, or T - 1 without the query), D width, H heads,
K key size, F MLP width, L layers.
"""
import jax
import jax.numpy as jnp
import numpy as np

from tests.peers.weights import attention_set

ROOT = "transformer"  # the notebooks' top module


def layer_norm(x, scale_offset):
    scale, offset = scale_offset
    mean = x.mean(-1, keepdims=True)  # (B, T, 1)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # (B, T, 1)
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + offset


def mlp(x, W_1, b_1, W_2, b_2):
    """W_2 gelu(W_1 x + b_1) + b_2, GELU in its tanh form (the notebooks' jax.nn.gelu default)."""
    return jax.nn.gelu(x @ W_1 + b_1, approximate=True) @ W_2 + b_2  # (B, T, D)


def attention(h, w, cfg, layer):
    """sum_s a(q_t, k_s) v_s W_p over the heads: a = q.k (linear) or softmax(q.k / sqrt(K))."""
    B, T, _ = h.shape
    S = T if cfg.include_query else T - 1
    H, K = cfg.num_heads, cfg.key_size
    q = (h @ w["W_q"]).reshape(B, T, H, K)
    k = (h[:, :S] @ w["W_k"]).reshape(B, S, H, K)
    v = (h[:, :S] @ w["W_v"]).reshape(B, S, H, K)
    a = jnp.einsum("bthk,bshk->bhts", q, k)  # (B, H, T, S)
    if cfg.layer_attention(layer) == "softmax":
        a = a / jnp.sqrt(jnp.asarray(K, h.dtype))
        if cfg.causal:
            a = jnp.where(jnp.arange(S)[None, :] <= jnp.arange(T)[:, None], a, -jnp.inf)
        a = jax.nn.softmax(a, axis=-1)
    o = jnp.einsum("bhts,bshk->bthk", a, v).reshape(B, T, H * K)
    return o @ w["W_p"]  # (B, T, D)


def readouts(weights, tokens, cfg):
    """Readouts (L, B): -x_{query, label} after each layer, for a weights view (tests/peers/weights.py)."""
    x = tokens  # (B, T, D_in)
    if weights["embed"] is not None:
        x = x @ weights["embed"]  # (B, T, D)
    if weights["input_mlp"] is not None:
        x = x + mlp(x, *weights["input_mlp"])
    label_only = jnp.zeros(x.shape[-1], x.dtype).at[-1].set(1) if cfg.y_update else None  # (D,)
    reads = []
    for l in range(cfg.num_layers):
        w = weights["sets"][cfg.param_layer(l)]
        u = attention(x if w["ln1"] is None else layer_norm(x, w["ln1"]), w, cfg, l)  # (B, T, D)
        if label_only is not None:
            u = u * label_only
        x = x + cfg.dampening * u
        if cfg.token_clip > 0:
            x = jnp.clip(x, -cfg.token_clip, cfg.token_clip)
        if w["mlp"] is not None:
            x = x + cfg.dampening * mlp(x if w["ln2"] is None else layer_norm(x, w["ln2"]), *w["mlp"])
        reads.append(-x[:, -1, -1])  # (B,)
    return jnp.stack(reads)  # (L, B)


# ----------------------------------------------------------------------------------------------
# The notebooks' Haiku tree: {module path: {leaf: array}}
def haiku_paths(cfg, p):
    """Module paths of parameter set p: attention, LayerNorm before it, LayerNorm before the MLP, MLP."""
    if cfg.weight_tied:
        return "multi_head_attention", "l_norm/layer_norm", "l_norm_1/layer_norm", "mlp"
    suffix = "" if p == 0 else f"_{p}"
    return f"layer_{p}", f"norm_{p}", f"layer_norm{suffix}", f"mlp{suffix}"


def haiku_tree(cfg, rng, weight_scale):
    """Random parameters under the public code's module names; std = weight_scale / sqrt(fan_in)."""
    D = cfg.embed_dim or cfg.token_dim
    HK, F = cfg.num_heads * cfg.key_size, cfg.mlp_widening * D
    tree = {}

    def linear(name, n_in, n_out, bias):
        tree[f"{ROOT}/{name}"] = {"w": rng.standard_normal((n_in, n_out)) * weight_scale / np.sqrt(n_in)}
        if bias:
            tree[f"{ROOT}/{name}"]["b"] = 0.3 * rng.standard_normal(n_out)

    def norm(name):
        tree[f"{ROOT}/{name}"] = {"scale": 1 + 0.3 * rng.standard_normal(D),
                                  "offset": 0.3 * rng.standard_normal(D)}

    if cfg.embed_dim:
        linear("emb", cfg.token_dim, D, bias=False)
    if cfg.input_mlp:
        linear("input_mlp/linear", D, F, bias=True)
        linear("input_mlp/linear_1", F, D, bias=True)
    for p in range(1 if cfg.weight_tied else cfg.num_layers):
        attn, ln1, ln2, mlp_name = haiku_paths(cfg, p)
        for proj in ("query", "key", "value"):
            linear(f"{attn}/{proj}", D, HK, bias=False)
        linear(f"{attn}/linear", HK, D, bias=False)
        if cfg.layernorm and (cfg.weight_tied or p > 0):
            norm(ln1)
        if cfg.mlp:
            if cfg.layernorm:
                norm(ln2)
            linear(f"{mlp_name}/linear", D, F, bias=True)
            linear(f"{mlp_name}/linear_1", F, D, bias=True)
    return tree


def from_haiku_tree(tree, cfg):
    """The weights view of a Haiku tree (what tree_readouts reads)."""
    P = lambda name: tree.get(f"{ROOT}/{name}")  # noqa: E731
    two_linears = lambda name: (P(name + "/linear")["w"], P(name + "/linear")["b"],  # noqa: E731
                                P(name + "/linear_1")["w"], P(name + "/linear_1")["b"])
    norm = lambda name: None if P(name) is None else (P(name)["scale"], P(name)["offset"])  # noqa: E731
    sets = []
    for p in range(1 if cfg.weight_tied else cfg.num_layers):
        attn, ln1, ln2, mlp_name = haiku_paths(cfg, p)
        sets.append(attention_set(*(P(f"{attn}/{n}")["w"] for n in ("query", "key", "value", "linear")),
                                  ln1=norm(ln1), ln2=norm(ln2) if cfg.mlp else None,
                                  mlp=two_linears(mlp_name) if cfg.mlp else None))
    return {"embed": P("emb")["w"] if cfg.embed_dim else None,
            "input_mlp": two_linears("input_mlp") if cfg.input_mlp else None, "sets": sets}


def tree_readouts(tree, tokens, cfg):
    """The public code's forward pass over its Haiku tree: readouts (L, B)."""
    return readouts(from_haiku_tree(tree, cfg), jnp.asarray(tokens), cfg)
