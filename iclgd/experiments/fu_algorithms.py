"""Second-order paper, algorithms only (SPEC 4.4, 5): Iterative Newton against GD and the classical
learners on isotropic and on ill-conditioned Gaussian prompts (SPEC 1.5), no training.

For each data family, on the fixed evaluation prompts (d = 20, 41 pairs): every learner's
prediction at every prefix length; the error against the number of in-context examples (squared
error / d, mean over prompts); the similarity-of-errors heatmaps Newton k (1..23) x GD t on the grid
2^0..2^12 and on {1, 50, 100, ..., 1300}; and per k the best-matching t and its SimE (how many GD
steps one Newton iteration is worth).
"""
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import algorithms as alg
from refimpl.fieldcheck import check_fields, check_items
from refimpl.gaussian import COVARIANCES, GaussianTaskConfig, eval_prompts
from refimpl.similarity import best_matches, residuals

LOG_GRID = tuple(2**j for j in range(13))  # GD t on 2^0 .. 2^12
LINEAR_GRID = (1,) + tuple(range(50, 1301, 50))  # GD t on {1, 50, 100, ..., 1300}


@dataclass(frozen=True)
class Config:
    task: GaussianTaskConfig = field(default_factory=lambda: GaussianTaskConfig(eval_tasks=1000))  # d 20, 41 pairs
    families: tuple = ("isotropic", "ill_conditioned")  # task.covariance of each data family compared
    newton_ks: tuple = tuple(range(1, 24))  # Newton iterations k of the heatmaps (Fu et al.: 1..23)
    gd_log_grid: tuple = LOG_GRID  # GD steps t, grid 2^0..2^12 (best t per Newton k is read off it)
    gd_linear_grid: tuple = LINEAR_GRID  # GD steps t, grid {1, 50, ..., 1300}
    gd_eta: float = 0.01  # GD and online-GD step (Fu et al.: 0.01, no 1/n)
    newton_alpha_scale: float = 1.0  # alpha = scale / ||S S^T||_F (Fu et al.'s code: 1; variant: 2)
    curve_newton_ks: tuple = (1, 2, 3, 5, 8)  # Newton k drawn in the error-vs-examples panel
    curve_gd_steps: tuple = (1, 16, 256, 4096)  # GD t drawn in the error-vs-examples panel
    chunk: int = 250  # prompts per vectorised block (memory: chunk x 41 x 20 x 20 per array)

    def __post_init__(self):
        check_fields(self, "", {"gd_eta": "> 0", "newton_alpha_scale": "(0, 2]", "chunk": ">= 1"})
        check_items("families", self.families, str)
        for f in self.families:
            if f not in COVARIANCES or (f == "diagonal" and not self.task.diagonal):
                raise ValueError(f"families: expected items of {COVARIANCES} ('diagonal' with "
                                 f"task.diagonal set), got {list(self.families)!r}")
        for key in ("newton_ks", "curve_newton_ks"):
            check_items(key, getattr(self, key), int, ">= 0")
        for key in ("gd_log_grid", "gd_linear_grid", "curve_gd_steps"):
            check_items(key, getattr(self, key), int, ">= 0")


QUICK = {"task.eval_tasks": "60", "task.input_dim": "5", "task.num_pairs": "13", "newton_ks": "[1, 2, 3, 4]", "gd_log_grid": "[1, 4, 16, 64, 256]",
         "gd_linear_grid": "[1, 50, 100]", "curve_newton_ks": "[1, 3]", "curve_gd_steps": "[1, 64]"}


def family_results(cfg: Config, task: GaussianTaskConfig):
    """Heatmaps, best matches and error curves of one data family (see the module docstring)."""
    x_all, y_all, _, t = eval_prompts(task)  # (B, n, d), (B, n), _, (d, d)
    B, n, d = x_all.shape
    ks, logs, lins = (np.array(v) for v in (cfg.newton_ks, cfg.gd_log_grid, cfg.gd_linear_grid))
    heat_log = np.zeros((len(ks), len(logs)))  # (K, T_log): summed cosines, divided by B at the end
    heat_lin = np.zeros((len(ks), len(lins)))
    sq = {}  # name -> summed squared error per position (n,)
    diverged = 0  # prompts on which GD diverges
    curve_k, curve_t = list(cfg.curve_newton_ks), list(cfg.curve_gd_steps)
    for start in range(0, B, cfg.chunk):
        x, y = x_all[start:start + cfg.chunk], y_all[start:start + cfg.chunk]  # (b, n, d), (b, n)
        sp = alg.prefix_spectra(x, y)  # one eigendecomposition per prefix serves every learner
        newton = alg.newton_predictions(x, y, np.concatenate([ks, curve_k]).astype(int),
                                        cfg.newton_alpha_scale, spectra=sp)  # (K + Kc, b, n)
        gd = alg.gd_predictions(x, y, np.concatenate([logs, lins, curve_t]), cfg.gd_eta, spectra=sp)  # (Tl + Tn + Tc, b, n)
        # GD at a fixed eta diverges on a prompt whose prefix has eta lambda_max(S) > 2: such prompts
        # are counted and left out of every statistic (all learners on the same prompts)
        kept = alg.gd_stable(x, cfg.gd_eta)  # (b,)
        diverged += int(np.sum(~kept))
        x, y, newton, gd = x[kept], y[kept], newton[:, kept], gd[:, kept]
        sp = {k: v[kept] for k, v in sp.items()}
        r_newton, r_gd = _unit(residuals(newton[:len(ks)], y)), _unit(residuals(gd, y))
        heat_log += np.einsum("kbn,tbn->kt", r_newton, r_gd[:len(logs)])
        heat_lin += np.einsum("kbn,tbn->kt", r_newton, r_gd[len(logs):len(logs) + len(lins)])
        curves = {f"newton_k{k}": newton[len(ks) + i] for i, k in enumerate(curve_k)}
        curves.update({f"gd_t{s}": gd[len(logs) + len(lins) + i] for i, s in enumerate(curve_t)})
        curves.update(alg.all_learners(x, y, cfg.gd_eta, spectra=sp))
        for name, pred in curves.items():
            sq[name] = sq.get(name, 0.0) + np.sum((pred - y) ** 2, axis=0)  # (n,)
    used = B - diverged
    heat_log, heat_lin = heat_log / used, heat_lin / used
    best_t, best_sim = best_matches(heat_log, logs)
    best_t_lin, best_sim_lin = best_matches(heat_lin, lins)
    sigma = t.T @ t  # (d, d)
    eig = np.linalg.eigvalsh(sigma)
    out = {"best_gd_t_for_newton_k": [int(v) for v in best_t], "best_gd_t_sime": best_sim,
           "best_gd_t_for_newton_k_linear": [int(v) for v in best_t_lin], "best_gd_t_sime_linear": best_sim_lin,
           "heatmap_newton_gd_log": heat_log, "heatmap_newton_gd_linear": heat_lin,
           "error_vs_examples": {name: v / (used * d) for name, v in sq.items()},
           "prompts": B, "gd_diverged_prompts": diverged,
           "sigma_condition_number": float(eig[-1] / eig[0]), "sigma_trace": float(np.trace(sigma))}
    for k, tt, s in zip(ks, best_t, best_sim):
        out[f"best_gd_t_newton_k{int(k)}"] = int(tt)
        out[f"best_gd_t_sime_newton_k{int(k)}"] = float(s)
    for name, v in out["error_vs_examples"].items():
        out[f"err_{name}_at_n{d}"] = float(v[d])  # squared error / d with d examples
        out[f"err_{name}_at_n{n - 1}"] = float(v[n - 1])
    return out


def _unit(r):
    return r / np.maximum(np.linalg.norm(r, axis=-1, keepdims=True), 1e-30)


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    final = {f: family_results(cfg, dataclasses.replace(cfg.task, covariance=f)) for f in cfg.families}
    return {"final": final, "curves": {}, "per_seed": [], "steps_run": 0,
            "grids": {"newton_k": list(cfg.newton_ks), "gd_log": list(cfg.gd_log_grid),
                      "gd_linear": list(cfg.gd_linear_grid), "examples": list(range(cfg.task.num_pairs))},
            "runtime_s": time.perf_counter() - start,
            "notes": "no training: the seeds and the backend do not enter; the prompts are the fixed "
                     "evaluation prompts of task.eval_seed (one seeded rotation for ill_conditioned). "
                     "final[family]: best_gd_t_for_newton_k[i] is the GD step count t on gd_log_grid "
                     "whose residuals are most similar (SimE) to Newton's after newton_ks[i] iterations; "
                     "error_vs_examples[name][i] = mean squared error / d predicting pair i from the i before it."}
