"""Figure 2 (+ figure 9): one trained LSA layer against one step of gradient descent.

Trains a one-layer LSA (SPEC 2.1, D = K = 11) for 5 000 steps; every 100 steps evaluates on the
fixed evaluation set its loss and its alignment with one GD step (eta from the grid, SPEC 4.1):
preds diff, model cos, model diff (SPEC 5). At the end: the interpolated model, the learned
W_Q W_K^T and W_V W_P, and both GD learning rates (grid optimum and closed form).
"""
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import baselines, metrics
from iclgd.train import TrainConfig
from refimpl.config import TaskConfig
from iclgd.evaluation import evaluation_ops
from iclgd.experiments.common import mean_over_seeds, one_layer_against_gd, resolved_settings, train_model


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # 5 000 steps, batch 2048


QUICK = {"train.steps": "300", "train.batch": "256", "train.eval_every": "50",
         "task.eval_tasks": "1000", "train.checkpoint_every": "100"}


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    task = cfg.task
    d, N = task.input_dim, task.num_context
    tokens, targets, eta, (gd, gd_cfg, ref), cfg_tf, evaluate = one_layer_against_gd(task, backend)  # (B, T, D), (B,)
    ops = evaluation_ops(backend)
    per_seed, steps_run = [], 0
    for seed in seeds:
        res = train_model(cfg_tf, cfg, seed, backend, out_dir, "lsa1", evaluate, resume, progress)
        steps_run += res.steps_run
        final = evaluate(res.params)
        interp, m = metrics.interpolated_params(res.params, gd, d)
        W_KQ, W_PV = metrics.layer_products(res.params)  # (D, D) each
        final.update({
            "loss_gd": ref.loss,
            "loss_interp": metrics.losses(interp, tokens, targets, gd_cfg, ops)[0],
            "loss_zero": float(0.5 * np.mean(targets**2)),
            "interp_scale_m": m,
            "kq_pv_diag": float(np.mean(np.diag(W_KQ)[:d]) * W_PV[d, d]),  # ~ -eta/N for GD
        })
        per_seed.append({"seed": seed, "final": final, "curves": res.curves,
                         "weights": {"W_KQ": W_KQ, "W_PV": W_PV}})
    final = mean_over_seeds([s["final"] for s in per_seed])
    final.update({"gd_eta": eta, "gd_eta_over_n": eta / N,
                  "gd_eta_closed_form": baselines.closed_form_eta(tokens),
                  "gd_eta_closed_form_exact": baselines.closed_form_eta_uniform(d, N, task.input_range)})
    W_KQ_gd, W_PV_gd = metrics.layer_products(gd)
    return {"final": final, "curves": mean_over_seeds([s["curves"] for s in per_seed]),
            "per_seed": per_seed, "steps_run": steps_run, "resolved": resolved_settings(cfg.train),
            "weights_gd": {"W_KQ": W_KQ_gd, "W_PV": W_PV_gd},
            "runtime_s": time.perf_counter() - start,
            "notes": "gd_eta: grid optimum on the evaluation set; gd_eta_closed_form: N E tr S / E tr S^2 "
                     "on the evaluation set (_exact: in expectation for the uniform law)."}
