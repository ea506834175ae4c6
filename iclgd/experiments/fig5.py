"""Figure 5: copying on alternating tokens (SPEC 1.4, 5).

The sequence x_1, [0..0, y_1], ..., x_N, [0..0, y_N], x_q (width d = 10) with a sinusoidal encoding
of size 10 concatenated (width 20; `pos_enc_concat`: "back" as the public code, whose read-out
-H[query, -1] is then the last encoding coordinate, or "front", which keeps the read-out on the
data). Two layers, layer 0 softmax and layer 1 linear, K = 20, one head, init 0.02 / L; Adam 1e-3,
clip 10, batch 2048, 10 000 steps, evaluated every 500 steps: the loss, and the copy analysis of
layer 0 (refimpl.alternating.copy_analysis: the batch-mean Jacobian norms of token k's feature sum
with respect to token k, token k + 1 and the others, from the hand-written backward). At the end,
the attention maps of both layers. Baseline: one GD step on the same tasks (grid eta).
"""
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import metrics
from refimpl.alternating import LAYOUTS, AlternatingSource, alternating_tokens, attention_maps, copy_analysis, data_columns
from refimpl.config import ModelConfig, TaskConfig, config_to_dict
from refimpl.fieldcheck import check_fields
from refimpl.tasks import eval_tasks
from iclgd.experiments.common import experiment_name, mean_over_seeds, resolved_settings
from iclgd.experiments.variants import gd_reference
from iclgd.train import TrainConfig, train


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)  # d = N = 10, the evaluation set of 10 000 tasks
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=10000, lr=1e-3, grad_clip=10.0, eval_every=500))  # SPEC 3: 10 000 steps, Adam 1e-3, clip 10
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        token_dim=20, key_size=20, num_layers=2, first_layer_softmax=True, init_scale=0.02))  # SPEC 3
    pos_enc_concat: str = "back"  # where the encoding goes: "back" (public code) or "front"
    pos_enc_size: int = 10  # P: size of the concatenated sinusoidal encoding (10)

    def __post_init__(self):
        check_fields(self, "", {"pos_enc_size": ">= 1"})
        if self.pos_enc_concat not in LAYOUTS:
            raise ValueError(f"pos_enc_concat: expected one of {LAYOUTS}, got {self.pos_enc_concat!r}")
        width = self.task.input_dim + self.pos_enc_size
        if self.model.token_dim != width:
            raise ValueError(f"model.token_dim: expected task.input_dim + pos_enc_size = {width}, "
                             f"got {self.model.token_dim}")
        if self.model.pos_enc != "none":
            raise ValueError(f"model.pos_enc: expected 'none' (the encoding is concatenated to the tokens "
                             f"by pos_enc_concat), got {self.model.pos_enc!r}")


QUICK = {"train.steps": "200", "train.batch": "256", "train.eval_every": "100", "task.eval_tasks": "500",
         "train.checkpoint_every": "100"}


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    import os
    start = time.perf_counter()
    task, m = cfg.task, cfg.model
    lin_tokens, targets = eval_tasks(task)  # (B, N + 1, d + 1), (B,)
    ref_gd, eta = gd_reference(task, lin_tokens, targets, 1)
    tokens = alternating_tokens(lin_tokens, cfg.pos_enc_size, cfg.pos_enc_concat)  # (B, T, W)
    cols = data_columns(task.input_dim, cfg.pos_enc_size, cfg.pos_enc_concat)

    def evaluate(params):
        loss, per_layer, _ = metrics.losses(params, tokens, targets, m)
        return {"loss_tf": loss, "loss_tf_layer1": float(per_layer[0]), **copy_analysis(params, tokens, m, cols)}

    per_seed, steps_run = [], 0
    for seed in seeds:
        ckpt = None
        if out_dir is not None:
            os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
            ckpt = os.path.join(out_dir, "checkpoints", f"copy_seed{seed}.npz")
        identity = {"experiment": experiment_name(cfg), "model_tag": "copy", "seed": seed, "backend": backend.name,
                    "config": config_to_dict(cfg)}
        source = AlternatingSource(task, cfg.train.batch, cfg.pos_enc_size, cfg.pos_enc_concat)
        res = train(m, cfg.train, source, seed, backend, evaluate=evaluate, checkpoint=ckpt, resume=resume,
                    progress=progress, desc=f"copy seed {seed}", identity=identity)
        steps_run += res.steps_run
        final = evaluate(res.params)
        final.update({"loss_gd": ref_gd.loss, "loss_zero": float(0.5 * np.mean(targets ** 2))})
        c = res.curves
        rise = [s for s, v in zip(c["step"], c["copy_next"]) if v >= 0.5 * final["copy_next"]]
        final["step_next_half"] = rise[0] if rise else None  # first evaluation at half the final next-token norm
        maps = attention_maps(res.params, tokens[:1000], m)
        per_seed.append({"seed": seed, "final": final, "curves": res.curves,
                         "attention": {f"layer{l}": a for l, a in enumerate(maps)}})
    final = mean_over_seeds([s["final"] for s in per_seed])
    final.update({"gd_eta": eta})
    return {"final": final, "curves": mean_over_seeds([s["curves"] for s in per_seed]),
            "per_seed": per_seed, "steps_run": steps_run, "resolved": resolved_settings(cfg.train, m.num_layers),
            "layout": cfg.pos_enc_concat, "runtime_s": time.perf_counter() - start,
            "notes": f"pos_enc_concat = {cfg.pos_enc_concat!r}: the encoding is concatenated "
                     f"{'after' if cfg.pos_enc_concat == 'back' else 'before'} the data, so the read-out "
                     f"-H[query, -1] is {'the last encoding coordinate (as the public code)' if cfg.pos_enc_concat == 'back' else 'the last data coordinate'}. "
                     "copy_own / copy_next / copy_other: norms of the batch-mean Jacobian of layer 0's output "
                     "token k (feature sum) with respect to the data part of token k / k + 1 / the mean over the "
                     "other tokens, averaged over k = 0 .. T - 3 (the public code's `other` also counts token k + 1). "
                     "loss_gd: one GD step on the same tasks (gd_eta from the grid). step_next_half: the first "
                     "evaluation at which copy_next reached half its final value. per_seed[i].attention.layerL: "
                     "the mean attention weights (softmax) or scores (linear) over 1 000 evaluation tasks, (heads, T, N)."}
