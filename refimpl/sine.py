"""Sine-wave regression tasks (SPEC 1.3).

Shape legend: B tasks, N context pairs, T = N + 1 tokens, D = 2 token width.
    x ~ U(x_lo, x_hi) (scalar; -5 .. 5), y = a sin(x + rho)
    tokens [x_i, y_i] for i = 1..N, then the query [x_q, 0] LAST; target y_q = a sin(x_q + rho)
Amplitude and phase: a = a_lo + (a_hi - a_lo) u_a and rho = rho_lo + (rho_hi - rho_lo) u_rho with
u ~ U(0, 1). The public code draws ONE u for both (coupled: a and rho perfectly correlated) with
a in 0.1 .. 0.5 and rho in 0 .. pi; the paper's text: a in 0.1 .. 5, independent draws.
"""
from dataclasses import dataclass

import numpy as np

from .fieldcheck import check_fields
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


@dataclass(frozen=True)
class SineTaskConfig:
    num_context: int = 10  # N context pairs (paper: 10)
    x_low: float = -5.0  # x ~ U(x_low, x_high) (paper: -5 .. 5)
    x_high: float = 5.0  # upper end of the x range
    amplitude_low: float = 0.1  # a range; the public code's 0.1 .. 0.5 (paper text: 0.1 .. 5)
    amplitude_high: float = 0.5  # upper end of the amplitude range
    phase_low: float = 0.0  # rho range (0 .. pi)
    phase_high: float = float(np.pi)  # upper end of the phase range
    coupled: bool = False  # one u for a and rho (the public code's quirk); default: independent draws
    eval_tasks: int = 10000  # size of the fixed evaluation set
    eval_seed: int = 2023  # seed of the evaluation set's Generator (independent of training seeds)

    def __post_init__(self):
        check_fields(self, "task", {"num_context": ">= 1", "eval_tasks": ">= 1", "eval_seed": ">= 0"})
        for name in ("x", "amplitude", "phase"):
            lo, hi = getattr(self, f"{name}_low"), getattr(self, f"{name}_high")
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise ValueError(f"task.{name}_low, task.{name}_high: expected finite numbers with low <= high, "
                                 f"got {lo!r}, {hi!r}")

    def draw(self, rng, batch, dtype=np.float64):
        """sine_tasks with these ranges: tokens (B, N + 1, 2), targets (B,), (a, rho)."""
        return sine_tasks(rng, batch, self.num_context, (self.x_low, self.x_high),
                          (self.amplitude_low, self.amplitude_high), (self.phase_low, self.phase_high),
                          self.coupled, dtype)


def eval_sine_tasks(task: SineTaskConfig):
    """The fixed evaluation set: tokens (E, N + 1, 2), targets (E,), (a, rho), from eval_seed."""
    return task.draw(np.random.default_rng(task.eval_seed), task.eval_tasks)


class SineSource:
    """Training batches of sine tasks (the task-source interface of refimpl.tasks.TaskSource): a
    fresh batch from the training Generator at every step (`draw` is ignored)."""

    uses_draw = False  # next_batch ignores a backend's drawer of uniform tasks

    def __init__(self, task: SineTaskConfig, batch):
        self.task, self.batch = task, check_positive_int("batch", batch)

    def next_batch(self, rng, step, draw=None):
        tokens, targets, _ = self.task.draw(rng, self.batch)
        return tokens, targets
