"""Task families around SPEC 1.1-1.2: evaluation sets, out-of-distribution rescalings, other input
laws, and a fixed training set cycled in batches (figure 16). The base generator is
`refimpl.data.linear_regression_tasks`.

Shape legend: B tasks, N context pairs, d input dims, T = N + 1 tokens, D = d + 1 token width.
Tokens are [x_i, y_i] for the context and [x_q, 0] for the query (the LAST token).
"""
import numpy as np

from .data import linear_regression_tasks
from .validate import check_array, check_positive_int

INPUT_LAWS = ("exponential", "normal", "laplace")


def _check_tasks(tokens, targets):
    check_array("tokens", tokens, ndim=3)
    check_array("targets", targets, shape=(tokens.shape[0],))


def scale_inputs(tokens, targets, alpha):
    """Multiply every x (context and query) by alpha; labels follow (y = w.x is linear in x).

    Applied to tasks drawn at input range 1 this gives x ~ U(-alpha/2, alpha/2) (SPEC 1.2), with the
    same underlying draw for every alpha so that the curves are smooth.
    """
    _check_tasks(tokens, targets)
    return tokens * alpha, targets * alpha  # (B, T, D), (B,)


def scale_weights(tokens, targets, alpha):
    """Teacher weights alpha * w: every label (and the target) is multiplied by alpha."""
    _check_tasks(tokens, targets)
    out = tokens.copy()  # (B, T, D)
    out[..., -1] *= alpha
    return out, targets * alpha


def other_law_tasks(rng, batch, num_context=10, input_dim=10, weight_scale=1.0):
    """SPEC 1.2: per task one input law of {exponential, normal, Laplace} (unit parameters), the
    context matrix X (N, d) and the query divided by the Frobenius norm of X.

    Returns tokens (B, T, D), targets (B,) and the law index per task (B,). Multiply by alpha with
    `scale_inputs`.
    """
    B = check_positive_int("batch", batch)
    N = check_positive_int("num_context", num_context)
    d = check_positive_int("input_dim", input_dim)
    law = rng.integers(0, len(INPUT_LAWS), size=B)  # (B,)
    draws = {
        "exponential": rng.exponential(1.0, size=(B, N + 1, d)),
        "normal": rng.standard_normal((B, N + 1, d)),
        "laplace": rng.laplace(0.0, 1.0, size=(B, N + 1, d)),
    }
    x = np.empty((B, N + 1, d))  # (B, T, d)
    for i, name in enumerate(INPUT_LAWS):
        x[law == i] = draws[name][law == i]
    x /= np.linalg.norm(x[:, :N], axis=(1, 2))[:, None, None]  # Frobenius norm of the context X
    w = rng.standard_normal((B, d)) * weight_scale  # (B, d)
    y = np.einsum("btd,bd->bt", x, w)  # (B, T)
    targets = y[:, -1].copy()  # (B,)
    y[:, -1] = 0.0
    return np.concatenate([x, y[..., None]], axis=-1), targets, law


class TaskSource:
    """Training batches, drawn on the host so that every backend sees identical numbers.

    The task-source interface that iclgd.train.train takes (this class is its uniform-task
    implementation; refimpl.gaussian.GaussianTaskSource is the Gaussian / ill-conditioned one):
        next_batch(rng, step, draw=None) -> (tokens (B, T, D), targets (B,))
    rng: the training Generator (its state is checkpointed, so a source that draws only from it
    resumes bit for bit); step: the 0-based training step; draw: a backend's faster drawer of
    linear_regression_tasks (same numbers), which a source may ignore (it then says so with a
    class attribute `uses_draw = False`, and the backend does not compile that drawer).

    online (fixed_tasks = 0): a fresh batch from the training Generator at every step (SPEC 1.1).
    fixed (fixed_tasks = P > 0): P tasks drawn once from a Generator seeded by `fixed_seed`, cycled
    in consecutive slices of `batch` (with P = batch, the same single batch every step, figure 16).
    """

    def __init__(self, task_cfg, batch, fixed_tasks=0, fixed_seed=0):
        self.task_cfg = task_cfg
        self.batch = check_positive_int("batch", batch)
        self.fixed_tasks = int(fixed_tasks)
        if self.fixed_tasks < 0:
            raise ValueError(f"fixed_tasks: expected >= 0 (0 = online), got {fixed_tasks}")
        if self.fixed_tasks and self.batch > self.fixed_tasks:
            raise ValueError(f"batch: expected <= fixed_tasks = {self.fixed_tasks}, got {batch}")
        self.pool = None
        if self.fixed_tasks:
            self.pool = draw_tasks(np.random.default_rng(fixed_seed), task_cfg, self.fixed_tasks)

    def next_batch(self, rng, step, draw=None):
        """(tokens (B, T, D), targets (B,)) for training step `step` (0-based). draw: a drawer with
        the signature and the exact numbers of linear_regression_tasks (a backend's), or None."""
        if self.pool is None:
            return draw_tasks(rng, self.task_cfg, self.batch, draw=draw)
        tokens, targets = self.pool
        idx = (step * self.batch + np.arange(self.batch)) % self.fixed_tasks  # (B,)
        return tokens[idx], targets[idx]


def draw_tasks(rng, task_cfg, batch, distractors=None, draw=None):
    """Linear-regression tasks with the fields of a TaskConfig (input_dim, num_context, ...), drawn
    by `draw` (default: refimpl.data.linear_regression_tasks; a backend's drawer gives the same bits)."""
    return (linear_regression_tasks if draw is None else draw)(
        rng, batch, num_context=task_cfg.num_context, input_dim=task_cfg.input_dim,
        input_range=task_cfg.input_range, weight_scale=task_cfg.weight_scale,
        distractors=task_cfg.distractors if distractors is None else distractors)


def eval_tasks(task_cfg, distractors=None):
    """The fixed evaluation set: task_cfg.eval_tasks tasks from Generator(task_cfg.eval_seed)."""
    rng = np.random.default_rng(task_cfg.eval_seed)
    return draw_tasks(rng, task_cfg, task_cfg.eval_tasks, distractors)
