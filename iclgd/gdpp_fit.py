"""GD++ fitted with Adam (SPEC 4.2): the trainable entries of refimpl.baselines (the diagonals of W_V
and W_P, or of W_P alone) trained on online batches, the model's gradients from a backend, with a
progress bar and an optional loss curve on the evaluation set.

Shape legend: B tasks, T = N + 1 tokens, D = d + 1 token width, L layers, P parameter sets.
"""
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from refimpl import baselines, metrics
from refimpl.baselines import (gdpp_entries_effective, gdpp_entries_init, gdpp_entries_params,
                               gdpp_entry_grads, gdpp_model_config)
from refimpl.config import AdamConfig
from refimpl.fieldcheck import check_fields
from refimpl.loss import loss_and_grads
from refimpl.optim import adam_init, adam_update
from refimpl.tasks import TaskSource
from refimpl.validate import NonFiniteError, check_positive_int
from iclgd.evaluation import evaluation_ops
from iclgd.train import Diverged, TrainConfig, paper_adam, paper_token_clip


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
        check_fields(self, "gdpp", {"steps_tied": ">= 1", "steps_deep": ">= 1", "batch": ">= 1", "lr": "> 0",
                                    "b2": "[0, 1)", "eval_every": ">= 1"})
        if self.entries not in baselines.GDPP_ENTRIES:
            raise ValueError(f"gdpp.entries: expected one of {sorted(baselines.GDPP_ENTRIES)}, got {self.entries!r}")


def train_gdpp(source, rng, input_dim, num_context, num_layers, tied, eta0, steps, adam_cfg: AdamConfig,
               token_clip=0.0, progress=False, desc="GD++", grads_fn=None, entries="wv_wp", callback=None,
               callback_every=1000, draw=None):
    """Train GD++'s entries with Adam from eta = eta0, gamma = eta0 / N^2 (SPEC 4.2).

    `entries` picks what Adam trains (GDPP_ENTRIES): "wv_wp", the diagonals of W_V and W_P as in the
    paper's public code, where the effective eta/N and gamma are products of two entries; or "wp",
    the diagonal of W_P alone, where they are the entries themselves. Both describe the same GD++
    model; the product reaches large effective values in fewer Adam steps, whose size is ~lr per
    entry. source.next_batch(rng, step) gives training tasks; `progress` shows a tqdm bar.
    grads_fn(params, tokens, targets, cfg) -> (loss, per-layer losses, grads) is the oracle's
    refimpl.loss.loss_and_grads unless a backend's is given. callback(step, etas, gammas), if given,
    sees the effective scalars before step 0, every `callback_every` steps and after the last.
    draw: a backend's drawer of the same batches (source.next_batch's `draw`), or None.
    Returns (etas (P,), gammas (P,)).
    """
    grads_fn = loss_and_grads if grads_fn is None else grads_fn
    P = 1 if tied else num_layers
    cfg = gdpp_model_config(input_dim, num_layers, tied, token_clip)
    scalars = gdpp_entries_init(eta0, num_context, P, entries)
    state = adam_init(scalars)
    for step in tqdm(range(steps), desc=desc, disable=not progress, mininterval=5.0, dynamic_ncols=True):
        if callback is not None and step % callback_every == 0:
            callback(step, *gdpp_entries_effective(scalars, num_context))
        tokens, targets = source.next_batch(rng, step, draw=draw)
        try:
            _, _, grads = grads_fn(gdpp_entries_params(input_dim, scalars), tokens, targets, cfg)
            scalars, state, _ = adam_update(scalars, gdpp_entry_grads(grads, input_dim, scalars), state, adam_cfg)
            finite = all(np.all(np.isfinite(v)) for v in scalars.values())
        except NonFiniteError:  # the oracle met NaN or inf inside the step
            finite = False
        if not finite:
            raise Diverged(step + 1, "GD++ entries", f"the {desc} fit's entries are not finite (lower gdpp.lr = "
                           f"{adam_cfg.lr})", {}, None, 0, desc)
    if callback is not None:
        callback(steps, *gdpp_entries_effective(scalars, num_context))
    return gdpp_entries_effective(scalars, num_context)


def model_clip(train_cfg: TrainConfig, num_layers):
    """The gradient clip the model uses (SPEC 3), which GD++ uses too."""
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
            curve["loss_gdpp"].append(metrics.losses(params, *eval_set, cfg, evaluation_ops(backend))[0])
    etas, gammas = train_gdpp(source, np.random.default_rng((seed, 1)), task.input_dim, task.num_context,
                              num_layers, tied, eta0, steps, adam, token_clip=paper_token_clip(num_layers),
                              progress=progress, desc=f"GD++ L={num_layers} seed {seed}",
                              grads_fn=None if backend is None else host_loss_and_grads(backend),
                              entries=gdpp.entries, callback=callback,
                              callback_every=check_positive_int("gdpp.eval_every", gdpp.eval_every),
                              draw=getattr(backend, "linear_regression_tasks", None))  # same bits
    return etas, gammas, curve
