"""The GPT-2 model of SPEC 2.7 (refimpl/gpt2.py) written again in JAX, plainly, over the oracle's
parameter names, for the cross-test tests/peers/test_peer_jax.py. Importing this module imports JAX.

Shapes: B prompts, T tokens, n = T / 2 pairs, d token width, E model width, nh heads, K = E / nh
head size, L blocks. Weights (in, out): y = x @ W + b.
"""
import jax
import jax.numpy as jnp

LN_EPS = 1e-5


def layer_norm(x, params, prefix):
    mean = x.mean(-1, keepdims=True)  # (B, T, 1)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # (B, T, 1): the biased variance
    return (x - mean) / jnp.sqrt(var + LN_EPS) * params[prefix + ".scale"] + params[prefix + ".offset"]


def causal_attention(h, params, prefix, nh):
    """softmax(Q K^T / sqrt(K)), each token attending to itself and the ones before it."""
    B, T, E = h.shape
    K = E // nh

    def heads(name):  # (B, T, nh, K)
        return (h @ params[f"{prefix}.W_{name}"] + params[f"{prefix}.b_{name}"]).reshape(B, T, nh, K)

    q, k, v = heads("q"), heads("k"), heads("v")
    scores = jnp.einsum("bthk,bshk->bhts", q, k) / jnp.sqrt(jnp.asarray(K, h.dtype))  # (B, nh, T, T)
    causal = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]  # (T, T): t sees s <= t
    a = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    o = jnp.einsum("bhts,bshk->bthk", a, v).reshape(B, T, E)
    return o @ params[prefix + ".W_p"] + params[prefix + ".b_p"]  # (B, T, E)


def mlp(h, params, prefix):
    """W2 gelu(W1 h + b1) + b2, GELU in its tanh form."""
    u = jax.nn.gelu(h @ params[prefix + ".W1"] + params[prefix + ".b1"], approximate=True)  # (B, T, F)
    return u @ params[prefix + ".W2"] + params[prefix + ".b2"]  # (B, T, E)


def predictions(params, tokens, cfg):
    """tokens (B, T, d) -> predictions (B, n), read out at the x positions 0, 2, 4, ..."""
    T = tokens.shape[1]
    h = tokens @ params["read_in.W"] + params["read_in.b"] + params["pos"][:T]  # (B, T, E)
    for l in range(cfg.num_layers):
        p = f"block{l}"
        h = h + causal_attention(layer_norm(h, params, p + ".ln1"), params, p + ".attn", cfg.num_heads)
        h = h + mlp(layer_norm(h, params, p + ".ln2"), params, p + ".mlp")
    h = layer_norm(h, params, "ln_f")  # (B, T, E)
    return (h[:, 0::2] @ params["read_out.W"] + params["read_out.b"])[..., 0]  # (B, n)


def loss(params, tokens, targets, cfg):
    """(mean squared error over (B, n), no 1/2; the predictions)."""
    pred = predictions(params, tokens, cfg)
    return jnp.mean((pred - targets) ** 2), pred


def loss_and_grads(params, tokens, targets, cfg):
    """(loss, predictions (B, n), {name: d loss / d param}, d loss / d tokens (B, T, d)), one
    compiled program; the gradient of pos is the whole (2n, E) parameter's."""
    def run(params, tokens, targets):
        (value, pred), (dparams, dtokens) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
            params, tokens, targets, cfg)
        return value, pred, dparams, dtokens

    return jax.jit(run)(params, tokens, targets)
