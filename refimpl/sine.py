"""Sine-wave regression tasks (SPEC 1.3).

Shape legend: B tasks, N context pairs, T = N + 1 tokens, D = 2 token width.
    x ~ U(x_lo, x_hi) (scalar; -5 .. 5), y = a sin(x + rho)
    tokens [x_i, y_i] for i = 1..N, then the query [x_q, 0] LAST; target y_q = a sin(x_q + rho)
Amplitude and phase: a = a_lo + (a_hi - a_lo) u_a and rho = rho_lo + (rho_hi - rho_lo) u_rho with
u ~ U(0, 1). The public code draws ONE u for both (coupled: a and rho perfectly correlated) with
a in 0.1 .. 0.5 and rho in 0 .. pi; the paper's text: a in 0.1 .. 5, independent draws.
"""
import numpy as np

from .validate import check_positive_int

PUBLIC_AMPLITUDE = (0.1, 0.5)  # the public code's amplitude range
PUBLIC_PHASE = (0.0, np.pi)  # the public code's phase range


def _check_range(name, lo_hi):
    lo, hi = (float(v) for v in lo_hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name}: expected (low, high) with low <= high, both finite, got {tuple(lo_hi)!r}")
    return lo, hi


def sine_tasks(rng, batch, num_context=10, x_range=(-5.0, 5.0), amplitude=PUBLIC_AMPLITUDE,
               phase=PUBLIC_PHASE, coupled=False, dtype=np.float64):
    """Tokens (B, N + 1, 2), targets (B,) and the task parameters (a (B,), rho (B,))."""
    B = check_positive_int("batch", batch)
    N = check_positive_int("num_context", num_context)
    x_lo, x_hi = _check_range("x_range", x_range)
    a_lo, a_hi = _check_range("amplitude", amplitude)
    p_lo, p_hi = _check_range("phase", phase)
    u_a = rng.random(B)  # (B,)
    u_p = u_a if coupled else rng.random(B)  # (B,) the public code's single draw when coupled
    a = a_lo + (a_hi - a_lo) * u_a  # (B,)
    rho = p_lo + (p_hi - p_lo) * u_p  # (B,)
    x = rng.uniform(x_lo, x_hi, size=(B, N + 1))  # (B, T)
    y = a[:, None] * np.sin(x + rho[:, None])  # (B, T)
    targets = y[:, -1].copy()  # (B,)
    y[:, -1] = 0.0  # the query's label slot starts at 0
    tokens = np.stack([x, y], axis=-1)  # (B, T, 2)
    return tokens.astype(dtype, copy=False), targets.astype(dtype, copy=False), (a, rho)
