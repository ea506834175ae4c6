"""Cross-test against PyTorch autograd: the model written independently as a torch.nn.Module with
the state_dict names documented in iclgd/interop/convert.py, in float64, imported with
`from_torch_state_dict`, exported to the exchange format and checked by `crosscheck`.

Skipped (with the reason) when PyTorch is not installed: `pip install -e .[peers]`.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional extra: pip install -e .[peers]")
nn = torch.nn

from tests.peers.cases import CASES, WEIGHT_SCALE, export_and_check, make_data  # noqa: E402
from iclgd.interop.convert import from_torch_state_dict  # noqa: E402
from iclgd.interop.crosscheck import crosscheck_file  # noqa: E402
from iclgd.interop.exchange import save_exchange  # noqa: E402


class Attention(nn.Module):
    def __init__(self, D, num_heads, key_size, softmax, include_query):
        super().__init__()
        HK = num_heads * key_size
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, HK, bias=False) for _ in range(3))
        self.o_proj = nn.Linear(HK, D, bias=False)
        self.num_heads, self.key_size = num_heads, key_size
        self.softmax, self.include_query = softmax, include_query

    def forward(self, h):
        b, t, _ = h.shape
        kv = h if self.include_query else h[:, :-1]
        heads = lambda x, s: x.view(b, s, self.num_heads, self.key_size).transpose(1, 2)  # noqa: E731
        q = heads(self.q_proj(h), t)  # (B, H, T, K)
        k = heads(self.k_proj(kv), kv.shape[1])  # (B, H, S, K)
        v = heads(self.v_proj(kv), kv.shape[1])  # (B, H, S, K)
        scores = q @ k.transpose(-1, -2)  # (B, H, T, S)
        if self.softmax:
            scores = torch.softmax(scores / math.sqrt(self.key_size), dim=-1)
        out = (scores @ v).transpose(1, 2).reshape(b, t, -1)  # (B, T, H*K)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, D, F):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, F), nn.Linear(F, D)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg, D, has_ln1):
        super().__init__()
        if has_ln1:
            self.ln1 = nn.LayerNorm(D, eps=1e-5)
        self.attn = Attention(D, cfg.num_heads, cfg.key_size, cfg.attention == "softmax",
                              cfg.include_query)
        if cfg.mlp:
            if cfg.layernorm:
                self.ln2 = nn.LayerNorm(D, eps=1e-5)
            self.mlp = MLP(D, cfg.mlp_widening * D)


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

    def forward(self, x):
        cfg, lam = self.cfg, self.cfg.dampening
        if cfg.embed_dim:
            x = self.embed(x)
        if cfg.input_mlp:
            x = x + self.input_mlp(x)
        reads = []
        for l in range(cfg.num_layers):
            block = self.blocks[0 if cfg.weight_tied else l]
            a = block.attn(block.ln1(x) if hasattr(block, "ln1") else x)
            if cfg.y_update:
                a = torch.cat([torch.zeros_like(a[..., :-1]), a[..., -1:]], dim=-1)
            x = x + lam * a
            if cfg.token_clip > 0:
                x = torch.clamp(x, -cfg.token_clip, cfg.token_clip)
            if cfg.mlp:
                x = x + lam * block.mlp(block.ln2(x) if hasattr(block, "ln2") else x)
            reads.append(-x[:, -1, -1])
        return torch.stack(reads)  # (L, B)


def random_model(cfg, seed):
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
                p.copy_(z * WEIGHT_SCALE / math.sqrt(p.shape[1]))  # (out, in): fan-in is shape[1]
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_autograd_agrees_with_the_oracle(tmp_path, rng, case):
    cfg = CASES[case]
    model = random_model(cfg, int(rng.integers(2**31)))
    tokens, targets = make_data(cfg, rng)
    x = torch.tensor(tokens, requires_grad=True)
    readouts = model(x)  # (L, B)
    loss = 0.5 * torch.mean((readouts[-1] - torch.tensor(targets)) ** 2)
    loss.backward()
    x_pred = torch.tensor(tokens, requires_grad=True)
    # d y_hat_b / d tokens_b: the gradient of the sum, since task b's prediction sees only task b
    dpred, = torch.autograd.grad(model(x_pred)[-1].sum(), x_pred)
    assert readouts.dtype == torch.float64
    params = from_torch_state_dict(model.state_dict(), cfg)
    grads = from_torch_state_dict({n: p.grad for n, p in model.named_parameters()}, cfg)
    results = {"predictions": readouts[-1].detach().numpy(), "readouts": readouts.detach().numpy(),
               "loss": loss.detach().numpy(), "input_grads": x.grad.numpy(),
               "prediction_grads": dpred.numpy()}
    results.update({"grads/" + n: g for n, g in grads.items()})
    export_and_check(tmp_path, cfg, params, tokens, targets, results)


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_results_pass_only_at_the_documented_float32_tolerance(tmp_path, rng, case):
    """The README's advice for float32 peers (--rtol 1e-4 --atol 1e-6) holds; the float64 default
    tolerance is tight enough to tell a float32 computation from a float64 one."""
    cfg = CASES[case]
    model = random_model(cfg, int(rng.integers(2**31))).float()
    tokens, targets = make_data(cfg, rng)
    tokens, targets = tokens.astype(np.float32), targets.astype(np.float32)
    x = torch.tensor(tokens, requires_grad=True)
    readouts = model(x)  # (L, B)
    loss = 0.5 * torch.mean((readouts[-1] - torch.tensor(targets)) ** 2)
    loss.backward()
    assert readouts.dtype == torch.float32
    params = from_torch_state_dict(model.state_dict(), cfg)
    grads = from_torch_state_dict({n: p.grad for n, p in model.named_parameters()}, cfg)
    results = {"readouts": readouts.detach().numpy(), "loss": loss.detach().numpy(),
               "input_grads": x.grad.numpy()}
    results.update({"grads/" + n: g for n, g in grads.items()})
    path = tmp_path / "f32.npz"
    save_exchange(path, cfg, params, tokens, targets, results)
    assert crosscheck_file(path, rtol=1e-4, atol=1e-6)["passed"]
    assert not crosscheck_file(path)["passed"]
