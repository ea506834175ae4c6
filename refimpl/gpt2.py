"""The GPT-2 style in-context model of SPEC 2.7 (Garg et al.'s model, analysed by Fu et al.), every
part a forward/backward pair.

Shape legend: B prompts, n pairs, T = 2n tokens, d token width (= input dim), E model width,
nh heads, K = E / nh head size, F = 4E MLP width, L blocks.
    tokens (B, T, d): x_i at position 2i, [y_i, 0, ..., 0] at 2i + 1 (refimpl.gaussian.interleaved_tokens)
    H = tokens @ read_in.W + read_in.b + pos[:T]                          (B, T, E)
    for l in 0..L-1 (pre-LN block):
        H = H + Attn_l(LN1_l(H))       causal softmax, nh heads, biases on q, k, v and the projection
        H = H + MLP_l(LN2_l(H))        E -> F -> E, GELU (tanh)
    H_f = LN_f(H)
    pred_i = H_f[:, 2i] . read_out.W + read_out.b                        (B, n): y_i from the pairs before
    loss = mean_{b, i} (pred_bi - y_bi)^2                                 (Garg et al.: no 1/2)
Hidden states, as Hugging Face's GPT-2 returns them: states[0] the embedding, states[l] after
block l for l < L, states[L] after the last block AND the final LayerNorm: (L + 1, B, T, E).

Parameters (weights stored (in, out), applied as x @ W):
    read_in.{W (d, E), b (E,)}           read_out.{W (E, 1), b (1,)}           pos (2n, E)
    block{l}.ln1.{scale, offset} (E,)    block{l}.ln2.{scale, offset} (E,)    ln_f.{scale, offset} (E,)
    block{l}.attn.{W_q, W_k, W_v, W_p} (E, E), {b_q, b_k, b_v, b_p} (E,)
    block{l}.mlp.{W1 (E, F), b1 (F,), W2 (F, E), b2 (E,)}
Initialisation (Hugging Face GPT2 for the transformer, PyTorch's nn.Linear for Garg et al.'s read-in
and read-out): weights and pos N(0, init_std^2); the residual projections attn.W_p and mlp.W2
N(0, init_std^2 / (2L)); biases 0, LayerNorm scales 1; read_in and read_out W and b
U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Draws in param_shapes order from one Generator.
Every function takes NumPy or CuPy arrays (the cupy-unfused backend runs this code on the GPU).
"""
import functools
import math
from dataclasses import dataclass

import numpy as np

from . import layers
from .fieldcheck import check_fields
from .validate import array_module, check_array, check_same_dtype, check_upstream


@dataclass(frozen=True)
class GPT2Config:
    input_dim: int = 20  # d: width of every token, x_i and [y_i, 0, ..., 0] (paper: 20)
    num_pairs: int = 41  # n: most pairs in a prompt; pos holds 2n positions (paper: 41)
    embed_dim: int = 256  # E: model width (paper: 256)
    num_layers: int = 12  # L: transformer blocks (paper: 12)
    num_heads: int = 8  # heads per attention, each of size E / num_heads (paper: 8)
    mlp_widening: int = 4  # F = mlp_widening * E (GPT-2: 4)
    init_std: float = 0.02  # GPT-2's initializer_range

    def __post_init__(self):
        check_fields(self, "model", {"input_dim": ">= 1", "num_pairs": ">= 1", "embed_dim": ">= 1",
                                     "num_layers": ">= 1", "num_heads": ">= 1", "mlp_widening": ">= 1",
                                     "init_std": "> 0"})
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim: expected a multiple of num_heads = {self.num_heads}, "
                             f"got {self.embed_dim}")

    @property
    def head_size(self):
        return self.embed_dim // self.num_heads

    @property
    def max_tokens(self):
        return 2 * self.num_pairs


ATTN_NAMES = ("W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_p", "b_p")


def param_shapes(cfg: GPT2Config):
    """Ordered {name: shape}: every parameter's name and shape (a new dict)."""
    return dict(_param_shapes(cfg))


@functools.lru_cache(maxsize=32)
def _param_shapes(cfg: GPT2Config):
    d, E, F = cfg.input_dim, cfg.embed_dim, cfg.mlp_widening * cfg.embed_dim
    shapes = {"read_in.W": (d, E), "read_in.b": (E,), "pos": (cfg.max_tokens, E)}
    for l in range(cfg.num_layers):
        p = f"block{l}"
        shapes.update({f"{p}.ln1.scale": (E,), f"{p}.ln1.offset": (E,)})
        for name in ATTN_NAMES:
            shapes[f"{p}.attn.{name}"] = (E, E) if name.startswith("W") else (E,)
        shapes.update({f"{p}.ln2.scale": (E,), f"{p}.ln2.offset": (E,),
                       f"{p}.mlp.W1": (E, F), f"{p}.mlp.b1": (F,), f"{p}.mlp.W2": (F, E), f"{p}.mlp.b2": (E,)})
    shapes.update({"ln_f.scale": (E,), "ln_f.offset": (E,), "read_out.W": (E, 1), "read_out.b": (1,)})
    return shapes


def init_params(cfg: GPT2Config, rng: np.random.Generator, dtype=np.float64):
    """The module docstring's initialisation, drawn in param_shapes order."""
    params = {}
    residual_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[-1]
        if name.startswith(("read_in.", "read_out.")):
            bound = 1.0 / math.sqrt(param_shapes(cfg)[name.split(".")[0] + ".W"][0])
            params[name] = rng.uniform(-bound, bound, shape).astype(dtype)
        elif leaf == "scale":
            params[name] = np.ones(shape, dtype)
        elif leaf.startswith("b") or leaf == "offset":
            params[name] = np.zeros(shape, dtype)
        else:
            std = residual_std if name.endswith(("attn.W_p", "mlp.W2")) else cfg.init_std
            params[name] = (std * rng.standard_normal(shape)).astype(dtype)
    return params


def check_params(params, cfg: GPT2Config):
    """Every expected name with its shape, no unknown names, finite, one dtype."""
    from .params import check_named_arrays  # refimpl.params imports this module in init_params
    return check_named_arrays(params, param_shapes(cfg))


def check_tokens(tokens, cfg: GPT2Config, name="tokens"):
    """tokens (B, T, d) with T even and 2 <= T <= 2n (the positions the model has)."""
    check_array(name, tokens, ndim=3)
    B, T, d = tokens.shape
    if B < 1:
        raise ValueError(f"{name}: expected at least one prompt, got shape {tokens.shape}")
    if d != cfg.input_dim:
        raise ValueError(f"{name}: expected token width input_dim = {cfg.input_dim}, got shape {tokens.shape}")
    if T % 2 or not 2 <= T <= cfg.max_tokens:
        raise ValueError(f"{name}: expected an even number of tokens in [2, {cfg.max_tokens}] (pairs x, y), "
                         f"got {T}")
    return tokens


def _under(params, prefix):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def _named(prefix, grads):
    return {f"{prefix}.{k}": g for k, g in grads.items()}


# ------------------------------------------------------------------------------ attention
def _split(x, nh):
    B, T, E = x.shape
    return x.reshape(B, T, nh, E // nh).transpose(0, 2, 1, 3)  # (B, nh, T, K)


def _merge(x):
    B, nh, T, K = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, nh * K)  # (B, T, E)


def causal_attention_forward(x, p, num_heads):
    """GPT-2's attention on x (B, T, E) with {W_q, b_q, ..., W_p, b_p}: (out (B, T, E), cache).
    A^h = softmax(Q^h K^h^T / sqrt(K) masked to s <= t); out = concat_h(A^h V^h) W_p + b_p."""
    check_array("x", x, ndim=3)
    q, cq = layers.linear_forward(x, p["W_q"], p["b_q"])  # (B, T, E)
    k, ck = layers.linear_forward(x, p["W_k"], p["b_k"])  # (B, T, E)
    v, cv = layers.linear_forward(x, p["W_v"], p["b_v"])  # (B, T, E)
    Q, Kt, V = _split(q, num_heads), _split(k, num_heads), _split(v, num_heads)  # (B, nh, T, K)
    T, K = x.shape[1], Q.shape[-1]
    scores = (Q @ Kt.transpose(0, 1, 3, 2)) / np.sqrt(K).astype(x.dtype)  # (B, nh, T, T)
    mask = array_module(x).asarray(np.arange(T)[None, :] <= np.arange(T)[:, None])  # (T, T): t sees s <= t
    scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    P = np.exp(scores)
    P = P / P.sum(axis=-1, keepdims=True)  # (B, nh, T, T)
    o = _merge(P @ V)  # (B, T, E)
    out, cp = layers.linear_forward(o, p["W_p"], p["b_p"])  # (B, T, E)
    return out, dict(cq=cq, ck=ck, cv=cv, cp=cp, Q=Q, Kt=Kt, V=V, P=P, nh=num_heads)


def causal_attention_backward(dout, cache):
    """dout (B, T, E) -> (dx (B, T, E), {W_q, b_q, ..., W_p, b_p gradients})."""
    Q, Kt, V, P, nh = cache["Q"], cache["Kt"], cache["V"], cache["P"], cache["nh"]
    do, gp = layers.linear_backward(dout, cache["cp"])  # (B, T, E)
    dO = _split(do, nh)  # (B, nh, T, K)
    dP = dO @ V.transpose(0, 1, 3, 2)  # (B, nh, T, T)
    dV = P.transpose(0, 1, 3, 2) @ dO  # (B, nh, T, K)
    dscores = P * (dP - (dP * P).sum(axis=-1, keepdims=True))  # softmax Jacobian; masked: P = 0
    dscores = dscores / np.sqrt(Q.shape[-1]).astype(dscores.dtype)
    dQ = dscores @ Kt  # (B, nh, T, K)
    dK = dscores.transpose(0, 1, 3, 2) @ Q  # (B, nh, T, K)
    dxq, gq = layers.linear_backward(_merge(dQ), cache["cq"])  # (B, T, E)
    dxk, gk = layers.linear_backward(_merge(dK), cache["ck"])
    dxv, gv = layers.linear_backward(_merge(dV), cache["cv"])
    grads = {"W_q": gq["W"], "b_q": gq["b"], "W_k": gk["W"], "b_k": gk["b"], "W_v": gv["W"], "b_v": gv["b"],
             "W_p": gp["W"], "b_p": gp["b"]}
    return dxq + dxk + dxv, grads  # x feeds q, k and v


# ------------------------------------------------------------------------------ block
def block_forward(H, params, cfg: GPT2Config, layer):
    """Pre-LN block `layer`: H (B, T, E) -> (H + Attn(LN1 H) then + MLP(LN2 H) (B, T, E), cache)."""
    p = f"block{layer}"
    a_in, c1 = layers.layernorm_forward(H, **_under(params, p + ".ln1"))  # (B, T, E)
    a, ca = causal_attention_forward(a_in, _under(params, p + ".attn"), cfg.num_heads)  # (B, T, E)
    H = H + a  # (B, T, E)
    m_in, c2 = layers.layernorm_forward(H, **_under(params, p + ".ln2"))  # (B, T, E)
    m, cm = layers.mlp_forward(m_in, **_under(params, p + ".mlp"))  # (B, T, E)
    return H + m, dict(prefix=p, c1=c1, ca=ca, c2=c2, cm=cm, shape=H.shape, dtype=H.dtype)


def block_backward(dH, cache):
    """dH (B, T, E) at the block's output -> (dH at its input, {name: gradient}); reverse order."""
    check_upstream("dH", dH, cache["shape"], cache["dtype"])
    p, grads = cache["prefix"], {}
    dm_in, g = layers.mlp_backward(dH, cache["cm"])  # (B, T, E)
    grads.update(_named(p + ".mlp", g))
    dm, g = layers.layernorm_backward(dm_in, cache["c2"])
    grads.update(_named(p + ".ln2", g))
    dH = dH + dm  # residual + MLP branch
    da_in, g = causal_attention_backward(dH, cache["ca"])
    grads.update(_named(p + ".attn", g))
    da, g = layers.layernorm_backward(da_in, cache["c1"])
    grads.update(_named(p + ".ln1", g))
    return dH + da, grads  # residual + attention branch


# ------------------------------------------------------------------------------ model
def gpt2_forward(params, tokens, cfg: GPT2Config):
    """tokens (B, T, d) -> (predictions at the x positions (B, T/2), cache); cache["states"] holds
    the hidden states (L + 1, B, T, E) of the module docstring."""
    check_tokens(tokens, cfg)
    check_params(params, cfg)
    check_same_dtype(tokens=tokens, params=params["pos"])
    T = tokens.shape[1]
    H, c_in = layers.linear_forward(tokens, params["read_in.W"], params["read_in.b"])  # (B, T, E)
    H = H + params["pos"][:T]  # (B, T, E)
    states = array_module(H).empty((cfg.num_layers + 1,) + H.shape, dtype=H.dtype)  # (L + 1, B, T, E)
    states[0] = H
    blocks = []
    for l in range(cfg.num_layers):
        H, c = block_forward(H, params, cfg, l)  # (B, T, E)
        blocks.append(c)
        states[l + 1] = H
    Hf, c_f = layers.layernorm_forward(H, params["ln_f.scale"], params["ln_f.offset"])  # (B, T, E)
    states[-1] = Hf
    X = Hf[:, 0::2]  # (B, n, E): the x positions
    out, c_out = layers.linear_forward(X, params["read_out.W"], params["read_out.b"])  # (B, n, 1)
    cache = dict(c_in=c_in, blocks=blocks, c_f=c_f, c_out=c_out, T=T, states=states,
                 pred_shape=out.shape[:2], dtype=out.dtype)
    return out[..., 0], cache


def gpt2_backward(dpred, cache, input_grad=True):
    """dpred (B, n) -> (dtokens (B, T, d) or None, {name: gradient}); the steps of gpt2_forward
    in reverse."""
    check_upstream("dpred", dpred, cache["pred_shape"], cache["dtype"])
    grads = {}
    dX, g = layers.linear_backward(dpred[..., None], cache["c_out"])  # (B, n, E)
    grads.update(_named("read_out", g))
    B, n, E = dX.shape
    dHf = array_module(dX).zeros((B, cache["T"], E), dtype=dX.dtype)  # (B, T, E): only x positions are read out
    dHf[:, 0::2] = dX
    dH, g = layers.layernorm_backward(dHf, cache["c_f"])
    grads.update(_named("ln_f", g))
    for c in reversed(cache["blocks"]):
        dH, g = block_backward(dH, c)
        grads.update(g)
    grads["pos"] = dH.sum(axis=0)  # (T, E): pos[:T] is added to every prompt (full_pos_grad pads it)
    dtokens, g = layers.linear_backward(dH, cache["c_in"])  # (B, T, d)
    grads.update(_named("read_in", g))
    return (dtokens if input_grad else None), grads


def full_pos_grad(grads, cfg: GPT2Config):
    """grads with "pos" padded from (T, E) to the parameter's (2n, E): the positions a shorter
    prompt does not reach get gradient 0."""
    g = grads["pos"]
    if g.shape[0] == cfg.max_tokens:
        return grads
    full = array_module(g).zeros((cfg.max_tokens, g.shape[1]), dtype=g.dtype)  # (2n, E)
    full[:g.shape[0]] = g
    return {**grads, "pos": full}


def mse_forward(pred, y):
    """pred, y (B, n) -> (mean (pred - y)^2, cache)."""
    check_array("pred", pred, ndim=2)
    check_array("y", y, shape=pred.shape)
    check_same_dtype(pred=pred, y=y)
    r = pred - y  # (B, n)
    return float(np.mean(r * r)), r


def mse_backward(dloss, cache):
    """d loss / d pred (B, n) times the scalar dloss."""
    r = cache
    return (2.0 * float(dloss) / r.size) * r


def loss_and_grads(params, tokens, y, cfg: GPT2Config):
    """(loss, the loss as a (1,) per-read-out array, {name: gradient}) on one batch; y (B, T/2)."""
    pred, cache = gpt2_forward(params, tokens, cfg)  # (B, n)
    loss, lc = mse_forward(pred, y)
    _, grads = gpt2_backward(mse_backward(1.0, lc), cache, input_grad=False)
    return loss, np.array([loss]), full_pos_grad(grads, cfg)  # the loss is a host float


def hidden_states(params, tokens, cfg: GPT2Config):
    """(L + 1, B, T, E): the embedding, then after every block (the last with the final LN)."""
    return gpt2_forward(params, tokens, cfg)[1]["states"]


def predict(params, tokens, cfg: GPT2Config):
    """Predictions (B, T/2) of y_i at every x position."""
    return gpt2_forward(params, tokens, cfg)[0]
