"""Figure 16: one LSA layer trained on a fixed training set of B tasks (the same single batch at
every step) instead of fresh tasks, for several B; its loss on fresh evaluation tasks, its loss on
the training set, and its alignment with one GD step (SPEC 5)."""
import dataclasses
import time
from dataclasses import dataclass, field

from refimpl import metrics
from refimpl.tasks import TaskSource
from iclgd.train import TrainConfig
from refimpl.config import TaskConfig
from refimpl.fieldcheck import check_fields, check_items
from iclgd.evaluation import evaluation_ops
from iclgd.experiments.common import mean_over_seeds, one_layer_against_gd, resolved_settings, train_model


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # steps, Adam; batch/fixed_tasks set per size
    sizes: tuple = (16, 64, 256, 1024, 2048)  # B: tasks in the fixed training set

    def __post_init__(self):
        check_fields(self, "")
        check_items("sizes", self.sizes, int, ">= 1")


QUICK = {"train.steps": "300", "train.eval_every": "100", "task.eval_tasks": "1000",
         "train.checkpoint_every": "100", "sizes": "[16, 256]"}


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    task = cfg.task
    tokens, targets, eta, (gd, gd_cfg, ref), cfg_tf, evaluate = one_layer_against_gd(task, backend)  # (B, T, D), (B,)
    ops = evaluation_ops(backend)
    per_seed, steps_run = [], 0
    for seed in seeds:
        finals, curves = {}, {}
        for B in cfg.sizes:
            train_cfg = dataclasses.replace(cfg.train, batch=int(B), fixed_tasks=int(B))
            name = f"B{B}"
            res = train_model(cfg_tf, cfg, seed, backend, out_dir, name, evaluate, resume, progress, train_cfg)
            steps_run += res.steps_run
            pool_tokens, pool_targets = TaskSource(task, int(B), int(B), fixed_seed=seed + 10_000).pool
            final = evaluate(res.params)
            final.update({"tasks": int(B), "loss_gd": ref.loss,
                          "loss_train_tf": metrics.losses(res.params, pool_tokens, pool_targets, cfg_tf, ops)[0],
                          "loss_train_gd": metrics.losses(gd, pool_tokens, pool_targets, gd_cfg, ops)[0]})
            finals[name], curves[name] = final, res.curves
        per_seed.append({"seed": seed, "final": finals, "curves": curves})
    names = [f"B{B}" for B in cfg.sizes]
    return {"final": {n: mean_over_seeds([s["final"][n] for s in per_seed]) for n in names},
            "curves": {n: mean_over_seeds([s["curves"][n] for s in per_seed]) for n in names},
            "per_seed": per_seed, "steps_run": steps_run, "gd_eta": eta,
            "resolved": resolved_settings(cfg.train),
            "runtime_s": time.perf_counter() - start,
            "notes": "final and curves hold one entry per training-set size BN; loss_tf and the "
                     "alignment use fresh evaluation tasks, loss_train_* the fixed training set."}
