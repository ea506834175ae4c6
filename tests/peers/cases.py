"""Configurations and checks shared by the cross-tests against autodiff (JAX, PyTorch).

Each case has unequal sizes (B != T != D != K) and weights large enough that every nonlinearity
(softmax, LayerNorm, GELU, clipping) is in play. GPT2_CFG is the GPT-2 model of SPEC 2.7
(refimpl/gpt2.py), on prompts shorter than its positions reach.
"""
import numpy as np

from refimpl.config import ModelConfig
from refimpl.gaussian import interleaved_tokens
from refimpl.gpt2 import GPT2Config, gpt2_forward, init_params as gpt2_init_params
from iclgd.interop.crosscheck import crosscheck_file
from iclgd.interop.exchange import save_exchange
from refimpl.model import model_forward

B, T = 5, 7  # tasks, tokens (6 context + query)
WEIGHT_SCALE = 0.8  # std = WEIGHT_SCALE / sqrt(fan_in)

CASES = {
    "lsa_1layer": ModelConfig(token_dim=5, num_layers=1, key_size=3),
    "deep_lsa_clip": ModelConfig(token_dim=4, num_layers=3, num_heads=2, key_size=3, token_clip=0.8),
    "softmax_2head_ln_mlp": ModelConfig(token_dim=4, num_layers=2, num_heads=2, key_size=3,
                                        attention="softmax", layernorm=True, mlp=True),
    "tied_lsa_ln_yupdate": ModelConfig(token_dim=4, num_layers=3, weight_tied=True, key_size=5,
                                       layernorm=True, y_update=True, dampening=0.75,
                                       include_query=True),
    "sine_embed_input_mlp": ModelConfig(token_dim=2, num_layers=1, weight_tied=True, key_size=5,
                                        embed_dim=6, input_mlp=True),
}


# GPT-2: d = 3, n = 4 (pos has 8 rows), E = 8, 2 heads of K = 4, F = 32, 2 blocks; prompts of
# GPT2_PAIRS = 3 pairs, T = 6 tokens, so that pos rows 6 and 7 are unused (gradient 0)
GPT2_CFG = GPT2Config(input_dim=3, num_pairs=4, embed_dim=8, num_layers=2, num_heads=2)
GPT2_B, GPT2_PAIRS = 5, 3
GPT2_SPREAD = 0.3  # LayerNorm scales 1 + 0.3 z, biases and offsets 0.3 z
GPT2_QK_SCALE = 2.0  # W_q, W_k: 2 z / sqrt(E), so that attention is peaked, not near uniform


def gpt2_problem(cfg, rng, B=GPT2_B, pairs=GPT2_PAIRS):
    """(params, tokens (B, 2 pairs, d), targets (B, pairs)): GPT-2's initialisation moved away from
    it (weights z / sqrt(fan_in), W_q and W_k twice that, pos z) so that LayerNorm, GELU and the
    softmax are nonlinear; prompts of linear regression, y_i = w . x_i, in SPEC 2.7's layout."""
    params = gpt2_init_params(cfg, rng)
    for name, value in params.items():
        if value.ndim == 1:  # LayerNorm scales (1) and offsets, biases (0)
            params[name] = value + GPT2_SPREAD * rng.standard_normal(value.shape)
        else:
            fan_in = 1 if name == "pos" else value.shape[0]
            scale = GPT2_QK_SCALE if name.endswith(("W_q", "W_k")) else 1.0
            params[name] = scale * rng.standard_normal(value.shape) / np.sqrt(fan_in)
    x = rng.standard_normal((B, pairs, cfg.input_dim))  # (B, n, d)
    y = np.einsum("bnd,bd->bn", x, rng.standard_normal((B, cfg.input_dim)))  # (B, n)
    return params, interleaved_tokens(x, y), y


def assert_gpt2_nonlinear(cfg, params, tokens):
    """In every block the softmax is far from uniform and most GELU inputs lie where it curves."""
    _, cache = gpt2_forward(params, tokens, cfg)
    visible = np.arange(1, tokens.shape[1] + 1)  # (T,): keys token t sees
    for l, block in enumerate(cache["blocks"]):
        P = block["ca"]["P"]  # (B, nh, T, T)
        assert np.mean(P.max(axis=-1) - 1 / visible) > 0.2, f"block {l}: softmax near uniform"
        h = block["cm"][1][0]  # (B, T, F): GELU's input
        assert np.mean((np.abs(h) > 0.5) & (np.abs(h) < 3)) > 0.3, f"block {l}: GELU near linear"


def make_data(cfg, rng):
    tokens = rng.uniform(-1, 1, (B, T, cfg.token_dim))  # (B, T, D_in)
    tokens[:, -1, -1] = 0.0  # the query's label slot
    targets = rng.standard_normal(B)  # (B,)
    return tokens, targets


def assert_clipping_active(cfg, params, tokens):
    """The clipping case must clip some entries (or it would not test clipping)."""
    if cfg.token_clip > 0:
        _, cache = model_forward(params, tokens, cfg)
        clipped = sum(int((~lc["clip"]).sum()) for lc in cache["layers"])
        assert clipped > 0, "no entry was clipped: the case does not exercise clipping"


def export_and_check(tmp_path, cfg, params, tokens, targets, results):
    """Write the peer's results, crosscheck them (must pass), then perturb each result in turn
    (it must fail and be the only failing tensor): its largest entry by 1e-7 relative, or by 1e-9
    where that entry is below 1e-2 (a gradient that is 0 in exact arithmetic, as GPT-2's key bias
    b_k: the softmax ignores the shift q . b_k common to a row's scores)."""
    for name, value in results.items():
        assert np.all(np.isfinite(value)), name
        if name.startswith("grads/") or name.endswith("grads"):
            assert np.any(value != 0), f"{name}: all zero, the comparison would be vacuous"
    if isinstance(cfg, GPT2Config):
        assert_gpt2_nonlinear(cfg, params, tokens)
    else:
        assert_clipping_active(cfg, params, tokens)
    path = tmp_path / "peer.npz"
    save_exchange(path, cfg, params, tokens, targets, results)
    report = crosscheck_file(path)
    failing = [(t["name"], t["max_abs_err"]) for t in report["tensors"] if not t["passed"]]
    assert report["passed"], f"peer and oracle differ: {failing}"
    assert {t["name"] for t in report["tensors"]} == set(results)

    for key in sorted(results):  # every tensor, one at a time
        bad = dict(results)
        value = np.array(results[key], dtype=np.float64)
        flat = value.reshape(-1)
        i = int(np.argmax(np.abs(flat)))
        flat[i] += max(1e-7 * abs(flat[i]), 1e-9)
        bad[key] = value
        save_exchange(path, cfg, params, tokens, targets, bad)
        report = crosscheck_file(path)
        assert not report["passed"], key
        assert [t["name"] for t in report["tensors"] if not t["passed"]] == [key]


def check_unused_positions(tmp_path, cfg, params, tokens, targets, results):
    """A GPT-2 peer's grads/pos is the full (2n, E) parameter's gradient: rows the prompts do not
    reach are 0 in the peer's results, and a value there fails, alone."""
    T = tokens.shape[1]
    assert T < cfg.max_tokens and np.all(results["grads/pos"][T:] == 0)
    bad = dict(results)
    bad["grads/pos"] = np.array(results["grads/pos"], dtype=np.float64)
    bad["grads/pos"][-1, 0] = 1e-9
    path = save_exchange(tmp_path / "pos.npz", cfg, params, tokens, targets, bad)
    report = crosscheck_file(path)
    assert [t["name"] for t in report["tensors"] if not t["passed"]] == ["grads/pos"]
