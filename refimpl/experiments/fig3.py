"""Figure 3: multi-layer LSA against multi-step GD and GD++ (SPEC 4.1, 4.2).

Variants: a weight-tied L-layer model (`tied_layers`, trained train.steps) and deep models with
L in `deep_layers` (trained `deep_steps`, lr / clip / token clip by the SPEC 3 rules). For each:
eta of L-step GD from the grid, GD++ scalars trained from (eta, eta/N^2) (one pair when tied, one
per layer when deep), the trained model's loss and its alignment with GD and GD++ every
eval_every steps, and the per-layer losses of all three at the end.
"""
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from .. import baselines, metrics
from ..tasks import eval_tasks
from ..train import TrainConfig, paper_adam, paper_token_clip
from .common import (GDPPConfig, TaskConfig, fit_gdpp, lsa_config, make_evaluator, mean_over_seeds,
                     train_model)


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # weight-tied: 5 000 steps (SPEC 3)
    tied_layers: int = 2  # applications of the weight-tied layer (paper: 2); 0 = no tied variant
    deep_layers: tuple = (2, 3, 5)  # depths of the deep models (paper figure 3: up to 5)
    deep_steps: int = 50000  # training steps of the deep models (SPEC 3: 50 000)
    gdpp: GDPPConfig = field(default_factory=GDPPConfig)


QUICK = {"train.steps": "200", "train.batch": "256", "train.eval_every": "100",
         "task.eval_tasks": "1000", "train.checkpoint_every": "100", "deep_layers": "[3]",
         "deep_steps": "200", "gdpp.steps_tied": "50", "gdpp.steps_deep": "50", "gdpp.batch": "256"}


def variants(cfg: Config):
    """[(name, L, tied, steps)]."""
    out = [(f"tied{cfg.tied_layers}", cfg.tied_layers, True, cfg.train.steps)] if cfg.tied_layers else []
    return out + [(f"deep{L}", int(L), False, cfg.deep_steps) for L in cfg.deep_layers]


def run_variant(cfg, name, L, tied, steps, seed, tokens, targets, backend, out_dir, resume, progress):
    task = cfg.task
    d, N = task.input_dim, task.num_context
    eta, _ = baselines.grid_search_eta(tokens, targets, steps=L)
    gd_cfg = baselines.gd_model_config(d, L)
    ref_gd = metrics.Reference(baselines.gd_params(d, eta, N), gd_cfg, tokens, targets)
    etas, gammas = fit_gdpp(task, cfg.gdpp, cfg.train, seed, L, tied, eta)
    gdpp_cfg = baselines.gdpp_model_config(d, L, tied, token_clip=paper_token_clip(L))
    ref_gdpp = metrics.Reference(baselines.gdpp_params(d, etas, gammas, N), gdpp_cfg, tokens, targets)
    cfg_tf = lsa_config(task, num_layers=L, tied=tied)
    evaluate = make_evaluator(cfg_tf, tokens, targets, {"gd": ref_gd, "gdpp": ref_gdpp})
    train_cfg = dataclasses.replace(cfg.train, steps=steps)
    res = train_model(cfg_tf, cfg, seed, backend, out_dir, name, evaluate, resume, progress, train_cfg)
    final = evaluate(res.params)
    _, per_layer_tf, _ = metrics.losses(res.params, tokens, targets, cfg_tf)
    adam = paper_adam(train_cfg, L)
    final.update({
        "loss_gd": ref_gd.loss, "loss_gdpp": ref_gdpp.loss,
        "loss_tf_layers": per_layer_tf, "loss_gd_layers": ref_gd.per_layer,
        "loss_gdpp_layers": ref_gdpp.per_layer,
        "gd_eta": eta, "gdpp_eta": etas, "gdpp_gamma": gammas,
        "layers": L, "weight_tied": tied, "steps": steps, "lr": adam.lr, "grad_clip": adam.grad_clip,
        "token_clip": cfg_tf.token_clip,
    })
    return final, res


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    tokens, targets = eval_tasks(cfg.task)
    per_seed, steps_run = [], 0
    for seed in seeds:
        finals, curves = {}, {}
        for name, L, tied, steps in variants(cfg):
            finals[name], res = run_variant(cfg, name, L, tied, steps, seed, tokens, targets, backend,
                                            out_dir, resume, progress)
            curves[name] = res.curves
            steps_run += res.steps_run
        per_seed.append({"seed": seed, "final": finals, "curves": curves})
    final = {name: mean_over_seeds([s["final"][name] for s in per_seed]) for name, *_ in variants(cfg)}
    curves = {name: mean_over_seeds([s["curves"][name] for s in per_seed]) for name, *_ in variants(cfg)}
    return {"final": final, "curves": curves, "per_seed": per_seed, "steps_run": steps_run,
            "loss_zero": float(0.5 * np.mean(targets**2)), "runtime_s": time.perf_counter() - start,
            "notes": "final and curves hold one entry per variant (tiedL, deepL); *_layers: loss after "
                     "each layer / GD step; GD is plain GD (no token clipping); GD++ and the TF clip "
                     "tokens at +-10 when L > 3; steps: training steps of that variant."}
