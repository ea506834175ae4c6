"""Metrics of SPEC 5: losses, alignment with a reference model (GD, GD++), interpolation, OOD and
distractor curves, on host arrays.

The model is run by `ops`: any object with the oracle's `model_forward(params, tokens, cfg) ->
(readouts, cache)` and `model_backward(dreadouts, cache) -> (dtokens, grads)` on host arrays, and
optionally `readouts(params, tokens, cfg) -> readouts (L, B)` (for a loss) and
`readouts_and_query_gradient(params, tokens, cfg) -> (readouts (L, B), d (final read-out) / d
(query token) (B, D))`, all an evaluation needs in one call. None means the oracle
itself (refimpl.model); the application passes a backend's (iclgd.evaluation), whose float64
results equal the oracle's to rounding.

Shape legend: B tasks, T tokens, D = d + 1 token width, L layers.
"""
import numpy as np

from . import model as oracle_model
from .tasks import scale_inputs, scale_weights

NORM_EPS = 1e-8  # added to the sensitivity norms in the cosine (SPEC 5)


def losses(params, tokens, targets, cfg, ops=None):
    """(loss of the final read-out, per-layer losses (L,), predictions (B,)): mean 0.5 r^2."""
    if getattr(ops, "readouts", None) is not None:
        readouts = ops.readouts(params, tokens, cfg)  # (L, B)
    else:
        readouts, _ = (ops or oracle_model).model_forward(params, tokens, cfg)  # (L, B)
    per_layer = 0.5 * np.mean((readouts - targets) ** 2, axis=1)  # (L,)
    return float(per_layer[-1]), per_layer, readouts[-1]


def losses_and_sensitivity(params, tokens, targets, cfg, ops=None):
    """losses(...) and query_sensitivity(...) from one forward and one backward pass."""
    ops = ops or oracle_model
    both = getattr(ops, "readouts_and_query_gradient", None)
    if both is not None:
        readouts, dquery = both(params, tokens, cfg)  # (L, B), (B, D)
        sens = dquery[:, :-1]  # (B, d)
    else:
        readouts, cache = ops.model_forward(params, tokens, cfg)  # (L, B)
        dread = np.zeros_like(readouts)  # (L, B): only the final read-out
        dread[-1] = 1.0
        sens = ops.model_backward(dread, cache)[0][:, -1, :-1]  # (B, d)
    per_layer = 0.5 * np.mean((readouts - targets) ** 2, axis=1)  # (L,)
    return float(per_layer[-1]), per_layer, readouts[-1], sens


def query_sensitivity(params, tokens, cfg, ops=None):
    """g_b = d y_hat_b / d x_q (B, d): the query token's x part of the input gradient (the
    backward of the final read-out with upstream gradient 1 per task)."""
    if ops is None:
        return oracle_model.prediction_input_gradient(params, tokens, cfg)[:, -1, :-1]
    return losses_and_sensitivity(params, tokens, np.zeros(tokens.shape[0]), cfg, ops)[3]


def alignment(pred_a, sens_a, pred_b, sens_b):
    """preds_diff = mean |y_a - y_b|; model_cos = mean cos(g_a, g_b); model_diff = mean ||g_a - g_b||."""
    na = np.linalg.norm(sens_a, axis=1) + NORM_EPS  # (B,)
    nb = np.linalg.norm(sens_b, axis=1) + NORM_EPS
    return {"preds_diff": float(np.mean(np.abs(pred_a - pred_b))),
            "model_cos": float(np.mean(np.sum(sens_a * sens_b, axis=1) / (na * nb))),
            "model_diff": float(np.mean(np.linalg.norm(sens_a - sens_b, axis=1)))}


class Reference:
    """A fixed model (GD, GD++) on the evaluation set: predictions and sensitivities computed once."""

    def __init__(self, params, cfg, tokens, targets, ops=None):
        self.params, self.cfg = params, cfg
        self.loss, self.per_layer, self.pred, self.sens = losses_and_sensitivity(params, tokens, targets, cfg, ops)


# ------------------------------------------------------------------------------- interpolation
def layer_products(params, layer=0):
    """(W_KQ, W_PV), each (D, D), of one layer (heads summed): the paper's W_KQ = W_q W_k^T and
    W_PV = W_v W_p, through which alone a one-head LSA layer acts."""
    p = f"layer{layer}.attn."
    W_KQ = params[p + "W_q"] @ params[p + "W_k"].T  # (D, D)
    W_PV = params[p + "W_v"] @ params[p + "W_p"]  # (D, D)
    return W_KQ, W_PV


def head_products(params, num_heads, layer=0):
    """[(W_KQ_h, W_PV_h) for each head h], each (D, D): W_KQ_h = W_q^h W_k^h^T and W_PV_h = W_v^h W_p^h
    with W_q^h = W_q[:, hK:(h+1)K] (likewise W_k, W_v) and W_p^h = W_p[hK:(h+1)K, :]. A layer acts
    through them: head h adds (H W_KQ_h C^T) C W_PV_h (linear) or softmax(H W_KQ_h C^T / sqrt(K)) C W_PV_h."""
    p = f"layer{layer}.attn."
    W_q, W_k, W_v, W_p = (params[p + n] for n in ("W_q", "W_k", "W_v", "W_p"))  # (D, nh*K) x 3, (nh*K, D)
    if num_heads < 1 or W_q.shape[1] % num_heads:
        raise ValueError(f"num_heads: expected a divisor >= 1 of the width {W_q.shape[1]}, got {num_heads}")
    K = W_q.shape[1] // num_heads
    heads = [slice(h * K, (h + 1) * K) for h in range(num_heads)]
    return [(W_q[:, s] @ W_k[:, s].T, W_v[:, s] @ W_p[s, :]) for s in heads]  # (D, D) each


def scaled_head_products(params, num_heads, layer=0):
    """Figure 11: each head's W_KQ_h scaled by eta_h = W_PV_h[-1, -1], (nh, D, D), and their sum (D, D)."""
    scaled = np.stack([W_KQ * W_PV[-1, -1] for W_KQ, W_PV in head_products(params, num_heads, layer)])
    return scaled, scaled.sum(axis=0)


def product_params(W_KQ, W_PV):
    """One-layer LSA weights (K = D) with W_q W_k^T = W_KQ and W_v W_p = W_PV: W_q = W_KQ,
    W_k = W_p = I, W_v = W_PV."""
    I = np.eye(W_KQ.shape[0])  # (D, D)
    return {"layer0.attn.W_q": W_KQ, "layer0.attn.W_k": I, "layer0.attn.W_v": W_PV, "layer0.attn.W_p": I}


def interpolated_params(params_tf, params_gd, input_dim):
    """SPEC 5 (A = W_KQ, M = W_PV there): m = mean of W_KQ's first d diagonal entries;
    W_KQ' = (W_KQ/m + W_KQ_GD)/2, W_PV' = (m W_PV + W_PV_GD)/2. Returns (params, m)."""
    W_KQ, W_PV = layer_products(params_tf)  # (D, D) each
    W_KQ_gd, W_PV_gd = layer_products(params_gd)  # (D, D) each
    m = float(np.mean(np.diag(W_KQ)[:input_dim]))
    return product_params((W_KQ / m + W_KQ_gd) / 2, (m * W_PV + W_PV_gd) / 2), m


# --------------------------------------------------------------------------------- OOD curves
def ood_curve(models, tokens, targets, alphas, kind, ops=None):
    """{name: losses over alphas} for kind 'input' (x scaled) or 'weight' (teacher scaled);
    models = {name: (params, cfg)}. The same tasks are rescaled for every alpha (SPEC 1.2)."""
    scale = {"input": scale_inputs, "weight": scale_weights}[kind]
    out = {name: [] for name in models}
    for alpha in alphas:
        t, y = scale(tokens, targets, alpha)
        for name, (params, cfg) in models.items():
            with np.errstate(over="ignore", invalid="ignore"):
                out[name].append(finite_or_none(losses(params, t, y, cfg, ops)[0]))
    return out


def finite_or_none(value):
    """JSON-safe float: None for inf/NaN (a diverged loss)."""
    value = float(value)
    return value if np.isfinite(value) else None
