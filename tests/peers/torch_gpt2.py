"""The GPT-2 model of SPEC 2.7 (refimpl/gpt2.py) written again in PyTorch, plainly, over the oracle's
parameter names, for the cross-test tests/peers/test_peer_torch.py; gradients by autograd.
Importing this module imports PyTorch.

Shapes: B prompts, T tokens, n = T / 2 pairs, d token width, E model width, nh heads, K = E / nh
head size, L blocks. Weights (in, out): y = x @ W + b (the oracle's layout, not nn.Linear's).
"""
import math

import torch
from torch.nn import functional

LN_EPS = 1e-5


def layer_norm(x, params, prefix):
    return functional.layer_norm(x, x.shape[-1:], params[prefix + ".scale"], params[prefix + ".offset"],
                                 eps=LN_EPS)


def causal_attention(h, params, prefix, nh):
    """softmax(Q K^T / sqrt(K)), each token attending to itself and the ones before it."""
    B, T, E = h.shape
    K = E // nh

    def heads(name):  # (B, nh, T, K)
        x = h @ params[f"{prefix}.W_{name}"] + params[f"{prefix}.b_{name}"]
        return x.reshape(B, T, nh, K).transpose(1, 2)

    q, k, v = heads("q"), heads("k"), heads("v")
    scores = q @ k.transpose(-1, -2) / math.sqrt(K)  # (B, nh, T, T)
    later = torch.ones(T, T, dtype=torch.bool).triu(1)  # (T, T): s > t is hidden from t
    a = torch.softmax(scores.masked_fill(later, float("-inf")), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(B, T, E)
    return o @ params[prefix + ".W_p"] + params[prefix + ".b_p"]  # (B, T, E)


def mlp(h, params, prefix):
    """W2 gelu(W1 h + b1) + b2, GELU in its tanh form."""
    u = functional.gelu(h @ params[prefix + ".W1"] + params[prefix + ".b1"], approximate="tanh")  # (B, T, F)
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


def loss_and_grads(params, tokens, targets, cfg, dtype=torch.float64):
    """NumPy in, NumPy out: (loss, predictions (B, n), {name: d loss / d param}, d loss / d tokens
    (B, T, d)); the loss is the mean squared error over (B, n), no 1/2."""
    leaves = {n: torch.tensor(v, dtype=dtype, requires_grad=True) for n, v in params.items()}
    x = torch.tensor(tokens, dtype=dtype, requires_grad=True)
    pred = predictions(leaves, x, cfg)
    loss = torch.mean((pred - torch.tensor(targets, dtype=dtype)) ** 2)
    loss.backward()
    return (loss.detach().numpy(), pred.detach().numpy(),
            {n: t.grad.numpy() for n, t in leaves.items()}, x.grad.numpy())
