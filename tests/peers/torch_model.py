"""The transformer of SPEC 2.3-2.6 written in PyTorch, once: as a torch.nn.Module under the
state_dict names documented in iclgd/interop/convert.py for the cross-test
(tests/peers/test_peer_torch.py), over refimpl's names for the benchmark peer (benchmarks/peers.py).
Importing this module imports PyTorch.

Shapes: B tasks, T tokens, S attended tokens (T, or T - 1 without the query), D width, H heads,
K key size, F MLP width, L layers.
"""
import math

import numpy as np
import torch
from torch import nn

from tests.peers.weights import attention_set


def layer_norm(x, scale_offset):
    scale, offset = scale_offset
    return nn.functional.layer_norm(x, x.shape[-1:], scale, offset, eps=1e-5)


def mlp(x, W_1, b_1, W_2, b_2):
    """W_2 gelu(W_1 x + b_1) + b_2, GELU in its tanh form."""
    return nn.functional.gelu(x @ W_1 + b_1, approximate="tanh") @ W_2 + b_2  # (B, T, D)


def attention(h, w, cfg, layer):
    """sum_s a(q_t, k_s) v_s W_p over the heads: a = q.k (linear) or softmax(q.k / sqrt(K))."""
    B, T, _ = h.shape
    S = T if cfg.include_query else T - 1
    H, K = cfg.num_heads, cfg.key_size
    q = (h @ w["W_q"]).reshape(B, T, H, K).transpose(1, 2)  # (B, H, T, K)
    k = (h[:, :S] @ w["W_k"]).reshape(B, S, H, K).transpose(1, 2)  # (B, H, S, K)
    v = (h[:, :S] @ w["W_v"]).reshape(B, S, H, K).transpose(1, 2)  # (B, H, S, K)
    a = q @ k.transpose(-1, -2)  # (B, H, T, S)
    if cfg.layer_attention(layer) == "softmax":
        a = a / float(np.sqrt(K))
        if cfg.causal:
            keys = torch.arange(S, device=h.device)
            visible = keys[None, :] <= torch.arange(T, device=h.device)[:, None]  # (T, S)
            a = a.masked_fill(~visible, float("-inf"))
        a = torch.softmax(a, dim=-1)
    o = (a @ v).transpose(1, 2).reshape(B, T, H * K)
    return o @ w["W_p"]  # (B, T, D)


def readouts(weights, tokens, cfg):
    """Readouts (L, B): -x_{query, label} after each layer, for a weights view (tests/peers/weights.py)."""
    x = tokens  # (B, T, D_in)
    if weights["embed"] is not None:
        x = x @ weights["embed"]  # (B, T, D)
    if weights["input_mlp"] is not None:
        x = x + mlp(x, *weights["input_mlp"])
    reads = []
    for l in range(cfg.num_layers):
        w = weights["sets"][cfg.param_layer(l)]
        u = attention(x if w["ln1"] is None else layer_norm(x, w["ln1"]), w, cfg, l)  # (B, T, D)
        if cfg.y_update:  # only the label row moves
            u = torch.cat([torch.zeros_like(u[..., :-1]), u[..., -1:]], dim=-1)
        x = x + cfg.dampening * u
        if cfg.token_clip > 0:
            x = x.clamp(-cfg.token_clip, cfg.token_clip)
        if w["mlp"] is not None:
            x = x + cfg.dampening * mlp(x if w["ln2"] is None else layer_norm(x, w["ln2"]), *w["mlp"])
        reads.append(-x[:, -1, -1])  # (B,)
    return torch.stack(reads)  # (L, B)


# ----------------------------------------------------------------------------------------------
# The model as a torch.nn.Module: the containers carry the documented state_dict names
class Attention(nn.Module):
    def __init__(self, D, HK):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, HK, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(HK, D, bias=False)


class MLP(nn.Module):
    def __init__(self, D, F):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, F), nn.Linear(F, D)

    def weights(self):  # nn.Linear stores (out, in)
        return self.fc1.weight.T, self.fc1.bias, self.fc2.weight.T, self.fc2.bias


class Block(nn.Module):
    def __init__(self, cfg, D, has_ln1):
        super().__init__()
        if has_ln1:
            self.ln1 = nn.LayerNorm(D, eps=1e-5)
        self.attn = Attention(D, cfg.num_heads * cfg.key_size)
        if cfg.mlp:
            if cfg.layernorm:
                self.ln2 = nn.LayerNorm(D, eps=1e-5)
            self.mlp = MLP(D, cfg.mlp_widening * D)

    def weights(self):
        def norm(name):
            return (getattr(self, name).weight, getattr(self, name).bias) if hasattr(self, name) else None

        a = self.attn
        return attention_set(a.q_proj.weight.T, a.k_proj.weight.T, a.v_proj.weight.T, a.o_proj.weight.T,
                             ln1=norm("ln1"), ln2=norm("ln2"),
                             mlp=self.mlp.weights() if hasattr(self, "mlp") else None)


class Model(nn.Module):
    """The transformer of SPEC 2.3-2.6 under the documented state_dict names."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim or cfg.token_dim
        if cfg.embed_dim:
            self.embed = nn.Linear(cfg.token_dim, D, bias=False)
        if cfg.input_mlp:
            self.input_mlp = MLP(D, cfg.mlp_widening * D)
        sets = 1 if cfg.weight_tied else cfg.num_layers
        self.blocks = nn.ModuleList(Block(cfg, D, cfg.layernorm and (cfg.weight_tied or p > 0))
                                    for p in range(sets))

    def weights(self):
        return {"embed": self.embed.weight.T if self.cfg.embed_dim else None,
                "input_mlp": self.input_mlp.weights() if self.cfg.input_mlp else None,
                "sets": [block.weights() for block in self.blocks]}

    def forward(self, x):
        return readouts(self.weights(), x, self.cfg)  # (L, B)


def random_model(cfg, seed, weight_scale):
    """float64 Model; LayerNorm scales 1 + 0.3 z, biases 0.3 z, weights z weight_scale / sqrt(fan_in)."""
    model = Model(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("ln1.weight") or name.endswith("ln2.weight"):
                p.copy_(1 + 0.3 * z)
            elif p.ndim == 1:
                p.copy_(0.3 * z)
            else:
                p.copy_(z * weight_scale / math.sqrt(p.shape[1]))  # (out, in): fan-in is shape[1]
    return model
