"""The out-of-distribution evaluation of SPEC 1.2 / 5, shared by fig6 (one layer) and fig7 (figure
3's multi-layer models): each model's loss on the fixed evaluation set rescaled for every alpha (one
draw, so the curves are smooth), on other input laws, and with distractor labels.

  input    x -> alpha x (alpha in input_grid)
  weight   w -> alpha w (alpha in weight_grid; a model linear in the labels, GD without token
           clipping, has exactly alpha^2 times its alpha = 1 loss)
  laws     exponential / normal / Laplace inputs normalised by ||X||_F, times alpha (law_grid)
  distractors  k = 0 .. N context labels replaced by N(0, 1) draws

Shape legend: B tasks, T = N + 1 tokens, D = d + 1 token width, G grid points.
"""
import numpy as np

from refimpl import metrics
from refimpl.fieldcheck import check_items
from refimpl.tasks import INPUT_LAWS, eval_tasks, other_law_tasks

MAX_GRID_POINTS = 10_000
GRID_KEYS = {"input": "input_grid", "weight": "weight_grid", "laws": "law_grid"}  # family -> config key


def check_grids(cfg):
    """One-line ValueError for a config's input_grid / weight_grid / law_grid that is not
    [start, stop, step] with 0 < start <= stop, step > 0 and at most MAX_GRID_POINTS steps."""
    for key in GRID_KEYS.values():
        start, stop, step = check_items(key, getattr(cfg, key), float, "> 0", length=3)
        if not stop >= start or (stop - start) / step > MAX_GRID_POINTS:
            raise ValueError(f"{key}: expected [start, stop, step] with start <= stop and at most "
                             f"{MAX_GRID_POINTS} steps, got {list(getattr(cfg, key))!r}")


def grid(spec, name):
    """start, start + step, ... up to stop (inclusive, to rounding): (G,)."""
    if len(spec) != 3 or not spec[2] > 0 or spec[1] < spec[0]:
        raise ValueError(f"{name}: expected (start, stop, step) with step > 0, stop >= start, got {spec}")
    start, stop, step = map(float, spec)
    return start + step * np.arange(int(np.floor((stop - start) / step + 1e-9)) + 1)  # (G,)


def grids(cfg):
    """{family: alphas (G,)} from the config's grid keys."""
    return {fam: grid(getattr(cfg, key), key) for fam, key in GRID_KEYS.items()}


def law_tasks(task):
    """The other-laws evaluation set (SPEC 1.2), drawn from eval_seed + 1: tokens (B, T, D),
    targets (B,), the law of each task (B,) as an index into INPUT_LAWS."""
    return other_law_tasks(np.random.default_rng(task.eval_seed + 1), task.eval_tasks, task.num_context,
                           task.input_dim, task.weight_scale)


def ood_axes(alphas, task, law):
    """What the curves of ood_curves run over: {alpha: {family: [alpha, ...]}, k: the distractor
    counts 0 .. N, law_tasks: {law: how many tasks of the laws family have that law}};
    law (B,): law_tasks(task)[2]."""
    return {"alpha": {fam: [float(v) for v in a] for fam, a in alphas.items()},
            "k": list(range(task.num_context + 1)),
            "law_tasks": {name: int(np.sum(law == i)) for i, name in enumerate(INPUT_LAWS)}}


def ood_curves(models, task, tokens, targets, alphas, law_set, ops=None):
    """Every model's loss on each family: {input, weight, laws, by_law, distractors}, where
    family[name] lists the loss at each alphas[family] (None = diverged), by_law[law][name] is the
    laws family over the tasks of one law alone, and distractors[name][k] is the loss with k
    distractor labels, k = 0 .. N (ood_axes names the axes).

    models: {name: (params, ModelConfig)}; tokens (B, T, D), targets (B,): the evaluation set;
    alphas: grids(cfg); law_set: law_tasks(task); ops: the backend's evaluation ops (None: oracle).
    """
    law_tokens, law_targets, law = law_set
    out = {"input": metrics.ood_curve(models, tokens, targets, alphas["input"], "input", ops),
           "weight": metrics.ood_curve(models, tokens, targets, alphas["weight"], "weight", ops),
           "laws": metrics.ood_curve(models, law_tokens, law_targets, alphas["laws"], "input", ops)}
    # the same tasks split by their input law, so that the laws can be told apart
    out["by_law"] = {name: metrics.ood_curve(models, law_tokens[law == i], law_targets[law == i],
                                             alphas["laws"], "input", ops)
                     for i, name in enumerate(INPUT_LAWS)}
    dis = {name: [] for name in models}
    for k in range(task.num_context + 1):
        t, y = eval_tasks(task, distractors=k)  # (B, T, D), (B,)
        for name, (p, c) in models.items():
            with np.errstate(over="ignore", invalid="ignore"):
                dis[name].append(metrics.finite_or_none(metrics.losses(p, t, y, c, ops)[0]))
    out["distractors"] = dis
    return out


def weight_scale_law_dev(curve, alphas, loss_at_one):
    """max over the weight grid of |loss(alpha) / (alpha^2 loss(1)) - 1| (diverged points left out;
    NaN when all are)."""
    w = np.array([np.nan if v is None else v for v in curve], dtype=float)  # (G,)
    dev = np.abs(w / (np.asarray(alphas) ** 2 * loss_at_one) - 1)  # (G,)
    return float(np.nanmax(dev)) if np.isfinite(dev).any() else float("nan")
