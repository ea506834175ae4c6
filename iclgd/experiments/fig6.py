"""Figures 6 and 7: out-of-distribution behaviour of a trained LSA layer, GD, GD++ and the
interpolated model (SPEC 1.2), and their losses with distractor labels.

One LSA layer is trained as in fig2 (inputs U(-1/2, 1/2)^d, weights N(0, I)); then, on the fixed
evaluation set rescaled for every alpha (one draw, so the curves are smooth):
  input   x -> alpha x (alpha in input_grid)
  weight  w -> alpha w (alpha in weight_grid; every loss is exactly alpha^2 times the alpha = 1 loss)
  laws    exponential / normal / Laplace inputs normalised by ||X||_F, times alpha (law_grid)
and with k = 0 .. N context labels replaced by N(0, 1) draws (distractors). The evaluation is
iclgd.experiments.ood's, which fig7 runs on figure 3's multi-layer models.

For the input scale, one GD step's expected loss over the uniform law in closed form
(refimpl.baselines.expected_one_step_gd_loss_uniform) at the eta the run uses (the grid optimum on
the evaluation set) and at the exact optimum eta/N = E tr S / E tr S^2 of the training law; the
learning rate behind each curve is in ood.eta_over_n.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import baselines, metrics
from refimpl.tasks import eval_tasks
from iclgd.train import TrainConfig
from refimpl.config import TaskConfig
from refimpl.fieldcheck import check_fields
from iclgd.evaluation import evaluation_ops
from iclgd.gdpp_fit import GDPPConfig, fit_gdpp
from iclgd.experiments import ood as ood_eval
from iclgd.experiments.common import lsa_config, make_evaluator, mean_over_seeds, resolved_settings, train_model


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the one-layer training of fig2
    gdpp: GDPPConfig = field(default_factory=GDPPConfig)
    input_grid: tuple = (0.5, 2.0, 0.03)  # start, stop, step of the input scale (SPEC 1.2)
    weight_grid: tuple = (0.5, 5.0, 0.1)  # start, stop, step of the weight scale (SPEC 1.2)
    law_grid: tuple = (0.5, 5.0, 0.1)  # start, stop, step of alpha for the other input laws

    def __post_init__(self):
        check_fields(self, "")
        ood_eval.check_grids(self)


QUICK = {"train.steps": "300", "train.batch": "256", "train.eval_every": "100",
         "task.eval_tasks": "1000", "train.checkpoint_every": "100", "gdpp.steps_tied": "50",
         "gdpp.batch": "256", "input_grid": "[0.5, 2.0, 0.3]", "weight_grid": "[0.5, 5.0, 1.5]",
         "law_grid": "[0.5, 5.0, 1.5]"}

REPORTED_INPUT_SCALES = (0.5, 0.8, 1.1, 1.4, 1.7, 2.0)  # where SPEC 6 lists one-step GD losses


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    task = cfg.task
    d, N = task.input_dim, task.num_context
    tokens, targets = eval_tasks(task, distractors=0)
    law_set = ood_eval.law_tasks(task)  # tokens (B, T, D), targets (B,), law (B,)
    eta, _ = baselines.grid_search_eta(tokens, targets, steps=1)
    gd = (baselines.gd_params(d, eta, N), baselines.gd_model_config(d, 1))
    ops = evaluation_ops(backend)
    ref = metrics.Reference(*gd, tokens, targets, ops)
    cfg_tf = lsa_config(task)
    evaluate = make_evaluator(cfg_tf, tokens, targets, {"gd": ref}, backend)
    grids = ood_eval.grids(cfg)
    per_seed, steps_run = [], 0
    for seed in seeds:
        res = train_model(cfg_tf, cfg, seed, backend, out_dir, "lsa1", evaluate, resume, progress)
        steps_run += res.steps_run
        etas, gammas, fit = fit_gdpp(task, cfg.gdpp, cfg.train, seed, 1, True, eta, progress, backend,
                                     eval_set=(tokens, targets))
        interp, _ = metrics.interpolated_params(res.params, gd[0], d)
        models = {"tf": (res.params, cfg_tf), "gd": gd, "interp": (interp, gd[1]),
                  "gdpp": (baselines.gdpp_params(d, etas, gammas, N), baselines.gdpp_model_config(d, 1, True))}
        ood = ood_eval.ood_curves(models, task, tokens, targets, grids, law_set, ops)
        final = evaluate(res.params)
        final.update({"loss_gd": ref.loss, "loss_interp": metrics.losses(interp, tokens, targets, gd[1], ops)[0],
                      "gdpp_eta": etas, "gdpp_gamma": gammas, "gdpp_fit": fit})
        for name, (params, model_cfg) in models.items():
            final[f"weight_scale_law_dev_{name}"] = ood_eval.weight_scale_law_dev(
                ood["weight"][name], grids["weight"], metrics.losses(params, tokens, targets, model_cfg, ops)[0])
        for name in ("tf", "interp"):  # the step a learned layer takes: -W_KQ diagonal x W_PV[-1, -1]
            W_KQ, W_PV = metrics.layer_products(models[name][0])  # (D, D) each
            final[f"{name}_eta_over_n"] = float(-np.mean(np.diag(W_KQ)[:d]) * W_PV[d, d])
        final["gdpp_eta_over_n"] = float(np.mean(etas)) / N
        for r in REPORTED_INPUT_SCALES:
            i = int(np.argmin(np.abs(grids["input"] - r)))
            final[f"loss_gd_input_{grids['input'][i]:.2f}"] = ood["input"]["gd"][i]
            final[f"loss_tf_input_{grids['input'][i]:.2f}"] = ood["input"]["tf"][i]
        per_seed.append({"seed": seed, "final": final, "curves": res.curves, "ood": ood})
    closed = closed_form_input_curves(task, eta, grids["input"])
    final = mean_over_seeds([s["final"] for s in per_seed])
    final.update({"gd_eta_over_n": eta / N, "gd_eta_over_n_opt": closed["eta_opt"] / N})
    for r in REPORTED_INPUT_SCALES:
        i = int(np.argmin(np.abs(grids["input"] - r)))
        final[f"loss_gd_closed_form_input_{grids['input'][i]:.2f}"] = closed["gd"][i]
        final[f"loss_gd_closed_form_opt_input_{grids['input'][i]:.2f}"] = closed["gd_opt"][i]
    eta_over_n = {"tf": final["tf_eta_over_n"], "interp": final["interp_eta_over_n"], "gd": eta / N,
                  "gdpp": final["gdpp_eta_over_n"], "gd_closed_form": eta / N,
                  "gd_closed_form_opt": closed["eta_opt"] / N}
    return {"final": final,
            "curves": mean_over_seeds([s["curves"] for s in per_seed]),
            "ood": {**ood_eval.ood_axes(grids, task, law_set[2]),
                    **mean_over_seeds([s["ood"] for s in per_seed]),
                    "input_closed_form": {"gd": closed["gd"], "gd_opt": closed["gd_opt"]},
                    "eta_over_n": eta_over_n},
            "per_seed": per_seed, "steps_run": steps_run, "resolved": resolved_settings(cfg.train),
            "runtime_s": time.perf_counter() - start,
            "notes": "ood[family][model]: mean loss over the evaluation set at each ood.alpha[family] "
                     "(None = diverged); ood.by_law[law][model]: the laws family split by input law, over "
                     "ood.law_tasks[law] tasks each (alpha from ood.alpha.laws); ood.distractors[model][i]: loss with ood.k[i] distractor labels. "
                     "GD++ with one layer trains eta only (gamma acts after the read-out's input). "
                     "weight_scale_law_dev_*: max |loss(alpha) / (alpha^2 loss(1)) - 1|. "
                     "ood.input_closed_form: one GD step's expected loss over the uniform law in closed form "
                     "at input scale alpha, at the run's eta (gd, the grid optimum on the evaluation set) and "
                     "at the exact optimum of the training law (gd_opt); ood.eta_over_n: the eta/N of each "
                     "curve (tf, interp: -mean diag W_KQ x W_PV[-1,-1] of the layer)."}


def closed_form_input_curves(task, eta, alphas):
    """One GD step's expected loss (closed form, uniform inputs) at input scale alpha (range
    alpha * r), at `eta` and at the exact optimum eta_opt of the law at scale 1: {gd, gd_opt, eta_opt}."""
    d, N = task.input_dim, task.num_context
    eta_opt = baselines.closed_form_eta_uniform(d, N, task.input_range)
    def curve(e):
        return [float(baselines.expected_one_step_gd_loss_uniform(d, N, e, a * task.input_range, task.weight_scale))
                for a in alphas]
    return {"gd": curve(eta), "gd_opt": curve(eta_opt), "eta_opt": eta_opt}
