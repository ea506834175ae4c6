"""Figure 14: LayerNorm before linear self-attention (SPEC 2.3), against GD and GD++.

Two models, LayerNorm placed as in the public code: `ln1`, one LSA layer after a LayerNorm
(ln_placement "pre"; for one layer the same as the public weight-tied placement), against one GD
step and one-layer GD++; and `ln2`, two deep LSA layers with a LayerNorm only between them (the
public deep placement: none before layer 0), against two GD steps and the weight-tied 2-layer GD++.
Training as SPEC 3: one layer 5 000 steps, the deep model `deep_steps` = 50 000; batch 2048, Adam
1e-3, clip 0.001. The paper: some loss is lost against GD, and the alignment decreases.
"""
import dataclasses
import time
from dataclasses import dataclass, field

from refimpl.config import ModelConfig, TaskConfig
from refimpl.fieldcheck import check_fields
from refimpl.tasks import eval_tasks
from iclgd.experiments.common import mean_over_seeds, resolved_settings
from iclgd.experiments.variants import (check_model_section, gd_reference, gdpp_reference, regression_model,
                                       train_against, variant_model)
from iclgd.gdpp_fit import GDPPConfig
from iclgd.train import TrainConfig


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the one-layer model: 5 000 steps, batch 2048
    gdpp: GDPPConfig = field(default_factory=GDPPConfig)  # the GD++ references (tied: 1 000 steps)
    deep_steps: int = 50000  # training steps of the 2-layer deep model (SPEC 3: 50 000)
    model: ModelConfig = field(default_factory=regression_model)  # both variants' model; depth and LayerNorm per variant

    def __post_init__(self):
        check_fields(self, "", {"deep_steps": ">= 1"})
        check_model_section(self, ("num_layers", "layernorm", "ln_placement"), regression_model())


QUICK = {"train.steps": "300", "train.batch": "256", "train.eval_every": "100", "task.eval_tasks": "1000",
         "train.checkpoint_every": "100", "gdpp.steps_tied": "50", "gdpp.batch": "256", "deep_steps": "300"}

VARIANTS = {  # name: (layers, ModelConfig options, GD steps, label)
    "ln1": (1, {"layernorm": True, "ln_placement": "pre"}, 1, "LN + 1 LSA layer"),
    "ln2": (2, {"layernorm": True, "ln_placement": "public"}, 2, "2 LSA layers, LN between"),
}


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    task = cfg.task
    tokens, targets = eval_tasks(task)  # (B, T, D), (B,)
    gd = {L: gd_reference(task, tokens, targets, L) for L in sorted({v[2] for v in VARIANTS.values()})}
    per_seed, steps_run, resolved = [], 0, {}
    for seed in seeds:
        finals, curves = {}, {}
        for name, (L, options, gd_steps, label) in VARIANTS.items():
            ref_gd, eta = gd[gd_steps]
            ref_gdpp, etas, gammas = gdpp_reference(cfg, seed, L, True, gd[1][1], backend, tokens, targets, progress)
            train_cfg = cfg.train if L == 1 else dataclasses.replace(cfg.train, steps=cfg.deep_steps)
            m = variant_model(cfg.model, L, **options)
            res, final = train_against(cfg, name, m, {"gd": ref_gd, "gdpp": ref_gdpp}, seed, backend, out_dir,
                                       resume, progress, tokens, targets, train_cfg)
            steps_run += res.steps_run
            final.update({"layers": L, "steps": train_cfg.steps, "gd_eta": eta, "gdpp_eta": etas,
                          "gdpp_gamma": gammas, "gd_label": f"{gd_steps} step{'s' if gd_steps > 1 else ''} GD",
                          "gdpp_label": f"{L}-layer GD++"})
            finals[name], curves[name] = final, res.curves
            resolved[name] = resolved_settings(train_cfg, L)
        per_seed.append({"seed": seed, "final": finals, "curves": curves})
    names = list(VARIANTS)
    return {"final": {n: mean_over_seeds([s["final"][n] for s in per_seed]) for n in names},
            "curves": {n: mean_over_seeds([s["curves"][n] for s in per_seed]) for n in names},
            "per_seed": per_seed, "steps_run": steps_run, "resolved": resolved,
            "variants": {n: v[3] for n, v in VARIANTS.items()}, "runtime_s": time.perf_counter() - start,
            "notes": "final and curves per variant: ln1 (LayerNorm, then one LSA layer) against one GD step and "
                     "one-layer GD++; ln2 (two deep LSA layers, LayerNorm only before the second) against two GD "
                     "steps (gd_eta: the grid optimum for two steps) and the weight-tied 2-layer GD++ (gdpp_eta, "
                     "gdpp_gamma). model_cos, model_diff, preds_diff against GD; *_gdpp against GD++."}
