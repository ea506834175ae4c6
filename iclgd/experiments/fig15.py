"""Figure 15 (the paper's appendix A.11): seed-dependent phase transitions, and grokking.

Left and centre: the one-layer LSA of fig2 with one head and with two heads (key size D each),
trained from every seed on fresh tasks (SPEC 3: 5 000 steps, batch 2048, Adam 1e-3, clip 0.001);
its evaluation loss per seed. The paper: with one head the loss plateaus and drops at a step that
depends on the seed; two heads remove these transitions.

Right: grokking. One block, a linear self-attention layer followed by an MLP (D -> 4D -> D, GELU,
residual), trained on a fixed set of 8 192 tasks, cycled in batches; its loss on that set and on the
fresh evaluation tasks. The paper: "when carefully tuning the learning rate and batchsize", the
test loss first rises drastically, then drops suddenly to almost one GD step's ~0.2. It does not
give the settings. Tried here (seed 0, clip off): lr 1e-3 / 3e-3 / 1e-2 with batch 64 or 256 for 20 000
steps, lr 1e-2 with batch 256 for 100 000 steps and lr 3e-2 with batch 256: the training- and test-set
losses stay within ~0.03 of each other near 0.19-0.21. lr 1e-2 with batch 1 024 (the default) opens the
gap: the block fits its training set (0.15) while the test loss rises from 0.19 to 0.23-0.24 by 30 000
steps. The whole set as one batch (8 192, lr 1e-2) opens it faster (training 0.158, test 0.242 by step
7 000). None of these showed the later drop of the test loss. Why the rise stays small here: with
the attention frozen at its initial weights (`grok.frozen=["layer0.attn"]`) the MLP alone, which sees
only the query token, barely fits the training labels (0.404 to 0.395 in 5 000 steps, test 0.421 to
0.430), so this block can overfit only through its attention, by a few hundredths.

Per seed and model, `steps_to_gd` is the first evaluated step at which the evaluation loss is
within `near_gd` (relative) of one GD step's; its spread over seeds measures how much a transition
depends on the seed.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import metrics
from refimpl.config import TaskConfig
from refimpl.fieldcheck import check_fields, check_items
from refimpl.tasks import TaskSource
from iclgd.evaluation import evaluation_ops
from iclgd.experiments.common import (lsa_config, make_evaluator, mean_over_seeds, one_layer_against_gd,
                                      resolved_settings, train_model)
from iclgd.train import TrainConfig

GROK_TASKS = 8192  # the paper's fixed training set


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the heads comparison: fig2's training (SPEC 3)
    heads: tuple = (1, 2)  # attention heads of the one-layer LSA, one model per entry (paper: 1 and 2)
    grok: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=20000, batch=1024, lr=0.01, grad_clip=0.0, eval_every=200, fixed_tasks=GROK_TASKS))
    grok_heads: int = 1  # heads of the grokking block's attention
    grok_seeds: int = 1  # the first this many seeds also train the grokking block (the paper shows one run)
    near_gd: float = 0.02  # steps_to_gd: first evaluation within this relative distance of one GD step's loss

    def __post_init__(self):
        check_fields(self, "", {"grok_heads": ">= 1", "grok_seeds": ">= 0", "near_gd": "> 0"})
        check_items("heads", self.heads, int, ">= 1")
        if self.grok.fixed_tasks < 1:
            raise ValueError(f"grok.fixed_tasks: expected a fixed training set (>= 1 tasks), got {self.grok.fixed_tasks}")


QUICK = {"train.steps": "300", "train.batch": "256", "train.eval_every": "50", "train.checkpoint_every": "100",
         "task.eval_tasks": "1000", "grok.steps": "300", "grok.batch": "64", "grok.fixed_tasks": "256",
         "grok.eval_every": "50", "grok.checkpoint_every": "100"}


def steps_to_gd(curve, loss_gd, near):
    """The first step of `curve` ({step, loss_tf}) whose loss is <= (1 + near) loss_gd; None if none."""
    for step, loss in zip(curve["step"], curve["loss_tf"]):
        if loss is not None and loss <= (1.0 + near) * loss_gd:
            return int(step)
    return None


def grokking_stats(curve):
    """From a grokking curve ({step, loss_test, ...}): dip_test, where the test loss first stops
    falling, and peak_test, its highest value after that, with their steps."""
    test = np.array([np.inf if v is None else v for v in curve["loss_test"]])
    steps = curve["step"]
    i_dip = 0
    while i_dip + 1 < len(test) and test[i_dip + 1] <= test[i_dip]:
        i_dip += 1
    i_peak = i_dip + int(np.argmax(test[i_dip:]))
    return {"dip_test": float(test[i_dip]), "dip_step": int(steps[i_dip]),
            "peak_test": float(test[i_peak]), "peak_step": int(steps[i_peak])}


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    task = cfg.task
    tokens, targets, eta, (gd, gd_cfg, ref), _, _ = one_layer_against_gd(task, backend)  # (B, T, D), (B,)
    ops = evaluation_ops(backend)
    per_seed, steps_run = [], 0
    for i, seed in enumerate(seeds):
        finals, curves, reached = {}, {}, {}
        for h in cfg.heads:
            name = f"heads{h}"
            m = lsa_config(task, num_heads=int(h))
            res = train_model(m, cfg, seed, backend, out_dir, name,
                              make_evaluator(m, tokens, targets, {"gd": ref}, backend), resume, progress)
            steps_run += res.steps_run
            final = {k: v[-1] for k, v in res.curves.items() if k != "step"}
            final.update(loss_gd=ref.loss, heads=int(h))
            finals[name], curves[name] = final, res.curves
            reached[name] = steps_to_gd(res.curves, ref.loss, cfg.near_gd)
        if i < cfg.grok_seeds:
            m = lsa_config(task, num_heads=cfg.grok_heads, mlp=True)
            source = TaskSource(task, min(cfg.grok.batch, cfg.grok.fixed_tasks), fixed_tasks=cfg.grok.fixed_tasks,
                                fixed_seed=seed + 10_000)
            pool_tokens, pool_targets = source.pool

            def evaluate(params, m=m, pool_tokens=pool_tokens, pool_targets=pool_targets):
                return {"loss_test": metrics.losses(params, tokens, targets, m, ops)[0],
                        "loss_train": metrics.losses(params, pool_tokens, pool_targets, m, ops)[0]}

            res = train_model(m, cfg, seed, backend, out_dir, "grok", evaluate, resume, progress,
                              train_cfg=cfg.grok, source=source)
            steps_run += res.steps_run
            final = {"loss_test": res.curves["loss_test"][-1], "loss_train": res.curves["loss_train"][-1],
                     "loss_gd": ref.loss, "loss_train_gd": metrics.losses(gd, pool_tokens, pool_targets, gd_cfg, ops)[0],
                     "tasks": int(cfg.grok.fixed_tasks), **grokking_stats(res.curves)}
            finals["grok"], curves["grok"] = final, res.curves
        per_seed.append({"seed": seed, "final": finals, "curves": curves, "steps_to_gd": reached})
    names = list(per_seed[0]["final"])  # the heads variants, and grok when the first seed trained it
    final = {n: mean_over_seeds([s["final"][n] for s in per_seed if n in s["final"]]) for n in names}
    for h in cfg.heads:  # the spread over seeds of the step each model gets near GD
        reached = [s["steps_to_gd"][f"heads{h}"] for s in per_seed if s["steps_to_gd"][f"heads{h}"] is not None]
        final[f"heads{h}"]["seeds_reaching_gd"] = len(reached)
        if reached:  # absent when no seed got near GD
            final[f"heads{h}"].update(steps_to_gd_min=min(reached), steps_to_gd_max=max(reached))
    return {"final": final,
            "curves": {n: mean_over_seeds([s["curves"][n] for s in per_seed if n in s["curves"]]) for n in names},
            "per_seed": per_seed, "steps_run": steps_run, "gd_eta": eta,
            "resolved": {"heads": resolved_settings(cfg.train), "grok": resolved_settings(cfg.grok)},
            "runtime_s": time.perf_counter() - start,
            "notes": "final / curves hold headsH (the one-layer LSA with H heads, fresh tasks: loss_tf, model_cos "
                     "and the rest against one GD step at gd_eta; steps_to_gd: the first evaluated step within "
                     "near_gd of GD's loss, in per_seed[i].steps_to_gd[model] (null: never); its min / max over "
                     "the seeds that got there and seeds_reaching_gd in final) and grok (one LSA + MLP block on a fixed set of grok.fixed_tasks tasks: loss_test "
                     "on the evaluation tasks, loss_train on the training set, loss_train_gd one GD step's on it; "
                     "dip_test: the test loss where it first stops falling, peak_test: its highest value after "
                     "that, with their steps; trained for the first grok_seeds seeds). The curves are means over "
                     "the seeds that trained the model; per_seed holds each seed's."}
