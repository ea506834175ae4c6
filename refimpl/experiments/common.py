"""Pieces shared by the linear-regression experiments: the task section of their configs, the
evaluation of a trained model against GD / GD++, and the per-seed loop.

Shape legend: B tasks, T = N + 1 tokens, D = d + 1 token width, L layers.
"""
import os
from dataclasses import dataclass

import numpy as np

from .. import baselines, metrics
from ..config import AdamConfig, ModelConfig
from ..validate import check_positive_int
from ..tasks import TaskSource, eval_tasks
from ..train import TrainConfig, paper_token_clip, train


@dataclass(frozen=True)
class TaskConfig:
    input_dim: int = 10  # d (paper: 10)
    num_context: int = 10  # N (paper: 10)
    input_range: float = 1.0  # r: x ~ U(-r/2, r/2), public code (paper text: U(-1, 1))
    weight_scale: float = 1.0  # s: w ~ N(0, s^2 I)
    distractors: int = 0  # context labels replaced by N(0, 1) draws in training and evaluation
    eval_tasks: int = 10000  # size of the fixed evaluation set (paper: 10 000)
    eval_seed: int = 2023  # seed of the evaluation set's Generator (independent of training seeds)


@dataclass(frozen=True)
class GDPPConfig:
    steps_tied: int = 1000  # Adam steps for the weight-tied pair (SPEC 3: 1 000)
    steps_deep: int = 30000  # Adam steps for per-layer pairs (SPEC 3: 30 000)
    batch: int = 512  # tasks per step (SPEC 3: 512)
    lr: float = 1e-3  # (SPEC 3: 1e-3)
    b2: float = 0.999  # (SPEC 3: 0.999)
    eval_every: int = 100  # the fit's loss on the evaluation set is recorded every this many steps (SPEC 3: evaluate every 100)
    entries: str = "wv_wp"  # what Adam trains (baselines.GDPP_ENTRIES): diagonals of W_V and W_P (paper's code) or "wp"

    def __post_init__(self):
        if self.entries not in baselines.GDPP_ENTRIES:
            raise ValueError(f"gdpp.entries: expected one of {sorted(baselines.GDPP_ENTRIES)}, got {self.entries!r}")


def eval_set_and_gd_eta(task: TaskConfig, **kw):
    """The fixed evaluation set, tokens (B, T, D) and targets (B,), and one-step GD's learning rate
    from the grid on it (SPEC 4.1)."""
    tokens, targets = eval_tasks(task, **kw)
    eta, _ = baselines.grid_search_eta(tokens, targets, steps=1)
    return tokens, targets, eta


def one_step_gd_reference(task: TaskConfig, tokens, targets, eta):
    """The Proposition-1 layer for one GD step at `eta`: (params, config, metrics.Reference)."""
    gd_cfg = baselines.gd_model_config(task.input_dim, 1)
    gd = baselines.gd_params(task.input_dim, eta, task.num_context)
    return gd, gd_cfg, metrics.Reference(gd, gd_cfg, tokens, targets)


def lsa_config(task: TaskConfig, num_layers=1, tied=False, **kw):
    """The paper's LSA for linear regression: D = K = d + 1, one head, token clip by depth."""
    D = task.input_dim + 1
    return ModelConfig(token_dim=D, key_size=D, num_layers=num_layers, weight_tied=tied,
                       token_clip=paper_token_clip(num_layers), **kw)


def model_clip(train_cfg: TrainConfig, num_layers):
    """The gradient clip the model uses (SPEC 3), which GD++ uses too."""
    from ..train import paper_adam
    return paper_adam(train_cfg, num_layers).grad_clip


def host_loss_and_grads(backend):
    """loss_and_grads(params, tokens, targets, cfg) of `backend` on host arrays, gradients back on
    the host (for the GD++ fits, whose parameters live on the host)."""
    def fn(params, tokens, targets, cfg):
        p = {k: backend.asarray(v) for k, v in params.items()}
        loss, per_layer, grads = backend.loss_and_grads(p, backend.asarray(tokens), backend.asarray(targets), cfg)
        return loss, per_layer, {k: np.asarray(backend.to_numpy(v)) for k, v in grads.items()}
    return fn


def fit_gdpp(task, gdpp: GDPPConfig, train_cfg, seed, num_layers, tied, eta0, progress=False, backend=None,
             eval_set=None):
    """GD++ entries (gdpp.entries) trained with Adam on online batches (Generator seeded by (seed, 1));
    the model's gradients from `backend` (the oracle when None). Returns (etas (P,), gammas (P,),
    fit curve): with eval_set = (tokens, targets) the curve is {"step", "loss_gdpp"}, the loss on
    those tasks every gdpp.eval_every steps of the fit; None without."""
    steps = gdpp.steps_tied if tied else gdpp.steps_deep
    adam = AdamConfig(lr=gdpp.lr, b2=gdpp.b2, grad_clip=model_clip(train_cfg, num_layers))
    source = TaskSource(task, gdpp.batch)
    curve, callback = None, None
    if eval_set is not None:
        curve = {"step": [], "loss_gdpp": []}
        cfg = baselines.gdpp_model_config(task.input_dim, num_layers, tied, paper_token_clip(num_layers))

        def callback(step, etas, gammas):
            params = baselines.gdpp_params(task.input_dim, etas, gammas, task.num_context)
            curve["step"].append(step)
            curve["loss_gdpp"].append(metrics.losses(params, *eval_set, cfg)[0])
    etas, gammas = baselines.train_gdpp(source, np.random.default_rng((seed, 1)), task.input_dim,
                                        task.num_context, num_layers, tied, eta0, steps, adam,
                                        token_clip=paper_token_clip(num_layers), progress=progress,
                                        desc=f"GD++ L={num_layers} seed {seed}",
                                        grads_fn=None if backend is None else host_loss_and_grads(backend),
                                        entries=gdpp.entries, callback=callback,
                                        callback_every=check_positive_int("gdpp.eval_every", gdpp.eval_every))
    return etas, gammas, curve


def make_evaluator(cfg, tokens, targets, refs):
    """evaluate(params) -> loss_tf, per-layer losses, and alignment with each reference model
    (the first without a suffix, the others with _NAME)."""
    def evaluate(params):
        loss, per_layer, pred = metrics.losses(params, tokens, targets, cfg)
        sens = metrics.query_sensitivity(params, tokens, cfg)  # (B, d)
        out = {"loss_tf": loss}
        for l, v in enumerate(per_layer[:-1]):
            out[f"loss_tf_layer{l + 1}"] = float(v)
        for i, (name, ref) in enumerate(refs.items()):
            suffix = "" if i == 0 else f"_{name}"
            for k, v in metrics.alignment(pred, sens, ref.pred, ref.sens).items():
                out[k + suffix] = v
        return out
    return evaluate


def train_model(cfg, exp_cfg, seed, backend, out_dir, tag, evaluate, resume, progress, train_cfg=None):
    """Train one model for one seed (exp_cfg.train unless train_cfg is given); checkpoints under
    out_dir/checkpoints/TAG_seedS.npz."""
    ckpt = None
    if out_dir is not None:
        os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
        ckpt = os.path.join(out_dir, "checkpoints", f"{tag}_seed{seed}.npz")
    train_cfg = exp_cfg.train if train_cfg is None else train_cfg
    source = TaskSource(exp_cfg.task, min(train_cfg.batch, train_cfg.fixed_tasks or train_cfg.batch),
                        fixed_tasks=train_cfg.fixed_tasks, fixed_seed=seed + 10_000)
    return train(cfg, train_cfg, source, seed, backend, evaluate=evaluate, checkpoint=ckpt,
                 resume=resume, progress=progress, desc=f"{tag} seed {seed}")


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
