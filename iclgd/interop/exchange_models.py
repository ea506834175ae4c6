"""The models a file of the exchange format (exchange.py) may hold, each described by what the
format needs of it: its config class, its parameter names and shapes, the shapes of its tokens,
targets and results, the float64 oracle's results, and the oracle's cost for the limits.

    "lsa"   refimpl.config.ModelConfig, refimpl/params.py, refimpl/model.py (SPEC 2.1-2.6)
    "gpt2"  refimpl.gpt2.GPT2Config, refimpl/gpt2.py (SPEC 2.7)

Shape legend: B tasks (prompts), T tokens, D_in token width, L layers, n = T / 2 pairs (gpt2).
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from refimpl import gpt2, params as lsa_params
from refimpl.config import ModelConfig
from refimpl.model import model_backward, model_forward, prediction_input_gradient
from refimpl.validate import check_array

GRAD_PREFIX = "grads/"


@dataclass(frozen=True)
class ExchangeModel:
    name: str  # the file's `model` string
    config_class: type  # the dataclass its `config` JSON builds (every field named)
    param_shapes: Callable  # cfg -> {name: shape}
    check_params: Callable  # (params, cfg) -> params, or ValueError naming the parameter
    check_tokens: Callable  # (tokens, cfg) -> tokens (B, T, D_in), or ValueError naming tokens
    targets_shape: Callable  # (B, T) -> the shape of `targets`
    results: dict  # result name -> its shape as a function of (B, T, D_in, cfg)
    oracle_results: Callable  # (cfg, params, tokens, targets) -> {result name: float64 array}
    oracle_cost: Callable  # (cfg, B, T) -> (activations, work, the widths they come from)
    shape_notes: dict = None  # key -> what its shape means, added to a wrong shape's error


# ---------------------------------------------------------------------------------------------- lsa
def _lsa_tokens(tokens, cfg: ModelConfig):
    check_array("tokens", tokens, ndim=3)
    if tokens.shape[2] != cfg.token_dim:
        raise ValueError(f"tokens: expected token width config.token_dim = {cfg.token_dim}, "
                         f"got shape {tokens.shape}")
    return tokens


def _lsa_oracle(cfg: ModelConfig, params, tokens, targets):
    readouts, cache = model_forward(params, tokens, cfg)  # (L, B)
    check_array("targets", targets, shape=(tokens.shape[0],))
    r = readouts[-1] - targets  # (B,)
    dread = np.zeros_like(readouts)  # (L, B)
    dread[-1] = r / r.shape[0]  # d loss / d y_hat
    dtokens, grads = model_backward(dread, cache)  # (B, T, D_in)
    out = {
        "predictions": readouts[-1].copy(),
        "readouts": readouts,
        "loss": np.float64(0.5 * np.mean(r * r)),
        "input_grads": dtokens,
        "prediction_grads": prediction_input_gradient(params, tokens, cfg),
    }
    out.update({GRAD_PREFIX + n: g for n, g in grads.items()})
    return out


def _lsa_cost(cfg: ModelConfig, B, T):
    """num_layers * B * T * (W + num_heads * T) numbers kept, times W multiply-adds; W the widest
    of the token width, the model width, num_heads * key_size and the MLP hidden widths."""
    widths = [cfg.front_dim, cfg.model_dim, cfg.num_heads * cfg.key_size]
    if cfg.mlp:
        widths.append(cfg.mlp_widening * cfg.model_dim)
    if cfg.input_mlp:
        widths.append(cfg.mlp_widening * cfg.embed_dim)
    W = max(widths)
    activations = cfg.num_layers * B * T * (W + cfg.num_heads * T)
    return activations, activations * W, "this config's widths"


LSA = ExchangeModel(
    name="lsa", config_class=ModelConfig, param_shapes=lsa_params.param_shapes,
    check_params=lsa_params.check_params, check_tokens=_lsa_tokens,
    targets_shape=lambda B, T: (B,),
    results={
        "predictions": lambda B, T, D, cfg: (B,),
        "readouts": lambda B, T, D, cfg: (cfg.num_layers, B),
        "loss": lambda B, T, D, cfg: (),
        "input_grads": lambda B, T, D, cfg: (B, T, D),
        "prediction_grads": lambda B, T, D, cfg: (B, T, D),
    },
    oracle_results=_lsa_oracle, oracle_cost=_lsa_cost)


# --------------------------------------------------------------------------------------------- gpt2
def _gpt2_oracle(cfg: gpt2.GPT2Config, params, tokens, targets):
    pred, cache = gpt2.gpt2_forward(params, tokens, cfg)  # (B, n)
    check_array("targets", targets, shape=pred.shape)
    loss, lc = gpt2.mse_forward(pred, targets)
    dtokens, grads = gpt2.gpt2_backward(gpt2.mse_backward(1.0, lc), cache, input_grad=True)
    out = {"predictions": pred, "loss": np.float64(loss), "input_grads": dtokens}  # dtokens (B, T, d)
    out.update({GRAD_PREFIX + n: g for n, g in gpt2.full_pos_grad(grads, cfg).items()})
    return out


def _gpt2_cost(cfg: gpt2.GPT2Config, B, T):
    """As the LSA's, with W the widest of input_dim, embed_dim and the MLP width mlp_widening * E."""
    F = cfg.mlp_widening * cfg.embed_dim
    W = max(cfg.input_dim, cfg.embed_dim, F)
    activations = cfg.num_layers * B * T * (W + cfg.num_heads * T)
    return activations, activations * W, (f"embed_dim {cfg.embed_dim} (MLP width {F}), "
                                          f"num_heads {cfg.num_heads}")


GPT2 = ExchangeModel(
    name="gpt2", config_class=gpt2.GPT2Config, param_shapes=gpt2.param_shapes,
    check_params=gpt2.check_params, check_tokens=gpt2.check_tokens,
    targets_shape=lambda B, T: (B, T // 2),
    results={
        "predictions": lambda B, T, D, cfg: (B, T // 2),
        "loss": lambda B, T, D, cfg: (),
        "input_grads": lambda B, T, D, cfg: (B, T, D),
    },
    oracle_results=_gpt2_oracle, oracle_cost=_gpt2_cost,
    shape_notes={"grads/pos": "the whole parameter's gradient, (2 num_pairs, E): rows past the "
                              "prompt's T tokens are 0"})

MODELS = {m.name: m for m in (LSA, GPT2)}


def model_of(cfg):
    """The ExchangeModel of a config object."""
    for m in MODELS.values():
        if isinstance(cfg, m.config_class):
            return m
    raise ValueError(f"cfg: expected one of {[m.config_class.__name__ for m in MODELS.values()]}, "
                     f"got {type(cfg).__name__}")
