"""Finite-difference checks of the GPT-2 style model (refimpl.gpt2), part of `iclgd gradcheck`
(refimpl/gradcheck.py runs them after the other groups, with the step GPT2_STEP).

Checks: its attention with biases, one block, the whole 2-head model on a prompt shorter than its
positions (T = 6 of 2n = 8) and the loss; parameters perturbed from the initialisation so that no
LayerNorm, bias or residual term hides behind a 1 or a 0. Unequal sizes: B 3, T 6, d 3, E 8, 2 heads.
"""
import numpy as np

from . import gpt2

B, NUM_HEADS = 3, 2
GPT2_CHECK = gpt2.GPT2Config(input_dim=3, num_pairs=4, embed_dim=8, num_layers=2, num_heads=NUM_HEADS,
                             mlp_widening=2)
GPT2_T = 6  # tokens: 3 pairs


def gpt2_check_params(cfg, rng):
    """init_params plus N(0, 0.3^2) on every entry, N(0, 0.6^2) on the query and key maps (scores of
    order one: their gradients then stand well above the differences' round-off)."""
    params = gpt2.init_params(cfg, rng)
    return {k: v + (0.6 if k.endswith(("W_q", "W_k", "b_q")) else 0.3) * rng.standard_normal(v.shape)
            for k, v in params.items()}


def gpt2_checks(rng):
    """The GPT-2 checks as (name, forward, backward, inputs), inputs drawn from rng in this order."""
    cfg = GPT2_CHECK
    params = gpt2_check_params(cfg, rng)
    tokens = rng.standard_normal((B, GPT2_T, cfg.input_dim))  # (B, T, d)
    H = rng.standard_normal((B, GPT2_T, cfg.embed_dim))  # (B, T, E)
    attn = {k.split(".")[-1]: v for k, v in params.items() if k.startswith("block0.attn.")}
    block = {k: v for k, v in params.items() if k.startswith("block1.")}

    def attn_fwd(x, **p):
        return gpt2.causal_attention_forward(x, p, cfg.num_heads)[0]

    def attn_bwd(dout, inp):
        _, cache = gpt2.causal_attention_forward(inp["x"], {k: v for k, v in inp.items() if k != "x"},
                                                 cfg.num_heads)
        dx, grads = gpt2.causal_attention_backward(dout, cache)
        return {"x": dx, **grads}

    def block_fwd(H, **p):
        return gpt2.block_forward(H, p, cfg, 1)[0]

    def block_bwd(dout, inp):
        _, cache = gpt2.block_forward(inp["H"], {k: v for k, v in inp.items() if k != "H"}, cfg, 1)
        dH, grads = gpt2.block_backward(dout, cache)
        return {"H": dH, **grads}

    def model_fwd(tokens, **p):
        return gpt2.gpt2_forward(p, tokens, cfg)[0]

    def model_bwd(dout, inp):
        _, cache = gpt2.gpt2_forward({k: v for k, v in inp.items() if k != "tokens"}, inp["tokens"], cfg)
        dtok, grads = gpt2.gpt2_backward(dout, cache)
        return {"tokens": dtok, **gpt2.full_pos_grad(grads, cfg)}

    def mse_fwd(pred, y):
        return np.array(gpt2.mse_forward(pred, y)[0])

    def mse_bwd(dout, inp):
        _, cache = gpt2.mse_forward(inp["pred"], inp["y"])
        dpred = gpt2.mse_backward(float(dout), cache)
        return {"pred": dpred, "y": -dpred}

    n = GPT2_T // 2
    return [("gpt2_causal_attention_biases", attn_fwd, attn_bwd, {"x": H, **attn}),
            ("gpt2_block", block_fwd, block_bwd, {"H": H, **block}),
            ("gpt2_model_2head", model_fwd, model_bwd, {"tokens": tokens, **params}),
            ("gpt2_mse", mse_fwd, mse_bwd, {"pred": rng.standard_normal((B, n)), "y": rng.standard_normal((B, n))})]
