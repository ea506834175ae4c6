"""Layer matching (SPEC 5, second-order paper): similarity of errors, heatmaps, best matches, and
closed-form linear probes of a model's hidden states.

    SimE(a, b) = mean_prompts cos(r_a, r_b), r = y_hat - y over the n positions of a prompt
    heatmap[i, j] = SimE(model layer i (or algorithm step i), algorithm step j)
    best match of row i = argmax_j heatmap[i, j]
    probe: y ~ h . v + c, least squares with bias on probe-training states, evaluated on held-out ones

Shape legend: B prompts, n positions, F features, R / C rows / columns of a heatmap, L layers.
"""
import numpy as np

from .block import block_forward
from .model import check_tokens, front_forward
from .params import check_params
from .validate import check_array

COS_EPS = 1e-30  # a zero residual vector has cosine 0 with everything (never a division by zero)


def residuals(pred, y):
    """r = y_hat - y (..., B, n)."""
    return pred - y


def _unit(r):
    norm = np.linalg.norm(r, axis=-1, keepdims=True)  # (..., B, 1)
    return r / np.maximum(norm, COS_EPS)


def sime(r_a, r_b):
    """Similarity of errors of two residual arrays (B, n): the mean over prompts of the cosine
    between their residual vectors over positions. In [-1, 1]; 1 for r_a = c r_b with c > 0."""
    check_array("r_a", r_a, ndim=2)
    check_array("r_b", r_b, shape=r_a.shape)
    return float(np.mean(np.sum(_unit(r_a) * _unit(r_b), axis=-1)))


def sime_heatmap(rows, cols):
    """heatmap (R, C) with entry [i, j] = SimE(rows[i], cols[j]) for residual stacks rows (R, B, n)
    and cols (C, B, n)."""
    check_array("rows", rows, ndim=3)
    check_array("cols", cols, shape=(None,) + rows.shape[1:])
    return np.einsum("rbn,cbn->rc", _unit(rows), _unit(cols)) / rows.shape[1]  # (R, C)


def best_matches(heatmap, grid):
    """For each row: the grid value of the best-matching column and its SimE: (values (R,), sims (R,))."""
    heatmap = np.asarray(heatmap, dtype=float)  # (R, C)
    grid = np.asarray(grid)
    if heatmap.ndim != 2 or heatmap.shape[1] != len(grid):
        raise ValueError(f"grid: expected {heatmap.shape[-1]} values (the heatmap's columns), got {len(grid)}")
    idx = np.argmax(heatmap, axis=1)  # (R,)
    return grid[idx], heatmap[np.arange(len(idx)), idx]


# ------------------------------------------------------------------------------------ probes
def probe_fit(h, y):
    """The least-squares linear read-out with bias y ~ h . v + c on states h (M, F), labels y (M,):
    minimum-norm v (F,) and c, from the centred problem (the closed form a probe trained to
    convergence reaches)."""
    check_array("h", h, ndim=2)
    check_array("y", y, shape=(h.shape[0],))
    mu_h, mu_y = h.mean(axis=0), y.mean()  # (F,), scalar
    hc = h - mu_h  # (M, F)
    U, s, Vt = np.linalg.svd(hc, full_matrices=False)  # (M, r), (r,), (r, F)
    keep = s > s[0] * max(h.shape) * np.finfo(float).eps if s.size and s[0] > 0 else np.zeros_like(s, bool)
    v = Vt[keep].T @ ((U[:, keep].T @ (y - mu_y)) / s[keep])  # (F,)
    return v, float(mu_y - mu_h @ v)


def probe_predict(h, v, c):
    """y_hat = h . v + c for states h (..., F)."""
    return h @ v + c


# ------------------------------------------------------------------------------ hidden states
def layer_states(params, tokens, cfg):
    """The residual stream after every layer: (L, B, T, D) (the model of refimpl.model, run block
    by block). states[l, :, -1, -1] is minus the read-out after layer l."""
    check_tokens(tokens, cfg)
    check_params(params, cfg)
    H, _ = front_forward(tokens, params, cfg)  # (B, T, D)
    out = np.empty((cfg.num_layers,) + H.shape, dtype=H.dtype)  # (L, B, T, D)
    for l in range(cfg.num_layers):
        H, _ = block_forward(H, params, cfg, l)  # (B, T, D)
        out[l] = H
    return out
