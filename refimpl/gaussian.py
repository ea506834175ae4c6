"""Gaussian and ill-conditioned linear-regression tasks (SPEC 1.5), in both token layouts, and the
task source that feeds them to training.

    x ~ N(0, Sigma), w ~ N(0, I_d), y = w . x (+ optional N(0, noise^2) label noise)
    Sigma: isotropic (I), a given diagonal, or ill-conditioned: x = z t with z ~ N(0, I) and
    t = U diag(e) U^T (U a random rotation, e = 10 on half the dimensions and 1 on the rest),
    scaled so that tr(t^T t) = d; then Sigma = t^T t has condition number 100 and trace d.

A prompt is n (x, y) pairs. Layouts of the same prompt:
    constructed (SPEC 1.1): tokens [x_i, y_i] for the first n - 1 pairs, then the query [x_n, 0];
        (B, n, d + 1), target y_n.
    interleaved (SPEC 2.7): x_1, [y_1, 0..0], x_2, [y_2, 0..0], ..., x_n, [y_n, 0..0]; (B, 2n, d);
        the model predicts y_i at the position of x_i.

Shape legend: B prompts, n pairs per prompt, d input dims, D = d + 1 token width.
"""
import dataclasses
from dataclasses import dataclass

import numpy as np

from .fieldcheck import check_fields, check_items
from .validate import check_array, check_positive_int

COVARIANCES = ("isotropic", "diagonal", "ill_conditioned")


@dataclass(frozen=True)
class GaussianTaskConfig:
    input_dim: int = 20  # d (Fu et al.: 20)
    num_pairs: int = 41  # n: (x, y) pairs per prompt; the constructed layout has n - 1 context tokens
    covariance: str = "isotropic"  # "isotropic", "diagonal" (the list `diagonal`) or "ill_conditioned"
    diagonal: tuple = ()  # the diagonal of Sigma, d positive numbers (covariance = "diagonal" only)
    high: float = 10.0  # ill-conditioned: e on half the dimensions (1 on the rest); kappa = high^2
    noise: float = 0.0  # standard deviation of the label noise (Fu et al.: 0, noiseless)
    eval_tasks: int = 10000  # size of the fixed evaluation set
    eval_seed: int = 2024  # seed of the evaluation set's Generator (and of its fixed rotation)

    def __post_init__(self):
        check_fields(self, "task", GAUSSIAN_RULES)
        if self.covariance not in COVARIANCES:
            raise ValueError(f"task.covariance: expected one of {COVARIANCES}, got {self.covariance!r}")
        if self.covariance == "diagonal":
            check_items("task.diagonal", self.diagonal, float, "> 0", length=self.input_dim)
        elif self.diagonal:
            raise ValueError(f"task.diagonal: expected an empty list unless covariance = 'diagonal', "
                             f"got {list(self.diagonal)!r}")


GAUSSIAN_RULES = {"input_dim": ">= 1", "num_pairs": ">= 2", "high": ">= 1", "noise": ">= 0",
                  "eval_tasks": ">= 1", "eval_seed": ">= 0"}


def random_rotation(rng, d):
    """A Haar-random orthogonal matrix (d, d): QR of a Gaussian matrix with R's diagonal made positive."""
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))  # (d, d) each
    return Q * np.sign(np.diag(R))[None, :]


def ill_conditioned_transform(rng, d, high=10.0):
    """t = U diag(e) U^T (d, d), e = high on the first d // 2 dimensions and 1 on the rest, scaled so
    that tr(t^T t) = d. x = z t with z ~ N(0, I) has Sigma = t^T t: kappa = high^2, trace d."""
    d = check_positive_int("d", d)
    U = random_rotation(rng, d)  # (d, d)
    e = np.where(np.arange(d) < d // 2, float(high), 1.0)  # (d,)
    t = (U * e[None, :]) @ U.T  # (d, d)
    return t * np.sqrt(d / np.trace(t.T @ t))


def input_transform(rng, task: GaussianTaskConfig):
    """The (d, d) matrix t with x = z t, z ~ N(0, I): the identity, diag(sqrt(Lambda)), or a fresh
    ill-conditioned draw from `rng` (drawn only for that family, so the others use no randomness)."""
    d = task.input_dim
    if task.covariance == "isotropic":
        return np.eye(d)
    if task.covariance == "diagonal":
        return np.diag(np.sqrt(np.asarray(task.diagonal, dtype=float)))
    return ill_conditioned_transform(rng, d, task.high)


def covariance_matrix(t):
    """Sigma = t^T t (d, d) of x = z t."""
    return t.T @ t


def gaussian_regression(rng, batch, task: GaussianTaskConfig, transform):
    """Prompts of n pairs: x = z t (B, n, d), w ~ N(0, I) (B, d), y = x . w (+ noise) (B, n)."""
    B = check_positive_int("batch", batch)
    d, n = task.input_dim, task.num_pairs
    check_array("transform", transform, shape=(d, d))
    z = rng.standard_normal((B, n, d))  # (B, n, d)
    x = z @ transform  # (B, n, d)
    w = rng.standard_normal((B, d))  # (B, d)
    y = np.einsum("bnd,bd->bn", x, w)  # (B, n)
    if task.noise:
        y = y + task.noise * rng.standard_normal((B, n))
    return x, y, w


def constructed_tokens(x, y):
    """SPEC 1.1 layout: tokens (B, n, d + 1) = [x_i, y_i] for i < n and the query [x_n, 0]; targets y_n (B,)."""
    check_array("x", x, ndim=3)
    check_array("y", y, shape=x.shape[:2])
    tokens = np.concatenate([x, y[..., None]], axis=-1)  # (B, n, D)
    tokens[:, -1, -1] = 0.0
    return tokens, y[:, -1].copy()


def interleaved_tokens(x, y):
    """SPEC 2.7 layout: (B, 2n, d) with x_i at position 2i and [y_i, 0, ..., 0] at 2i + 1."""
    check_array("x", x, ndim=3)
    check_array("y", y, shape=x.shape[:2])
    B, n, d = x.shape
    seq = np.zeros((B, n, 2, d), dtype=x.dtype)  # (B, n, 2, d)
    seq[:, :, 0] = x
    seq[:, :, 1, 0] = y
    return seq.reshape(B, 2 * n, d)


def prefix_tokens(x, y, length):
    """Constructed tokens (B, length + 1, d + 1) that predict pair `length` (0-based) from the pairs
    before it: the first `length` pairs as context and x_length as the query; targets (B,)."""
    check_array("x", x, ndim=3)
    if not 0 <= length < x.shape[1]:
        raise ValueError(f"length: expected an integer in [0, {x.shape[1] - 1}], got {length}")
    return constructed_tokens(x[:, :length + 1], y[:, :length + 1])


def eval_prompts(task: GaussianTaskConfig, count=None):
    """The fixed evaluation prompts: (x (B, n, d), y (B, n), w (B, d), t (d, d)) from
    Generator(task.eval_seed): first the transform (one seeded rotation for the ill-conditioned
    family), then the prompts."""
    rng = np.random.default_rng(task.eval_seed)
    t = input_transform(rng, task)  # (d, d)
    x, y, w = gaussian_regression(rng, task.eval_tasks if count is None else count, task, t)
    return x, y, w, t


class GaussianTaskSource:
    """Training batches of Gaussian prompts in the constructed layout (a task source for
    iclgd.train.train; see refimpl.tasks.TaskSource for the interface). Every batch draws its own
    transform first (a new rotation per batch for the ill-conditioned family), then its prompts,
    all from the training Generator, so a resumed run draws the same batches."""

    uses_draw = False  # next_batch ignores a backend's drawer of uniform tasks

    def __init__(self, task: GaussianTaskConfig, batch):
        self.task = task
        self.batch = check_positive_int("batch", batch)

    def next_batch(self, rng, step, draw=None):
        """(tokens (B, n, d + 1), targets (B,)); `step` and `draw` (a drawer of the uniform tasks)
        are not used: every batch is fresh."""
        t = input_transform(rng, self.task)  # (d, d)
        x, y, _ = gaussian_regression(rng, self.batch, self.task, t)
        return constructed_tokens(x, y)


@dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s curriculum: the active input dims and the pairs per prompt grow by a step
    every `interval` training steps, from their start values up to the task's input_dim and
    num_pairs; inactive dims of x are 0 (their paper: 5 -> 20 dims by 1, 11 -> 41 pairs by 2,
    every 2 000 steps)."""
    dims_start: int = 5  # active dims at step 0
    dims_inc: int = 1  # added every interval
    points_start: int = 11  # pairs per prompt at step 0
    points_inc: int = 2  # added every interval
    interval: int = 2000  # training steps between increments

    def __post_init__(self):
        check_fields(self, "curriculum", {"dims_start": ">= 1", "dims_inc": ">= 0", "points_start": ">= 1",
                                          "points_inc": ">= 0", "interval": ">= 1"})

    def at(self, step, input_dim, num_pairs):
        """(active dims, pairs) at training step `step`, capped at (input_dim, num_pairs)."""
        k = step // self.interval
        return (min(input_dim, self.dims_start + k * self.dims_inc),
                min(num_pairs, self.points_start + k * self.points_inc))


class InterleavedTaskSource:
    """Training batches of Gaussian prompts in the interleaved layout of SPEC 2.7, for the GPT-2
    style model: (tokens (B, 2n, d), targets (B, n)), every y_i a target. As GaussianTaskSource,
    each batch draws its transform, then its prompts, from the training Generator (a resumed run
    draws the same batches). With a Curriculum, a batch at step s has the curriculum's d_s active
    dims (a task of input_dim d_s, its x padded with zeros to d) and n_s pairs."""

    uses_draw = False  # next_batch ignores a backend's drawer of uniform tasks

    def __init__(self, task: GaussianTaskConfig, batch, curriculum: Curriculum = None):
        self.task, self.curriculum = task, curriculum
        self.batch = check_positive_int("batch", batch)

    def task_at(self, step):
        """The GaussianTaskConfig of the batch at `step` (the curriculum's dims and pairs)."""
        if self.curriculum is None:
            return self.task
        d, n = self.curriculum.at(step, self.task.input_dim, self.task.num_pairs)
        return dataclasses.replace(self.task, input_dim=d, num_pairs=n, diagonal=self.task.diagonal[:d])

    def next_batch(self, rng, step, draw=None):
        """(tokens (B, 2 n_s, d), targets (B, n_s)); `draw` is not used."""
        task = self.task_at(step)
        t = input_transform(rng, task)  # (d_s, d_s)
        x, y, _ = gaussian_regression(rng, self.batch, task, t)  # (B, n_s, d_s), (B, n_s)
        if task.input_dim < self.task.input_dim:
            pad = np.zeros(x.shape[:2] + (self.task.input_dim - task.input_dim,))  # inactive dims
            x = np.concatenate([x, pad], axis=-1)  # (B, n_s, d)
        return interleaved_tokens(x, y), y
