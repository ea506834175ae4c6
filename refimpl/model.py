"""The transformer of SPEC 2.3-2.6: front end, L blocks (deep or weight-tied), read-out per layer.

Shape legend: B tasks, T tokens, D_in input width, D model width, L layers (applications).
    H = tokens                                             (B, T, D_in)
    H = front_end(H)                                       (B, T, D) SPEC 2.5:
        [concat positional encoding] [embedding] [H + input MLP(H)] [add positional encoding]
    for l in 0..L-1 (parameter set p = 0 if weight-tied else l):
        H = block_l(H)                                     refimpl.block, SPEC 2.3
        readout[l] = -H[:, -1, -1]                         SPEC 2.6: minus the query's last coordinate
A weight-tied block's gradients sum over its L applications.
"""
import numpy as np

from . import layers
from .block import block_backward, block_forward
from .config import ModelConfig
from .params import check_params, params_under
from .validate import array_module, check_array, check_same_dtype, check_upstream


def _add_grads(grads, sub):
    """grads[name] += sub[name]: a weight-tied block's gradients sum over applications."""
    for name, g in sub.items():
        if name in grads:
            grads[name] = grads[name] + g
        else:
            grads[name] = g


def check_tokens(tokens, cfg: ModelConfig, name="tokens", finite=True):
    """tokens (B, T, D_in) of the model's width; finite=False leaves the NaN/inf scan to the caller."""
    check_array(name, tokens, ndim=3, finite=finite)
    if tokens.shape[2] != cfg.token_dim:
        raise ValueError(f"{name}: expected token width token_dim = {cfg.token_dim}, got shape {tokens.shape}")
    if tokens.shape[1] < 2 and not cfg.include_query:
        raise ValueError(f"{name}: expected at least 2 tokens (context + query), got shape {tokens.shape}")
    if tokens.shape[0] < 1:
        raise ValueError(f"{name}: expected at least one task, got shape {tokens.shape}")
    return tokens


# ----------------------------------------------------------------------------------------------
# front end (SPEC 2.5): tokens (B, T, D_in) -> H (B, T, D); the cache lists the steps taken
class FrontCache(list):
    """The front end's steps [(kind, op cache), ...] in forward order (empty, hence false, when the
    model has none), with out_shape and dtype: those of its output H, which front_backward's dH has."""
    out_shape = None
    dtype = None


def front_forward(tokens, params, cfg: ModelConfig):
    """tokens (B, T, D_in) -> (H (B, T, D), cache): the optional stages in SPEC 2.5's order."""
    check_tokens(tokens, cfg)  # with no stage at all, nothing below would look at them
    cache = FrontCache()
    H = tokens  # (B, T, D_in)
    if cfg.pos_enc == "concat":
        H, c = layers.posenc_concat_forward(H, cfg.pos_enc_size)  # (B, T, P + D_in)
        cache.append(("posenc_concat", c))
    if cfg.embed_dim:
        H, c = layers.linear_forward(H, params["embed.W"])  # (B, T, E)
        cache.append(("embed", c))
    if cfg.input_mlp:
        m, c = layers.mlp_forward(H, **params_under(params, "input_mlp"))  # (B, T, E)
        H = H + m  # (B, T, E)
        cache.append(("input_mlp", c))
    if cfg.pos_enc == "add":
        H, c = layers.posenc_add_forward(H)  # (B, T, D)
        cache.append(("posenc_add", c))
    cache.out_shape, cache.dtype = H.shape, H.dtype
    return H, cache


def front_backward(dH, cache):
    """dH (B, T, D) -> (dtokens (B, T, D_in), {name: gradient}), the stages in reverse."""
    check_upstream("dH", dH, cache.out_shape, cache.dtype)
    grads = {}
    for kind, c in reversed(cache):
        if kind == "input_mlp":
            dm, g = layers.mlp_backward(dH, c)  # (B, T, E)
            grads.update({f"input_mlp.{name}": v for name, v in g.items()})
            dH = dH + dm  # residual + input MLP branch
        elif kind == "embed":
            dH, g = layers.linear_backward(dH, c)  # (B, T, D_in')
            grads["embed.W"] = g["W"]
        elif kind == "posenc_concat":
            dH, _ = layers.posenc_concat_backward(dH, c)  # (B, T, D_in)
        elif kind == "posenc_add":
            dH, _ = layers.posenc_add_backward(dH, c)  # (B, T, D)
    return dH, grads


# ----------------------------------------------------------------------------------------------
def model_forward(params, tokens, cfg: ModelConfig):
    """tokens (B, T, D_in) -> (readouts (L, B), cache). readouts[-1] is the prediction y_hat."""
    check_tokens(tokens, cfg)
    check_params(params, cfg)
    check_same_dtype(tokens=tokens, params=next(iter(params.values())))
    B, T, _ = tokens.shape
    H, front = front_forward(tokens, params, cfg)  # (B, T, D)
    readouts = array_module(tokens).empty((cfg.num_layers, B), dtype=tokens.dtype)  # (L, B)
    cache = {"cfg": cfg, "T": T, "front": front, "layers": []}
    for l in range(cfg.num_layers):
        H, lc = block_forward(H, params, cfg, l)  # (B, T, D)
        readouts[l] = -H[:, -1, -1]
        cache["layers"].append(lc)
    cache["H_shape"] = H.shape
    cache["dtype"] = H.dtype
    cache["readout_dtype"] = readouts.dtype  # what model_backward's dreadouts must be
    return readouts, cache


def model_backward(dreadouts, cache, input_grad=True):
    """dreadouts (L, B) -> (dtokens (B, T, D_in), {name: gradient}) for every parameter.

    input_grad=False (training needs only the parameter gradients) returns dtokens = None and skips
    the first layer's attention input gradient when nothing below it (LayerNorm, front end) needs it.
    """
    cfg = cache["cfg"]
    L, B = cfg.num_layers, cache["H_shape"][0]
    check_upstream("dreadouts", dreadouts, (L, B), cache["readout_dtype"])
    grads = {}
    dH = array_module(dreadouts).zeros(cache["H_shape"], dtype=cache["dtype"])  # (B, T, D)
    for l in reversed(range(L)):
        dH[:, -1, -1] -= dreadouts[l]  # readout[l] = -H[:, -1, -1]
        below = input_grad or l > 0 or bool(cache["front"])  # does anything need this block's dH?
        dH, g = block_backward(dH, cache["layers"][l], input_grad=below)  # (B, T, D) or None
        _add_grads(grads, g)
    if not input_grad and not cache["front"]:
        return None, grads  # layer 0 had nothing below it: only dtokens would remain
    dtokens, g = front_backward(dH, cache["front"])  # (B, T, D_in)
    grads.update(g)
    return (dtokens if input_grad else None), grads


def predict(params, tokens, cfg):
    """y_hat (B,): the read-out after the last layer."""
    return model_forward(params, tokens, cfg)[0][-1]


def prediction_input_gradient(params, tokens, cfg):
    """d y_hat_b / d tokens_b (B, T, D_in), from the hand-written backward (SPEC 5 sensitivity)."""
    readouts, cache = model_forward(params, tokens, cfg)
    dread = np.zeros_like(readouts)  # (L, B)
    dread[-1] = 1.0
    return model_backward(dread, cache)[0]
