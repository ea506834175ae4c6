"""Figure 13: how GD++ conditions the data (SPEC 5, the paper's appendix A.10).

The gammas are those of the GD++ models fitted in a fig3 run (`gammas_from`; "fit" fits the
weight-tied 2-layer GD++ here instead). Only the x transforms that reach the read-out count: every
layer but the last (a weight-tied model of L layers: L - 1 transforms with its one gamma). On the
evaluation tasks (N = 25, 10 000 tasks as in the paper's right panel; and on the law the gammas were
fitted on, fig3's task) it computes the eigenvalues of X^T X, maps them through
lambda -> lambda (1 - gamma lambda)^2 layer by layer (refimpl.conditioning), and records the
condition number's distribution before, after the first transform and after all of them; and the
optimum gamma from the extreme eigenvalues over all tasks (the paper's derivation).
"""
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import baselines, conditioning
from refimpl.config import TaskConfig, config_from_dict
from refimpl.fieldcheck import check_fields
from refimpl.tasks import eval_tasks
from iclgd.gdpp_fit import GDPPConfig, fit_gdpp
from iclgd.train import TrainConfig


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=lambda: TaskConfig(num_context=25))  # N = 25, 10 000 tasks (paper)
    train: TrainConfig = field(default_factory=TrainConfig)  # the token law's batch source for gammas_from="fit"
    gdpp: GDPPConfig = field(default_factory=GDPPConfig)  # the fit of gammas_from="fit"
    gammas_from: str = "results/fig3/results.json"  # a fig3 results.json, or "fit" (tied 2-layer GD++ here)
    bins: int = 60  # histogram bins of log10 kappa
    map_points: int = 400  # lambda grid of the eigenvalue-map panel

    def __post_init__(self):
        check_fields(self, "", {"bins": "[2, 10000]", "map_points": "[2, 100000]"})
        if not self.gammas_from:
            raise ValueError("gammas_from: expected a fig3 results.json path or 'fit', got ''")


QUICK = {"task.eval_tasks": "1000", "gdpp.steps_tied": "50", "gdpp.batch": "256", "gammas_from": "fit"}


def fitted_gammas(results):
    """{variant: [gamma of each x transform that reaches the read-out]} from fig3's results: a deep
    model's per-layer gammas but the last's, a weight-tied model's one gamma L - 1 times."""
    out = {}
    for name, v in results["final"].items():
        g = [float(x) for x in v["gdpp_gamma"]]
        out[name] = g * (int(v["layers"]) - 1) if v["weight_tied"] else g[:-1]
    return out


def load_gammas(cfg: Config, seed, backend, progress):
    """({variant: gammas}, the TaskConfig they were fitted on, where they came from)."""
    if cfg.gammas_from == "fit":
        fit_task = TaskConfig(eval_tasks=cfg.task.eval_tasks, eval_seed=cfg.task.eval_seed)
        tokens, targets = eval_tasks(fit_task)
        eta, _ = baselines.grid_search_eta(tokens, targets, steps=1)
        _, gammas, _ = fit_gdpp(fit_task, cfg.gdpp, cfg.train, seed, 2, True, eta, progress, backend,
                                eval_set=(tokens, targets))
        return {"tied2": [float(gammas[0])]}, fit_task, f"fitted here: tied 2-layer GD++, {cfg.gdpp.steps_tied} Adam steps"
    path = cfg.gammas_from
    if not os.path.isfile(path):
        raise ValueError(f"gammas_from: expected a fig3 results.json or 'fit', found no file at {path!r}")
    with open(path) as f:
        r = json.load(f)
    if r.get("experiment") != "fig3" or r.get("status", "complete") != "complete":
        raise ValueError(f"gammas_from: expected a complete fig3 results.json, got {r.get('experiment')!r} "
                         f"({r.get('status', 'complete')}) at {path!r}")
    if r.get("quick"):
        raise ValueError(f"gammas_from: {path!r} is a --quick fig3 run; name a full run, or 'fit'")
    return fitted_gammas(r), config_from_dict(TaskConfig, r["config"]["task"], "task"), path


def kappa_stats(eigs, gammas_by_variant, edges):
    """Condition numbers before and after the transforms: {key: number} and {key: histogram}."""
    before = conditioning.condition_numbers(eigs)  # (B,)
    final, hist = {"kappa_median_before": float(np.median(before))}, {"before": _hist(before, edges)}
    for name, gammas in gammas_by_variant.items():
        stages = conditioning.gdpp_transformed_eigenvalues(eigs, gammas)
        for tag, e in (("1", stages[1]), ("all", stages[-1])):
            k = conditioning.condition_numbers(e)  # (B,)
            final[f"kappa_median_{name}_{tag}"] = float(np.median(k))
            final[f"kappa_decreased_{name}_{tag}"] = float(np.mean(k < before))
            hist[f"{name}_{tag}"] = _hist(k, edges)
    return final, hist


def _hist(kappa, edges):
    """Counts of log10 kappa in the bins `edges`, the outermost bins open-ended (inf in the last)."""
    logk = np.log10(np.clip(kappa, 1.0, 10 ** edges[-1]))
    return np.histogram(np.clip(logk, edges[0], edges[-1]), bins=edges)[0].tolist()


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    gammas, fit_task, source = load_gammas(cfg, seeds[0], backend, progress)
    eigs = conditioning.gram_eigenvalues(eval_tasks(cfg.task)[0])  # (B, d) the paper's N = 25 set
    eigs_fit = conditioning.gram_eigenvalues(eval_tasks(fit_task)[0])  # (B, d) the gammas' own law
    lam_min, lam_max = float(eigs.min()), float(eigs.max())
    gamma_opt, kappa_opt = conditioning.optimal_gamma(lam_min, lam_max)
    edges = np.linspace(0.0, 6.0, cfg.bins + 1)  # log10 kappa from 1 to 1e6 (larger in the last bin)
    final, hist = kappa_stats(eigs, gammas, edges)
    final_fit, hist_fit = kappa_stats(eigs_fit, gammas, edges)
    final.update({f"{k}_fitlaw": v for k, v in final_fit.items()})
    final.update({"lambda_min": lam_min, "lambda_max": lam_max, "kappa_extremes": lam_max / lam_min,
                  "gamma_opt": gamma_opt, "kappa_bound_opt": kappa_opt})
    for name, g in gammas.items():  # infinite (left out) when 1/gamma lies inside [lambda_min, lambda_max]
        bound = float(conditioning.extreme_condition_bound(np.array(g[:1]), lam_min, lam_max)[0])
        if np.isfinite(bound):
            final[f"kappa_bound_{name}"] = bound
    lam = np.linspace(0.0, lam_max, cfg.map_points)  # (G,)
    distinct = sorted({round(g, 12) for gs in gammas.values() for g in gs} | {round(gamma_opt, 12)})
    gamma_grid = np.logspace(-3, 1, 400) / lam_max * 10  # (G,) around the optimum
    return {"final": final, "gammas": gammas, "gammas_source": source,
            "fit_task": {"num_context": fit_task.num_context, "input_dim": fit_task.input_dim,
                         "input_range": fit_task.input_range},
            "curves": {"map": {"lambda": lam, "gamma": distinct,
                               "f": [conditioning.gdpp_eigenvalue_map(lam, g) for g in distinct]},
                       "bound": {"gamma": gamma_grid,
                                 "kappa": conditioning.extreme_condition_bound(gamma_grid, lam_min, lam_max)},
                       "hist": {"log10_edges": edges, "eval": hist, "fitlaw": hist_fit}},
            "per_seed": [], "steps_run": 0, "runtime_s": time.perf_counter() - start,
            "notes": "gammas[variant]: the x transforms that reach the read-out (fig3's fitted gammas, the last "
                     "layer's left out; a tied model's gamma L - 1 times). kappa_*: condition numbers of X^T X "
                     "of the evaluation tasks (task: N = 25), _fitlaw on the law the gammas were fitted on "
                     "(fit_task); _1 after the first transform, _all after all; kappa_decreased_*: the fraction "
                     "of tasks whose kappa went down. gamma_opt minimises kappa_bound (the paper's bound from "
                     "the extreme eigenvalues over all tasks, refimpl.conditioning); kappa_bound_VARIANT: that "
                     "bound at the variant's first gamma, absent where it is infinite (1/gamma inside the spectrum). curves.hist: counts of log10 kappa in log10_edges."}
