"""Alternating tokens (SPEC 1.4) and the copy analysis of the first layer (SPEC 5).

Shape legend: B tasks, N context pairs, d input dims, T = 2N + 1 tokens, P encoding size,
W = d + P token width.
    sequence   x_1, [0..0, y_1], x_2, [0..0, y_2], ..., x_N, [0..0, y_N], x_q      (B, T, d)
    tokens     the sequence with a sinusoidal encoding of size P concatenated      (B, T, W)
               "back": [data, encoding] (the public code: the read-out -H[query, -1] is then the
               last encoding coordinate); "front": [encoding, data] (the read-out is on the data).
The encoding is a constant, so concatenating it here or in the model's front end is the same
function of the data; here both layouts are available to the same model.
"""
import numpy as np

from .block import block_backward, block_forward
from .layers import sinusoidal_encoding
from .model import front_backward, front_forward, model_forward
from .tasks import draw_tasks
from .validate import check_array

LAYOUTS = ("back", "front")


def alternating_tokens(tokens, pos_enc_size=10, layout="back"):
    """Linear-regression tokens (B, N + 1, d + 1) ([x_i, y_i], then [x_q, 0]) -> the alternating
    sequence with its encoding (B, 2N + 1, d + P); the target y_q is unchanged."""
    check_array("tokens", tokens, ndim=3)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if isinstance(pos_enc_size, bool) or not isinstance(pos_enc_size, (int, np.integer)) or pos_enc_size < 1:
        raise ValueError(f"pos_enc_size: expected an integer >= 1, got {pos_enc_size!r}")
    x, y = tokens[:, :, :-1], tokens[:, :-1, -1]  # (B, N + 1, d), (B, N)
    B, N, d = x.shape[0], x.shape[1] - 1, x.shape[2]
    T = 2 * N + 1
    seq = np.zeros((B, T, d), dtype=tokens.dtype)  # (B, T, d)
    seq[:, 0:2 * N:2] = x[:, :N]  # x_i at even positions
    seq[:, 1:2 * N:2, -1] = y  # [0..0, y_i] at odd positions
    seq[:, -1] = x[:, -1]  # the query x_q last
    pe = np.broadcast_to(sinusoidal_encoding(T, int(pos_enc_size), tokens.dtype), (B, T, int(pos_enc_size)))
    parts = [seq, pe] if layout == "back" else [pe, seq]
    return np.concatenate(parts, axis=-1)  # (B, T, W)


def data_columns(input_dim, pos_enc_size, layout):
    """The columns of a token that hold the data (not the encoding): a slice of the width W."""
    return slice(0, input_dim) if layout == "back" else slice(pos_enc_size, pos_enc_size + input_dim)


class AlternatingSource:
    """Training batches of alternating tokens: linear-regression tasks of `task_cfg` (drawn as
    refimpl.tasks.draw_tasks draws them, so a backend's drawer gives the same bits) rearranged."""

    def __init__(self, task_cfg, batch, pos_enc_size=10, layout="back"):
        self.task_cfg, self.batch, self.pos_enc_size, self.layout = task_cfg, batch, pos_enc_size, layout

    def next_batch(self, rng, step, draw=None):
        tokens, targets = draw_tasks(rng, self.task_cfg, self.batch, draw=draw)  # (B, N + 1, d + 1)
        return alternating_tokens(tokens, self.pos_enc_size, self.layout), targets


def layer0_jacobians(params, tokens, cfg, k):
    """J (T, W): the batch mean of d (sum of layer 0's output token k) / d tokens, from the
    hand-written backward (front end, then block 0, then back)."""
    H, front = front_forward(tokens, params, cfg)  # (B, T, D)
    H1, cache = block_forward(H, params, cfg, 0)  # (B, T, D)
    return _jacobian_mean(H1, cache, front, k)


def _jacobian_mean(H1, cache, front, k):
    dH1 = np.zeros_like(H1)  # (B, T, D)
    dH1[:, k, :] = 1.0  # upstream of sum_i H1[b, k, i]
    dH, _ = block_backward(dH1, cache, input_grad=True)  # (B, T, D)
    if front:
        dH, _ = front_backward(dH, front)  # (B, T, W)
    return dH.mean(axis=0)  # (T, W)


def copy_analysis(params, tokens, cfg, data_cols):
    """SPEC 5 copy analysis after layer 0, averaged over k = 0 .. T - 3 (every token with a next one
    before the query): the norm of the batch-mean Jacobian of token k's feature sum with respect to
    the data part of token k (own), of token k + 1 (next), and the mean over the other T - 2 tokens
    (other). Returns {"copy_own", "copy_next", "copy_other"}.

    The public code's `other` sums the tokens before k and from k + 1 on (token k + 1 included) and
    divides by T - 2; here token k + 1 is left out of `other`."""
    check_array("tokens", tokens, ndim=3)
    H, front = front_forward(tokens, params, cfg)  # (B, T, D)
    H1, cache = block_forward(H, params, cfg, 0)  # (B, T, D)
    T = tokens.shape[1]
    own = nxt = other = 0.0
    for k in range(T - 2):
        norms = np.linalg.norm(_jacobian_mean(H1, cache, front, k)[:, data_cols], axis=1)  # (T,)
        own += norms[k]
        nxt += norms[k + 1]
        other += (norms.sum() - norms[k] - norms[k + 1]) / (T - 2)
    n = T - 2
    return {"copy_own": float(own / n), "copy_next": float(nxt / n), "copy_other": float(other / n)}


def attention_maps(params, tokens, cfg):
    """The batch-mean attention weights of every layer, [(nh, T, N)]: softmax weights where the
    layer is softmax, the scores Q K^T where it is linear."""
    _, cache = model_forward(params, tokens, cfg)
    out = []
    for lc in cache["layers"]:
        a = lc["attn"]
        out.append((a["P"] if "P" in a else a["A"]).mean(axis=0))  # (nh, T, N)
    return out
