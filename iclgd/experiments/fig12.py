"""Figure 12: one softmax self-attention layer (SPEC 2.2) with 1 and with 2 heads on the linear-
regression tasks, against one GD step and one-layer GD++: loss and alignment over training.

Each head has key size K = D = d + 1; training as the one-layer LSA of fig2 (SPEC 3: 5 000 steps,
batch 2048, Adam 1e-3, clip 0.001). The paper: one softmax head cannot match GD; two heads come
much closer and align far better. For every variant the per-head W_KQ_h scaled by W_PV_h[-1, -1]
(figure 11) is kept in per_seed[i].weights.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import metrics
from refimpl.config import ModelConfig, TaskConfig
from refimpl.fieldcheck import check_fields, check_items
from refimpl.tasks import eval_tasks
from iclgd.experiments.common import mean_over_seeds, resolved_settings
from iclgd.experiments.variants import (check_model_section, gd_reference, gdpp_reference, regression_model,
                                       train_against, variant_model)
from iclgd.gdpp_fit import GDPPConfig
from iclgd.train import TrainConfig


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # 5 000 steps, batch 2048 (as fig2)
    gdpp: GDPPConfig = field(default_factory=GDPPConfig)  # the one-layer GD++ reference (1 000 steps)
    heads: tuple = (1, 2)  # softmax heads per variant (paper: 1 and 2)
    model: ModelConfig = field(default_factory=lambda: MODEL)  # every variant's model; num_heads from `heads`

    def __post_init__(self):
        check_fields(self, "")
        check_items("heads", self.heads, int, ">= 1")
        check_model_section(self, FIXED, MODEL)


MODEL = regression_model(attention="softmax")  # one softmax layer, key size D per head (SPEC 2.2)
FIXED = ("num_layers", "num_heads", "attention")  # set by each variant: one softmax layer with `heads` heads


QUICK = {"train.steps": "300", "train.batch": "256", "train.eval_every": "100", "task.eval_tasks": "1000",
         "train.checkpoint_every": "100", "gdpp.steps_tied": "50", "gdpp.batch": "256"}


def softmax_variants(cfg, seeds, backend, out_dir, resume, progress, heads):
    """Train a one-layer softmax attention with each number of heads; per_seed entries with final,
    curves and the scaled per-head products, and the GD / GD++ settings used."""
    task = cfg.task
    tokens, targets = eval_tasks(task)  # (B, T, D), (B,)
    ref_gd, eta = gd_reference(task, tokens, targets, 1)
    per_seed, steps_run, gdpp = [], 0, {}
    for seed in seeds:
        ref_gdpp, etas, gammas = gdpp_reference(cfg, seed, 1, True, eta, backend, tokens, targets, progress)
        gdpp[seed] = {"eta": etas, "gamma": gammas}
        finals, curves, weights = {}, {}, {}
        for h in heads:
            name = f"softmax{h}"
            m = variant_model(cfg.model, 1, num_heads=int(h))
            res, final = train_against(cfg, name, m, {"gd": ref_gd, "gdpp": ref_gdpp}, seed, backend, out_dir,
                                       resume, progress, tokens, targets)
            steps_run += res.steps_run
            scaled, total = metrics.scaled_head_products(res.params, int(h))  # (nh, D, D), (D, D)
            final.update(offdiagonal_stats(scaled, total, task.input_dim))
            final["heads"] = int(h)
            finals[name], curves[name] = final, res.curves
            weights[name] = {"scaled_W_KQ": scaled, "scaled_W_KQ_sum": total}
        per_seed.append({"seed": seed, "final": finals, "curves": curves, "weights": weights})
    return per_seed, steps_run, {"gd_eta": eta, "gdpp": gdpp}


def offdiagonal_stats(scaled, total, d):
    """On the x block (d, d) of the scaled W_KQ: mean |off-diagonal| per head and of the sum, mean
    diagonal of the sum (GD: -eta/N), and cancellation = |off-diagonal| of the sum / the heads' mean."""
    off = ~np.eye(d, dtype=bool)
    per_head = [float(np.mean(np.abs(s[:d, :d][off]))) for s in scaled]
    out = {f"offdiag_abs_head{h}": v for h, v in enumerate(per_head)}
    out["offdiag_abs_sum"] = float(np.mean(np.abs(total[:d, :d][off])))
    out["diag_mean_sum"] = float(np.mean(np.diag(total)[:d]))
    out["offdiag_cancellation"] = out["offdiag_abs_sum"] / float(np.mean(per_head))
    return out


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    per_seed, steps_run, refs = softmax_variants(cfg, seeds, backend, out_dir, resume, progress, cfg.heads)
    names = list(per_seed[0]["final"])
    return {"final": {n: mean_over_seeds([s["final"][n] for s in per_seed]) for n in names},
            "curves": {n: mean_over_seeds([s["curves"][n] for s in per_seed]) for n in names},
            "per_seed": per_seed, "steps_run": steps_run, **refs, "resolved": resolved_settings(cfg.train),
            "runtime_s": time.perf_counter() - start,
            "notes": "final and curves hold one entry per variant softmaxH (H heads, key size D each); "
                     "model_cos, model_diff, preds_diff against one GD step (gd_eta, the grid optimum), *_gdpp "
                     "against one-layer GD++ (gdpp[seed]: its fitted eta, gamma). per_seed[i].weights[variant]: "
                     "each head's W_KQ_h scaled by W_PV_h[-1, -1] and their sum; offdiag_*: mean |off-diagonal| "
                     "of their x block, offdiag_cancellation = that of the sum / the heads' mean."}
