"""Figure 1 (+ figure 10): a trained LSA layer applied repeatedly with dampening (SPEC 4.3).

Trains one LSA layer as in fig2, then applies it `repeats` times as a weight-tied model with
H <- H + lambda * Attn(H) on the label column only (`y_update`), next to the GD construction
applied as many times with the same lambda (GD with step lambda * eta). As in the paper's update
y + lambda P V K^T W_Q x_test (A.6), the repeated query projection reads x only: W_q's label row,
which training never changes from its random init, is set to 0 (`query_reads_label`). Per-application mean and
median losses over the evaluation set, and the number of tasks that diverge; the sweep over
lambda is figure 10.
"""
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import baselines, metrics
from refimpl.model import model_forward
from iclgd.train import TrainConfig
from refimpl.config import TaskConfig
from refimpl.fieldcheck import check_fields, check_items
from iclgd.experiments.common import eval_set_and_gd_eta, lsa_config, mean_over_seeds, resolved_settings, train_model


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the one-layer training of fig2
    repeats: int = 50  # applications of the trained layer (paper: 50)
    dampening: float = 0.75  # lambda of figure 1 (paper: 0.75)
    sweep: tuple = (0.25, 0.5, 0.75, 1.0)  # lambdas of figure 10
    query_reads_label: bool = False  # paper A.6: the repeated update is y + lambda P V K^T W_Q x_test (x only)

    def __post_init__(self):
        check_fields(self, "", {"repeats": ">= 1", "dampening": "> 0"})
        check_items("sweep", self.sweep, float, "> 0")


QUICK = {"train.steps": "300", "train.batch": "256", "train.eval_every": "100",
         "task.eval_tasks": "1000", "train.checkpoint_every": "100", "repeats": "10",
         "sweep": "[0.5, 1.0]"}


DIVERGED_FACTOR = 10.0
FINITE_CLIP = 1e30  # token clip that only keeps diverging tasks finite (|entries| of ~1e30 cube to ~1e90)


def repeated_losses(params, cfg, tokens, targets, backend=None):
    """Per-task losses after each application (L, B); inf/NaN of diverged tasks kept as inf. The
    read-outs come from `backend`'s model_forward (the oracle's when None): 50 applications to
    10 000 tasks are this experiment's main cost, and the oracle keeps every layer's cache."""
    with np.errstate(over="ignore", invalid="ignore"):
        if backend is None:
            readouts, _ = model_forward(params, tokens, cfg)  # (L, B)
        else:
            p = {k: backend.asarray(v) for k, v in params.items()}
            readouts = np.asarray(backend.to_numpy(backend.model_forward(p, backend.asarray(tokens), cfg)[0]))
        per_task = 0.5 * (readouts - targets) ** 2
    return np.where(np.isfinite(per_task), per_task, np.inf)


def summary(per_task, targets, stable):
    """Mean and median over tasks per application; mean_stable: the mean over the tasks on which
    GD is stable (`stable` (B,) bool); diverged: tasks whose last loss exceeds DIVERGED_FACTOR times
    the mean loss of predicting 0 (a prediction far off the label scale)."""
    with np.errstate(invalid="ignore"):
        mean = per_task.mean(axis=1)
        mean_stable = per_task[:, stable].mean(axis=1)
    limit = DIVERGED_FACTOR * float(np.mean(0.5 * targets**2))
    return {"mean": mean, "median": np.median(per_task, axis=1), "mean_stable": mean_stable,
            "diverged": int(np.sum(~(per_task[-1] <= limit)))}


def max_rel_dev(a, b, upto):
    """max_k |a_k / b_k - 1| over the first `upto` applications."""
    return float(np.max(np.abs(a[:upto] / b[:upto] - 1)))


def repeated_layer_params(params, query_reads_label):
    """The trained layer as it is repeated. One-layer training never changes the label row of W_q:
    only the query's read-out enters the loss and the query's label slot is 0, so that row's
    gradient is exactly 0 and it keeps its random initial values. Repeated, the label slots are no
    longer 0 and this row would feed them back through the attention scores. Unless
    `query_reads_label`, it is set to 0: the query projection then reads x only, the update
    y + lambda P V K^T W_Q x of the paper (A.6) and the form of the GD construction."""
    if query_reads_label:
        return params
    out = dict(params)
    out["layer0.attn.W_q"] = params["layer0.attn.W_q"].copy()  # (D, H*K)
    out["layer0.attn.W_q"][-1, :] = 0.0
    return out


def gd_unstable(tokens, step_over_n):
    """(B,) bool: tasks on which GD with step eta' diverges, (eta'/N) lambda_max(X^T X) > 2."""
    X = tokens[:, :-1, :-1]  # (B, N, d)
    lam_max = np.linalg.eigvalsh(np.einsum("bnd,bne->bde", X, X))[:, -1]  # (B,)
    return step_over_n * lam_max > 2.0


def _at_dampening(cfg, params, entry, tf, gd, curves, rep, unstable, tokens, targets, backend):
    """At the reported dampening: fill `curves` with TF, GD and two diagnostics; return `final`.
    rep: the repeated-layer configs (TF, GD); tf, gd: their summaries; unstable: (B,) GD-unstable tasks."""
    d, N = cfg.task.input_dim, cfg.task.num_context
    rep_tf, rep_gd = rep
    curves.update({k: entry[k] for k in ("loss_tf", "loss_gd", "median_tf", "median_gd")})
    curves.update({"loss_tf_stable": tf["mean_stable"], "loss_gd_stable": gd["mean_stable"]})
    # diagnostic: GD at the trained layer's own step size eta_TF = -N mean(diag W_KQ) W_PV[d, d]
    W_KQ, W_PV = metrics.layer_products(params)  # (D, D) each
    eta_tf = -N * float(np.mean(np.diag(W_KQ)[:d]) * W_PV[d, d])
    gd_tf = summary(repeated_losses(baselines.gd_params(d, eta_tf, N), rep_gd, tokens, targets, backend), targets,
                    ~unstable)
    curves.update({"loss_gd_tf_eta": gd_tf["mean"], "median_gd_tf_eta": gd_tf["median"]})
    # diagnostic: the other choice for the untrained label row of W_q
    other = repeated_layer_params(params, not cfg.query_reads_label)
    tf_other = summary(repeated_losses(other, rep_tf, tokens, targets, backend), targets, ~unstable)
    curves.update({"loss_tf_other_row": tf_other["mean"], "median_tf_other_row": tf_other["median"]})
    final = {"tf_eta_over_n": eta_tf / N,
             "mean_rel_dev_to_20": max_rel_dev(tf["mean"], gd["mean"], 20),
             "median_rel_dev_to_49": max_rel_dev(tf["median"], gd["median"], 49),
             "median_rel_dev_to_49_tf_eta": max_rel_dev(tf["median"], gd_tf["median"], 49),
             "mean_rel_dev_to_20_stable": max_rel_dev(tf["mean_stable"], gd["mean_stable"], 20),
             "mean_rel_dev_to_49_stable": max_rel_dev(tf["mean_stable"], gd["mean_stable"], 49),
             "mean_rel_dev_to_20_other_row": max_rel_dev(tf_other["mean"], gd["mean"], 20),
             "median_rel_dev_to_49_other_row": max_rel_dev(tf_other["median"], gd["median"], 49),
             "query_label_row_norm": float(np.linalg.norm(params["layer0.attn.W_q"][-1])),
             "loss_tf_1": tf["mean"][0], "loss_gd_1": gd["mean"][0],
             "loss_tf_10": tf["mean"][min(9, cfg.repeats - 1)],
             "loss_gd_10": gd["mean"][min(9, cfg.repeats - 1)],
             "loss_tf_last": tf["mean"][-1], "loss_gd_last": gd["mean"][-1],
             "median_tf_last": tf["median"][-1], "median_gd_last": gd["median"][-1],
             "diverged_tf": tf["diverged"], "diverged_gd": gd["diverged"],
             "unstable_gd": entry["unstable_gd"]}
    return final


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    task = cfg.task
    d, N = task.input_dim, task.num_context
    tokens, targets, eta = eval_set_and_gd_eta(task)  # (B, T, D), (B,), eta
    cfg_tf = lsa_config(task)
    per_seed, steps_run = [], 0
    for seed in seeds:
        res = train_model(cfg_tf, cfg, seed, backend, out_dir, "lsa1", None, resume, progress)
        steps_run += res.steps_run
        curves, sweep, final = {"step": list(range(1, cfg.repeats + 1))}, [], {}
        rep_params = repeated_layer_params(res.params, cfg.query_reads_label)
        for lam in sorted(set(cfg.sweep) | {cfg.dampening}):
            rep_tf = dataclasses.replace(cfg_tf, num_layers=cfg.repeats, weight_tied=True,
                                         dampening=lam, y_update=True, token_clip=FINITE_CLIP)
            rep_gd = baselines.gd_model_config(d, cfg.repeats, dampening=lam, y_update=True,
                                               token_clip=FINITE_CLIP)
            unstable = gd_unstable(tokens, lam * eta / N)  # (B,)
            tf = summary(repeated_losses(rep_params, rep_tf, tokens, targets, backend), targets, ~unstable)
            gd = summary(repeated_losses(baselines.gd_params(d, eta, N), rep_gd, tokens, targets, backend), targets,
                         ~unstable)
            entry = {"dampening": lam, "loss_tf": tf["mean"], "loss_gd": gd["mean"],
                     "median_tf": tf["median"], "median_gd": gd["median"],
                     "diverged_tf": tf["diverged"], "diverged_gd": gd["diverged"],
                     "unstable_gd": int(unstable.sum())}
            if lam == cfg.dampening:
                final = _at_dampening(cfg, res.params, entry, tf, gd, curves, (rep_tf, rep_gd), unstable,
                                      tokens, targets, backend)
            if lam in cfg.sweep:
                sweep.append(entry)
        per_seed.append({"seed": seed, "final": final, "curves": curves, "sweep": sweep})
    final = mean_over_seeds([s["final"] for s in per_seed])
    final.update({"gd_eta": eta, "eval_tasks": int(targets.shape[0])})
    return {"final": final, "curves": mean_over_seeds([s["curves"] for s in per_seed]),
            "per_seed": per_seed, "steps_run": steps_run, "resolved": resolved_settings(cfg.train),
            "runtime_s": time.perf_counter() - start,
            "notes": "curves: loss after k applications (step k = 1 .. repeats); diverged_*: tasks whose "
                     "loss after the last application exceeds 10 x the mean loss of predicting 0; unstable_gd: "
                     "tasks with lambda (eta/N) lambda_max(X^T X) > 2, on which GD diverges. *_rel_dev_to_K: max over "
                     "the first K applications of |TF / GD - 1|. *_gd_tf_eta: diagnostic, GD at the trained "
                     "layer's own step size tf_eta_over_n instead of the grid's (not the paper's comparison). "
                     "query_reads_label = false (the paper's update y + lambda P V K^T W_Q x_test, A.6): the label "
                     "row of W_q, which one-layer training leaves at its random init (its gradient is exactly 0), is "
                     "set to 0 before repeating; *_other_row: the curves with the other choice; *_stable: means over the "
                     "tasks on which GD is stable (all but unstable_gd); "
                     "query_label_row_norm: the norm of that row."}
