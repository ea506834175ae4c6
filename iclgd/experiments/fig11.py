"""Figure 11: the trained 2-head softmax self-attention layer of figure 12, head by head: each
head's W_KQ_h = W_q^h W_k^h^T scaled by eta_h = W_PV_h[-1, -1] (W_PV_h = W_v^h W_p^h), and their
sum, in which the heads' off-diagonal terms cancel (the paper's appendix A.9).

The layer is the `softmax2` variant of a fig12 run (`weights_from`, its results.json keeps the
scaled products of every seed), or "train": trained here as fig12 trains it (fig12.Config settings).
"""
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl.config import ModelConfig, TaskConfig
from refimpl.fieldcheck import check_fields
from iclgd.experiments import fig12
from iclgd.experiments.common import mean_over_seeds, resolved_settings
from iclgd.experiments.fig12 import softmax_variants
from iclgd.experiments.variants import check_model_section
from iclgd.gdpp_fit import GDPPConfig
from iclgd.train import TrainConfig

VARIANT = "softmax2"


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)  # used with weights_from="train"
    train: TrainConfig = field(default_factory=TrainConfig)  # used with weights_from="train" (as fig12)
    gdpp: GDPPConfig = field(default_factory=GDPPConfig)  # used with weights_from="train" (as fig12)
    model: ModelConfig = field(default_factory=lambda: fig12.MODEL)  # used with weights_from="train" (as fig12)
    weights_from: str = "results/fig12/results.json"  # a fig12 results.json with a softmax2 variant, or "train"

    def __post_init__(self):
        check_fields(self, "")
        check_model_section(self, fig12.FIXED, fig12.MODEL)
        if not self.weights_from:
            raise ValueError("weights_from: expected a fig12 results.json path or 'train', got ''")


QUICK = {"train.steps": "300", "train.batch": "256", "train.eval_every": "100", "task.eval_tasks": "1000",
         "train.checkpoint_every": "100", "gdpp.steps_tied": "50", "gdpp.batch": "256", "weights_from": "train"}


def load_per_seed(cfg: Config, seeds, backend, out_dir, resume, progress):
    """(per_seed entries of the 2-head variant, steps run here, where they came from)."""
    if cfg.weights_from == "train":
        per_seed, steps, _ = softmax_variants(cfg, seeds, backend, out_dir, resume, progress, (2,))
        return per_seed, steps, "trained here (weights_from=train)"
    path = cfg.weights_from
    if not os.path.isfile(path):
        raise ValueError(f"weights_from: expected a fig12 results.json or 'train', found no file at {path!r}")
    with open(path) as f:
        r = json.load(f)
    if r.get("experiment") != "fig12" or r.get("status", "complete") != "complete" or VARIANT not in r["final"]:
        raise ValueError(f"weights_from: expected a complete fig12 results.json with a {VARIANT} variant, "
                         f"got {r.get('experiment')!r} at {path!r}")
    if r.get("quick"):
        raise ValueError(f"weights_from: {path!r} is a --quick fig12 run; name a full run, or 'train'")
    return r["per_seed"], 0, f"{path} (fig12 run, seeds {r['seeds']})"


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    per_seed, steps_run, source = load_per_seed(cfg, seeds, backend, out_dir, resume, progress)
    entries = [{"seed": s["seed"], "final": s["final"][VARIANT], "curves": s["curves"][VARIANT],
                "weights": {k: np.asarray(v).tolist() for k, v in s["weights"][VARIANT].items()}} for s in per_seed]
    return {"final": mean_over_seeds([e["final"] for e in entries]),
            "curves": mean_over_seeds([e["curves"] for e in entries]),
            "per_seed": entries, "steps_run": steps_run, "weights_source": source,
            "resolved": resolved_settings(cfg.train), "runtime_s": time.perf_counter() - start,
            "notes": "the 2-head softmax layer of fig12 (weights_source). per_seed[i].weights: scaled_W_KQ "
                     "(per head h: W_KQ_h * W_PV_h[-1, -1]) and scaled_W_KQ_sum; final as fig12's softmax2 entry: "
                     "offdiag_abs_headH, offdiag_abs_sum (mean |off-diagonal| of the x block), "
                     "offdiag_cancellation (sum / heads' mean), diag_mean_sum (GD: -eta/N)."}
