"""One LSA layer on x ~ N(0, Lambda), Lambda diagonal: the learned preconditioner against the
theory (Ahn et al. 2023; Zhang, Frei and Bartlett 2024).

With N context pairs, w ~ N(0, I) and y = w . x, the best one-layer linear-attention predictor of
the form x_q^T P (1/N) sum_i y_i x_i has
    P* = Gamma^-1,  Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I
and, for any P (E[S A S] of the sample covariance S = (1/N) sum x_i x_i^T is (1 + 1/N) Lambda A Lambda
+ tr(A Lambda)/N Lambda), the risk  mean 0.5 (y_hat - y)^2 =
    0.5 [tr(P^T Lambda P Gamma Lambda) - 2 tr(Lambda P Lambda) + tr Lambda],
which at P = Gamma^-1 is 0.5 (tr Lambda - sum_j lambda_j^2 / gamma_j). Our LSA (SPEC 2.1, no 1/N)
predicts -(W_v W_p)[-1,-1] x_q^T (W_q W_k^T)[:d,:d] sum_i y_i x_i plus terms whose optimum is 0, so
its preconditioner is P = -N (W_v W_p)[-1,-1] (W_q W_k^T)[:d,:d].
"""
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import metrics
from refimpl.fieldcheck import check_fields
from refimpl.gaussian import GaussianTaskConfig, GaussianTaskSource, constructed_tokens, eval_prompts
from iclgd.train import TrainConfig
from iclgd.experiments.common import lsa_config, mean_over_seeds, resolved_settings, train_model

LAMBDA = tuple(round(0.2 * j, 1) for j in range(1, 11))  # 0.2, 0.4, ..., 2.0


@dataclass(frozen=True)
class Config:
    task: GaussianTaskConfig = field(default_factory=lambda: GaussianTaskConfig(
        input_dim=10, num_pairs=21, covariance="diagonal", diagonal=LAMBDA, eval_tasks=100000))  # d 10, N 20
    train: TrainConfig = field(default_factory=TrainConfig)  # one layer: 5 000 steps, batch 2048 (SPEC 3)
    curve_tasks: int = 10000  # evaluation tasks used for the curves every eval_every steps (the final numbers use all)

    def __post_init__(self):
        check_fields(self, "", {"curve_tasks": ">= 1"})
        if self.task.covariance != "diagonal":
            raise ValueError(f"task.covariance: expected 'diagonal' (this experiment needs a diagonal "
                             f"Lambda), got {self.task.covariance!r}")


QUICK = {"train.steps": "300", "train.batch": "256", "train.eval_every": "100",
         "task.eval_tasks": "2000", "curve_tasks": "1000", "train.checkpoint_every": "100"}


def theory_gamma(lam, N):
    """Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I (d, d) for the diagonal lam (d,)."""
    lam = np.asarray(lam, dtype=float)
    return np.diag((1 + 1 / N) * lam + lam.sum() / N)


def preconditioner_risk(P, lam, N):
    """The closed-form risk mean 0.5 (y_hat - y)^2 of y_hat = x_q^T P (1/N) sum_i y_i x_i (module docstring)."""
    Lam = np.diag(np.asarray(lam, dtype=float))  # (d, d)
    G = theory_gamma(lam, N)
    return float(0.5 * (np.trace(P.T @ Lam @ P @ G @ Lam) - 2 * np.trace(Lam @ P @ Lam) + np.trace(Lam)))


def learned_preconditioner(params, d, N):
    """P = -N (W_v W_p)[-1,-1] (W_q W_k^T)[:d,:d] (d, d) of a one-layer LSA."""
    W_KQ, W_PV = metrics.layer_products(params)  # (D, D) each
    return -N * W_PV[-1, -1] * W_KQ[:d, :d]


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    task = cfg.task
    d, N = task.input_dim, task.num_pairs - 1
    x, y, _, _ = eval_prompts(task)  # (B, N + 1, d), (B, N + 1)
    tokens, targets = constructed_tokens(x, y)  # (B, T, D), (B,)
    few = min(cfg.curve_tasks, len(targets))
    cfg_tf = lsa_config(dataclasses.replace(_as_uniform_shape(task)))
    G_inv = np.linalg.inv(theory_gamma(task.diagonal, N))  # (d, d)
    theory_pred = np.einsum("bd,de,be->b", x[:, -1], G_inv, np.einsum("bn,bnd->bd", y[:, :-1], x[:, :-1])) / N  # (B,)
    risk = preconditioner_risk(G_inv, task.diagonal, N)

    def evaluate(params):
        return {"loss_tf": metrics.losses(params, tokens[:few], targets[:few], cfg_tf)[0]}

    per_seed, steps_run = [], 0
    for seed in seeds:
        source = GaussianTaskSource(task, cfg.train.batch)
        res = train_model(cfg_tf, cfg, seed, backend, out_dir, "lsa1", evaluate, resume, progress, source=source)
        steps_run += res.steps_run
        P = learned_preconditioner(res.params, d, N)  # (d, d)
        loss_tf = metrics.losses(res.params, tokens, targets, cfg_tf)[0]
        loss_theory = float(0.5 * np.mean((theory_pred - targets) ** 2))
        diag_err = np.abs(np.diag(P) / np.diag(G_inv) - 1)  # (d,)
        final = {
            "loss_tf": loss_tf, "risk_closed_form": risk, "loss_theory_empirical": loss_theory,
            "risk_learned_preconditioner": preconditioner_risk(P, task.diagonal, N),
            "loss_tf_vs_closed_form": loss_tf / risk - 1, "loss_tf_vs_theory_empirical": loss_tf / loss_theory - 1,
            "loss_zero": float(0.5 * np.mean(targets**2)),
            "preconditioner_rel_error": float(np.linalg.norm(P - G_inv) / np.linalg.norm(G_inv)),
            "preconditioner_max_diag_rel_error": float(diag_err.max()),
            "preconditioner_offdiag_max": float(np.max(np.abs(P - np.diag(np.diag(P))))),
            "preconditioner_learned": P, "preconditioner_theory": G_inv,
        }
        per_seed.append({"seed": seed, "final": final, "curves": res.curves})
    return {"final": mean_over_seeds([s["final"] for s in per_seed]),
            "curves": mean_over_seeds([s["curves"] for s in per_seed]), "per_seed": per_seed,
            "steps_run": steps_run, "resolved": resolved_settings(cfg.train), "runtime_s": time.perf_counter() - start,
            "notes": "preconditioner_learned = -N (W_v W_p)[-1,-1] (W_q W_k^T)[:d,:d]; preconditioner_theory = "
                     "Gamma^-1; risk_closed_form = 0.5 (tr Lambda - sum lambda_j^2 / gamma_j); loss_tf and "
                     "loss_theory_empirical (the Gamma^-1 predictor) on the same task.eval_tasks prompts; "
                     "risk_learned_preconditioner: the closed-form risk of the learned P alone."}


def _as_uniform_shape(task: GaussianTaskConfig):
    """The TaskConfig fields lsa_config reads (input_dim) for a Gaussian task."""
    from refimpl.config import TaskConfig
    return TaskConfig(input_dim=task.input_dim, num_context=task.num_pairs - 1)
