"""Cross-test against JAX autodiff: the model written independently in JAX over the public
notebooks' Haiku parameter tree, gradients by jax.grad, imported with `from_haiku`, exported to
the exchange format, and checked by `crosscheck` at float64 tolerances.

Skipped (with the reason) when JAX is not installed: `pip install -e .[peers]`.
"""
import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is an optional extra: pip install -e .[peers]")
jnp = pytest.importorskip("jax.numpy")

from tests.peers.cases import CASES, WEIGHT_SCALE, export_and_check, make_data  # noqa: E402
from iclgd.interop.convert import from_haiku  # noqa: E402

ROOT = "transformer"  # the notebooks' top module


@pytest.fixture(scope="module", autouse=True)
def float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def haiku_tree(cfg, rng):
    """Random parameters under the public code's module names: {module path: {leaf: array}}."""
    D = cfg.embed_dim or cfg.token_dim
    HK, F = cfg.num_heads * cfg.key_size, cfg.mlp_widening * D
    tree = {}

    def linear(name, n_in, n_out, bias):
        tree[f"{ROOT}/{name}"] = {"w": rng.standard_normal((n_in, n_out)) * WEIGHT_SCALE / np.sqrt(n_in)}
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
    for l in range(1 if cfg.weight_tied else cfg.num_layers):
        attn = "multi_head_attention" if cfg.weight_tied else f"layer_{l}"
        for proj in ("query", "key", "value"):
            linear(f"{attn}/{proj}", D, HK, bias=False)
        linear(f"{attn}/linear", HK, D, bias=False)
        if cfg.layernorm and (cfg.weight_tied or l > 0):
            norm("l_norm/layer_norm" if cfg.weight_tied else f"norm_{l}")
        if cfg.mlp:
            suffix = "" if (cfg.weight_tied or l == 0) else f"_{l}"
            if cfg.layernorm:
                norm("l_norm_1/layer_norm" if cfg.weight_tied else f"layer_norm{suffix}")
            linear(f"mlp{suffix}/linear", D, F, bias=True)
            linear(f"mlp{suffix}/linear_1", F, D, bias=True)
    return tree


def jax_readouts(tree, tokens, cfg):
    """The public code's forward pass, written over the Haiku tree: readouts (L, B)."""
    P = lambda name: tree[f"{ROOT}/{name}"]  # noqa: E731
    nh, K = cfg.num_heads, cfg.key_size

    def linear(x, m):
        return x @ m["w"] + m["b"] if "b" in m else x @ m["w"]

    def layer_norm(x, m):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-5) * m["scale"] + m["offset"]

    def mlp(x, name):
        return linear(jax.nn.gelu(linear(x, P(name + "/linear")), approximate=True), P(name + "/linear_1"))

    def attention(h, name, softmax):
        b, t, _ = h.shape
        kv = h if cfg.include_query else h[:, :-1]
        q = linear(h, P(name + "/query")).reshape(b, t, nh, K)
        k = linear(kv, P(name + "/key")).reshape(b, kv.shape[1], nh, K)
        v = linear(kv, P(name + "/value")).reshape(b, kv.shape[1], nh, K)
        logits = jnp.einsum("bthd,bThd->bhtT", q, k)
        weights = jax.nn.softmax(logits / np.sqrt(K), axis=-1) if softmax else logits
        out = jnp.einsum("bhtT,bThd->bthd", weights, v).reshape(b, t, nh * K)
        return linear(out, P(name + "/linear"))

    lam, h = cfg.dampening, jnp.asarray(tokens)
    if cfg.embed_dim:
        h = linear(h, P("emb"))
    if cfg.input_mlp:
        h = h + mlp(h, "input_mlp")
    reads = []
    for l in range(cfg.num_layers):
        if cfg.weight_tied:
            name, ln2, mlp_name = "multi_head_attention", "l_norm_1/layer_norm", "mlp"
            h_norm = layer_norm(h, P("l_norm/layer_norm")) if cfg.layernorm else h
        else:
            suffix = "" if l == 0 else f"_{l}"
            name, ln2, mlp_name = f"layer_{l}", f"layer_norm{suffix}", f"mlp{suffix}"
            h_norm = layer_norm(h, P(f"norm_{l}")) if (cfg.layernorm and l > 0) else h
        a = attention(h_norm, name, cfg.attention == "softmax")
        if cfg.y_update:
            h = h.at[:, :, -1].add(lam * a[:, :, -1])
        else:
            h = h + lam * a
        if cfg.token_clip > 0:
            h = jnp.clip(h, -cfg.token_clip, cfg.token_clip)
        if cfg.mlp:
            h = h + lam * mlp(layer_norm(h, P(ln2)) if cfg.layernorm else h, mlp_name)
        reads.append(-h[:, -1, -1])
    return jnp.stack(reads)


@pytest.mark.parametrize("case", sorted(CASES))
def test_jax_autodiff_agrees_with_the_oracle(tmp_path, rng, case):
    cfg = CASES[case]
    tree = haiku_tree(cfg, rng)
    tokens, targets = make_data(cfg, rng)

    def loss(tree, tokens):
        readouts = jax_readouts(tree, tokens, cfg)  # (L, B)
        return 0.5 * jnp.mean((readouts[-1] - targets) ** 2), readouts

    @jax.jit  # one compilation for everything
    def autodiff(tree, tokens):
        (value, readouts), (dtree, dtokens) = jax.value_and_grad(loss, (0, 1), has_aux=True)(tree, tokens)
        # d y_hat_b / d tokens_b: the gradient of the sum, since task b's prediction sees only task b
        dpred = jax.grad(lambda x: jax_readouts(tree, x, cfg)[-1].sum())(tokens)
        return value, readouts, dtree, dtokens, dpred

    value, readouts, dtree, dtokens, dpred = autodiff(tree, tokens)
    readouts = np.asarray(readouts)
    assert readouts.dtype == np.float64 and np.asarray(dtokens).dtype == np.float64
    params = from_haiku(tree, cfg)
    grads = from_haiku(jax.tree_util.tree_map(np.asarray, dtree), cfg)
    results = {"predictions": readouts[-1], "readouts": readouts, "loss": np.asarray(value),
               "input_grads": np.asarray(dtokens), "prediction_grads": np.asarray(dpred)}
    results.update({"grads/" + n: g for n, g in grads.items()})
    export_and_check(tmp_path, cfg, params, tokens, targets, results)
