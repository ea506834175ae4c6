"""Task generators (SPEC 1). Randomness only through an explicit numpy.random.Generator.

Shape legend: B tasks, N context pairs, d input dims, T = N + 1 tokens, D = d + 1 token width.
"""
import numpy as np

from .validate import check_positive_int


def linear_regression_tasks(rng, batch, num_context=10, input_dim=10, input_range=1.0,
                            weight_scale=1.0, distractors=0, dtype=np.float64):
    """SPEC 1.1: w ~ N(0, s^2 I), x ~ U(-r/2, r/2)^d, y = w.x; tokens [x_i, y_i] then [x_q, 0].

    Returns tokens (B, N+1, d+1) and targets y_q (B,). With `distractors` = k, k randomly chosen
    context labels per task are replaced by N(0, 1) draws (the target stays w.x_q).
    """
    B = check_positive_int("batch", batch)
    N = check_positive_int("num_context", num_context)
    d = check_positive_int("input_dim", input_dim)
    if not 0 <= distractors <= N:
        raise ValueError(f"distractors: expected 0 <= k <= num_context = {N}, got {distractors}")
    w = rng.standard_normal((B, d)) * weight_scale  # (B, d)
    x = rng.uniform(-input_range / 2, input_range / 2, size=(B, N + 1, d))  # (B, T, d)
    y = x[..., 0] * w[:, None, 0]  # (B, T): y_t = w . x_t, summed over k in order, one rounding
    for k in range(1, d):  # per product and per sum (no BLAS), so that compiled drawers match bit for bit
        y += x[..., k] * w[:, None, k]
    target = y[:, -1].copy()  # (B,)
    y[:, -1] = 0.0  # the query's label slot starts at 0
    if distractors:
        idx = np.argsort(rng.random((B, N)), axis=1)[:, :distractors]  # (B, k) distinct positions
        y[np.arange(B)[:, None], idx] = rng.standard_normal((B, distractors))
    tokens = np.concatenate([x, y[..., None]], axis=-1)  # (B, T, d+1)
    return tokens.astype(dtype, copy=False), target.astype(dtype, copy=False)
