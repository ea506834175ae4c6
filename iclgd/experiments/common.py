"""Pieces shared by the linear-regression experiments: the task section of their configs, the
evaluation of a trained model against GD / GD++, and the per-seed loop.

Shape legend: B tasks, T = N + 1 tokens, D = d + 1 token width, L layers.
"""
import os

import numpy as np

from refimpl import baselines, metrics
from refimpl.config import ModelConfig, TaskConfig, config_to_dict
from refimpl.tasks import TaskSource, eval_tasks
from iclgd.evaluation import evaluation_ops
from iclgd.train import paper_token_clip, resolved_adam, train


def eval_set_and_gd_eta(task: TaskConfig, **kw):
    """The fixed evaluation set, tokens (B, T, D) and targets (B,), and one-step GD's learning rate
    from the grid on it (SPEC 4.1)."""
    tokens, targets = eval_tasks(task, **kw)
    eta, _ = baselines.grid_search_eta(tokens, targets, steps=1)
    return tokens, targets, eta


def one_step_gd_reference(task: TaskConfig, tokens, targets, eta, backend=None):
    """The Proposition-1 layer for one GD step at `eta`: (params, config, metrics.Reference),
    evaluated on `backend` (the oracle when None)."""
    gd_cfg = baselines.gd_model_config(task.input_dim, 1)
    gd = baselines.gd_params(task.input_dim, eta, task.num_context)
    return gd, gd_cfg, metrics.Reference(gd, gd_cfg, tokens, targets, evaluation_ops(backend))


def lsa_config(task: TaskConfig, num_layers=1, tied=False, **kw):
    """The paper's LSA for linear regression: D = K = d + 1, one head, token clip by depth."""
    D = task.input_dim + 1
    return ModelConfig(token_dim=D, key_size=D, num_layers=num_layers, weight_tied=tied,
                       token_clip=paper_token_clip(num_layers), **kw)


def one_layer_against_gd(task: TaskConfig, backend=None):
    """The evaluation set (B, T, D) / (B,), the grid's eta, the one-step GD reference (params,
    config, metrics.Reference), the one-layer LSA config and its evaluator against GD, evaluating
    on `backend` (the oracle when None)."""
    tokens, targets, eta = eval_set_and_gd_eta(task)
    gd, gd_cfg, ref = one_step_gd_reference(task, tokens, targets, eta, backend)
    cfg_tf = lsa_config(task)
    evaluate = make_evaluator(cfg_tf, tokens, targets, {"gd": ref}, backend)
    return tokens, targets, eta, (gd, gd_cfg, ref), cfg_tf, evaluate


def resolved_settings(train_cfg, num_layers=1):
    """results.json's `resolved` entry: the Adam settings (lr, clip, ...) the training used."""
    return {"adam": resolved_adam(train_cfg, num_layers)}


def make_evaluator(cfg, tokens, targets, refs, backend=None):
    """evaluate(params) -> loss_tf, per-layer losses, and alignment with each reference model
    (the first without a suffix, the others with _NAME); the model runs on `backend` (the oracle
    when None)."""
    ops = evaluation_ops(backend)

    def evaluate(params):
        loss, per_layer, pred, sens = metrics.losses_and_sensitivity(params, tokens, targets, cfg, ops)  # sens (B, d)
        out = {"loss_tf": loss}
        for l, v in enumerate(per_layer[:-1]):
            out[f"loss_tf_layer{l + 1}"] = float(v)
        for i, (name, ref) in enumerate(refs.items()):
            suffix = "" if i == 0 else f"_{name}"
            for k, v in metrics.alignment(pred, sens, ref.pred, ref.sens).items():
                out[k + suffix] = v
        return out
    return evaluate


def train_model(cfg, exp_cfg, seed, backend, out_dir, tag, evaluate, resume, progress, train_cfg=None,
                source=None, initial=None):
    """Train one model for one seed (exp_cfg.train unless train_cfg is given) on batches from
    `source` (default: the uniform tasks of exp_cfg.task); checkpoints under
    out_dir/checkpoints/TAG_seedS.npz."""
    ckpt = None
    if out_dir is not None:
        os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
        ckpt = os.path.join(out_dir, "checkpoints", f"{tag}_seed{seed}.npz")
    train_cfg = exp_cfg.train if train_cfg is None else train_cfg
    source = source or TaskSource(exp_cfg.task, min(train_cfg.batch, train_cfg.fixed_tasks or train_cfg.batch),
                        fixed_tasks=train_cfg.fixed_tasks, fixed_seed=seed + 10_000)
    identity = {"experiment": experiment_name(exp_cfg), "model_tag": tag, "seed": seed, "backend": backend.name,
                "config": config_to_dict(exp_cfg), "model": config_to_dict(cfg),
                "train": config_to_dict(train_cfg)}
    return train(cfg, train_cfg, source, seed, backend, evaluate=evaluate, checkpoint=ckpt,
                 resume=resume, progress=progress, desc=f"{tag} seed {seed}", identity=identity, initial=initial)


def experiment_name(exp_cfg):
    """The experiment an experiment's Config belongs to: its module's name (fig2 ...)."""
    return type(exp_cfg).__module__.rsplit(".", 1)[-1]


def mean_over_seeds(dicts):
    """Element-wise mean of a list of {name: float or list} (None where any seed is None)."""
    out = {}
    for k in dicts[0]:
        vals = [d[k] for d in dicts]
        if all(_same(v, vals[0]) for v in vals):
            out[k] = vals[0]
        elif isinstance(vals[0], dict):
            out[k] = mean_over_seeds(vals)
        elif isinstance(vals[0], (list, tuple, np.ndarray)):
            arr = [[None if v is None else float(v) for v in row] for row in vals]
            out[k] = [None if any(r[i] is None for r in arr) else float(np.mean([r[i] for r in arr]))
                      for i in range(len(arr[0]))]
        elif isinstance(vals[0], (int, float, np.floating)) and not isinstance(vals[0], bool):
            out[k] = None if any(v is None for v in vals) else float(np.mean(vals))
        else:
            out[k] = vals[0]
    return out


def _same(a, b):
    try:
        return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))
    except (ValueError, TypeError):
        return False
