"""Training loop: host-drawn batches, the step done by a backend, host-side evaluation, atomic
checkpoints and bit-identical resumption.

    rng = Generator(seed); params = init_params(cfg, rng)       (the oracle's init, on the host)
    for step in 0 .. steps-1:
        tokens, y = source.next_batch(rng, step, draw)           (host: every backend sees these bits)
        params, state, loss = backend.train_step(params, state, tokens, y, cfg, adam)
        every eval_every steps (and at step 0 and the end): evaluate(host params) -> curves
        every checkpoint_every steps: checkpoint (params, Adam state, rng state, curves, step)
draw is the backend's `linear_regression_tasks` if it has one (a faster drawer of the same numbers,
leaving the Generator in the same state), else the oracle's. A checkpoint holds everything the loop
carries, so resuming from it continues the same sequence of batches and updates: the final
parameters equal those of an uninterrupted run bit for bit.
"""
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from refimpl.config import ADAM_RULES, AdamConfig, ModelConfig, config_to_dict
from refimpl.fieldcheck import check_fields
from refimpl.params import init_params
from refimpl.validate import NonFiniteError
from iclgd.checkpoint import load_checkpoint, save_checkpoint
from iclgd.runtime import tune_for_small_matrices


MAX_BATCH = 2**20  # tasks per step: a bound that stops a typo before a MemoryError


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 5000  # 5 000 one layer / weight-tied, 50 000 deep (SPEC 3)
    batch: int = 2048  # tasks per step (SPEC 3)
    lr: Optional[float] = None  # Adam learning rate; None = SPEC 3 rule: 1e-3 if L <= 3 else 5e-4
    b1: float = 0.9  # Adam beta1
    b2: float = 0.98  # Adam beta2
    eps: float = 1e-8  # Adam epsilon
    grad_clip: Optional[float] = None  # global-norm clip; None = SPEC 3 rule: 0.001 if L <= 2 else 10; 0 = off
    eval_every: int = 100  # evaluation period in steps (SPEC 3)
    checkpoint_every: int = 1000  # checkpoint period in steps
    fixed_tasks: int = 0  # 0 = online batches; P > 0 = a fixed training set of P tasks, cycled
    frozen: tuple = ()  # parameter names or name prefixes ("layer0.attn") kept at their initial values

    def __post_init__(self):
        # lr and grad_clip: None (the SPEC 3 rule) or a number (`--set train.lr=0.002` parses it as
        # a float, `--set train.lr=null` as None: refimpl.config reads the Optional[float] type)
        check_fields(self, "train", TRAIN_RULES)
        if not all(isinstance(n, str) and n for n in self.frozen):
            raise ValueError(f"train.frozen: expected a list of parameter names or prefixes, got {list(self.frozen)!r}")


TRAIN_RULES = {**ADAM_RULES, "steps": ">= 1", "batch": f"[1, {MAX_BATCH}]", "eval_every": ">= 1",
               "checkpoint_every": ">= 1", "fixed_tasks": ">= 0"}  # lr, b1, b2, eps, grad_clip: Adam's


def paper_adam(train: TrainConfig, num_layers):
    """AdamConfig of SPEC 3 for an L-layer linear-regression model, unless the config sets it:
    lr = 1e-3 if L <= 3 else 5e-4, grad_clip = 0.001 if L <= 2 else 10 (0 = off)."""
    lr = train.lr if train.lr is not None else (1e-3 if num_layers <= 3 else 5e-4)
    clip = train.grad_clip if train.grad_clip is not None else (0.001 if num_layers <= 2 else 10.0)
    return AdamConfig(lr=lr, b1=train.b1, b2=train.b2, eps=train.eps, grad_clip=clip)


def resolved_adam(train: TrainConfig, num_layers):
    """The Adam settings paper_adam resolves for L layers, as a dict for results.json."""
    return config_to_dict(paper_adam(train, num_layers))


def paper_token_clip(num_layers):
    """SPEC 3: tokens clipped to +-10 after every attention when L > 3."""
    return 10.0 if num_layers > 3 else 0.0


def frozen_names(frozen, names):
    """The parameter names that `frozen` (names or name prefixes ending at a dot) selects; a
    ValueError naming the valid names for an entry that selects none."""
    out = set()
    for entry in frozen:
        hit = {n for n in names if n == entry or n.startswith(entry + ".")}
        if not hit:
            raise ValueError(f"train.frozen: {entry!r} names no parameter of this model; valid names: "
                             f"{', '.join(names)}")
        out |= hit
    return out


def frozen_step(backend, frozen):
    """A train_step that keeps the parameters `frozen` fixed: their gradients are set to exactly zero
    before the global-norm clip and Adam, whose update of a parameter that has only ever seen zero
    gradients is exactly zero (m = v = 0: 0 / (sqrt(0) + eps))."""
    def step(params, state, tokens, y, cfg, adam_cfg):
        loss, _, grads = backend.loss_and_grads(params, tokens, y, cfg)
        grads = {k: (g * 0 if k in frozen else g) for k, g in grads.items()}
        params, state, norm = backend.adam_update(params, grads, state, adam_cfg)
        return params, {**state, "grad_norm": norm}, loss
    return step


@dataclass
class TrainResult:
    params: dict  # host numpy parameters after the last step
    curves: dict = field(default_factory=dict)  # {"step": [...], name: [...]}
    steps_run: int = 0  # steps performed by this call (0 when resumed from a finished run)
    seconds: float = 0.0  # wall time of this call


def _host(backend, tree):
    return {k: np.array(backend.to_numpy(v)) for k, v in tree.items()}


def _device(backend, tree):
    return {k: backend.asarray(v) for k, v in tree.items()}


# a finite loss this many times above the first step's (or above this many, whichever is larger)
# has blown up as surely as an inf: the run stops there too
BLOWUP_FACTOR = 1e8


class Diverged(Exception):
    """Training met a non-finite loss, gradient norm or parameter, or a loss that blew up."""

    def __init__(self, step, tensor, reason, curves, checkpoint, checkpoint_step, model_tag=None, seed=None):
        self.step, self.tensor, self.reason, self.curves = step, tensor, reason, curves
        self.checkpoint, self.checkpoint_step = checkpoint, checkpoint_step
        self.model_tag, self.seed = model_tag, seed
        where = (f"the last good checkpoint is {checkpoint} (step {checkpoint_step})"
                 if checkpoint_step else "no checkpoint was written before it")
        super().__init__(f"diverged at step {step}{f' ({model_tag}, seed {seed})' if model_tag else ''}: "
                         f"{reason}; {where}. Lower train.lr (or set train.grad_clip) and start over with --force")

    def __reduce__(self):  # picklable with its fields (fig3 trains variants in worker processes)
        return Diverged, (self.step, self.tensor, self.reason, self.curves, self.checkpoint, self.checkpoint_step,
                          self.model_tag, self.seed)


def divergence(loss, grad_norm, params, backend, first_loss):
    """None, or (tensor, reason) for the first sign of divergence in a step: a non-finite loss,
    gradient norm or parameter (one scalar for all of them, the sum of v * 0: 0 when all are finite,
    NaN otherwise, never an overflow; the tensor is looked up only then), or a loss above BLOWUP_FACTOR * max(first_loss, 1)."""
    loss = float(loss)
    if not math.isfinite(loss):
        return "loss", f"the loss is {loss}"
    if grad_norm is not None and not math.isfinite(float(grad_norm)):
        return "gradient norm", f"the gradient norm is {float(grad_norm)}"
    if not math.isfinite(float(backend.to_numpy(sum((v * 0).sum() for v in params.values())))):
        name = next(k for k, v in params.items() if not math.isfinite(float(backend.to_numpy((v * 0).sum()))))
        return f"params[{name!r}]", f"params[{name!r}] holds NaN or inf"
    if first_loss is not None and loss > BLOWUP_FACTOR * max(first_loss, 1.0):
        return "loss", f"the loss {loss:.3g} is over {BLOWUP_FACTOR:g} times the first step's {first_loss:.3g}"
    return None


class _Checkpoints:
    """Checkpoints written one step late: the snapshot of step s is written once step s + 1's loss
    shows that its parameters have not blown up, so a divergence never overwrites the last good
    checkpoint. flush() writes the pending snapshot at once (after the last step, on Ctrl-C)."""

    def __init__(self, path, identity, backend, saved_step):
        self.path, self.identity, self.backend = path, identity, backend
        self.saved_step, self.pending = saved_step, None

    def snapshot(self, params, state, rng, curves, step):
        b = self.backend
        host_state = {"t": state["t"], "m": _host(b, state["m"]), "v": _host(b, state["v"])}
        self.pending = (_host(b, params), host_state, rng.bit_generator.state, copy.deepcopy(curves), step)

    def flush(self):
        if self.pending is not None:
            save_checkpoint(self.path, *self.pending, self.identity)
            self.saved_step, self.pending = self.pending[-1], None


def _resume(checkpoint, identity, rng, backend, desc):
    """(params, state, curves, step) from the checkpoint, or None (with a message) when there is none."""
    if not os.path.exists(checkpoint):
        print(f"resume: no checkpoint at {checkpoint}; starting {desc} fresh", file=sys.stderr)
        return None
    params, state, rng_state, curves, step = load_checkpoint(checkpoint, identity)
    rng.bit_generator.state = rng_state
    state = {"t": state["t"], "m": _device(backend, state["m"]), "v": _device(backend, state["v"])}
    return _device(backend, params), state, curves, step


def _announce_compilation(backend, cfg, desc, source=None):
    """For a backend that compiles kernels (numba-cpu: `kernels_to_compile`), say which are not
    cached yet and will be compiled now, once; returns the start time then, else None. A source
    that ignores the backend's drawer (`uses_draw = False`) does not compile it."""
    to_compile = getattr(backend, "kernels_to_compile", None)
    missing = to_compile(cfg) if to_compile is not None else []
    if not getattr(source, "uses_draw", True):
        missing = [k for k in missing if not k.startswith("draw.")]
    if not missing:
        return None
    print(f"{backend.name}: compiling {len(missing)} kernels for {desc} once ({', '.join(missing)}); later "
          f"runs load them from Numba's cache", file=sys.stderr, flush=True)
    return time.perf_counter()


def _warm_up(backend, cfg, adam, params, state, source, rng, step, draw):
    """A compiling backend's training kernels compiled before the progress bar starts (its ETA then
    measures steps, not compilation): one training step on the first 8 tasks of the next batch,
    drawn from a copy of the Generator, on copies of the parameters and Adam state. The run itself
    is unchanged: the same batches, the same updates."""
    if getattr(backend, "kernels_to_compile", None) is None:
        return
    tokens, targets = source.next_batch(copy.deepcopy(rng), step, draw=draw)
    n = min(8, len(targets))
    copies = {"t": state["t"], "m": dict(state["m"]), "v": dict(state["v"])}
    backend.train_step(dict(params), copies, backend.asarray(np.ascontiguousarray(tokens[:n])),
                       backend.asarray(np.ascontiguousarray(targets[:n])), cfg, adam)


def _record(curves, step, values):
    curves.setdefault("step", []).append(int(step))
    for k, v in values.items():
        curves.setdefault(k, []).append(v)


def train(cfg: ModelConfig, train_cfg: TrainConfig, source, seed, backend, evaluate=None,
          checkpoint=None, resume=False, progress=True, desc="train", identity=None, initial=None):
    """Train `cfg` with Adam (paper_adam) on batches from `source`; see the module docstring.

    source: a task source, `next_batch(rng, step, draw=None) -> (tokens, targets)` (the interface
    is documented at refimpl.tasks.TaskSource: the uniform tasks; refimpl.gaussian.GaussianTaskSource:
    Gaussian and ill-conditioned inputs).
    backend: a module of `kernels` (get_backend(name)). evaluate(host params) -> {name: float}.
    checkpoint: path of the checkpoint file (None: no checkpoints); resume: start from it if present.
    identity: the run's resolved setup, saved in the checkpoint and compared on resume (default: the
    model and training configs, the seed and the backend). initial: {name: array} that replace those
    parameters' initial values (a construction's fixed weights, with train.frozen); the rest are
    drawn from the seed as usual. Every step is checked for a non-finite
    loss, gradient norm or parameter: Diverged is raised there, and no diverged state is saved.
    """
    tune_for_small_matrices()
    from tqdm import tqdm
    start = time.perf_counter()
    adam = paper_adam(train_cfg, cfg.num_layers)
    rng = np.random.default_rng(seed)
    params = init_params(cfg, rng)
    for name, value in (initial or {}).items():
        if name not in params or np.shape(value) != params[name].shape:
            raise ValueError(f"initial[{name!r}]: expected a parameter of this model with shape "
                             f"{params[name].shape if name in params else '(none)'}, got shape {np.shape(value)}")
        params[name] = np.asarray(value, dtype=params[name].dtype)
    params = _device(backend, params)
    state = backend.adam_init(params)
    curves, step, saved_step = {}, 0, 0
    if identity is None:
        identity = {"model": config_to_dict(cfg), "train": config_to_dict(train_cfg), "seed": seed,
                    "backend": backend.name}
    resumed = _resume(checkpoint, identity, rng, backend, desc) if resume and checkpoint else None
    if resumed is not None:
        params, state, curves, step = resumed
        saved_step = step
    if step > train_cfg.steps:
        raise ValueError(f"train.steps: the checkpoint is at step {step}, beyond steps = {train_cfg.steps}")
    draw = getattr(backend, "linear_regression_tasks", None)  # same bits as refimpl.data's
    compiling = _announce_compilation(backend, cfg, desc, source)
    if step == 0 and evaluate is not None:
        _record(curves, 0, {**evaluate(_host(backend, params)), "train_loss": None})
    if step < train_cfg.steps:
        _warm_up(backend, cfg, adam, params, state, source, rng, step, draw)
    if compiling is not None:
        print(f"{backend.name}: compiled in {time.perf_counter() - compiling:.0f} s", file=sys.stderr, flush=True)
    train_step = backend.train_step
    if train_cfg.frozen:
        train_step = frozen_step(backend, frozen_names(train_cfg.frozen, list(params)))
    first, first_loss = step, None
    saver = _Checkpoints(checkpoint, identity, backend, saved_step)
    bar = tqdm(total=train_cfg.steps, initial=step, desc=desc, disable=not progress,
               mininterval=5.0, dynamic_ncols=True)
    try:
        while step < train_cfg.steps:
            tokens, targets = source.next_batch(rng, step, draw=draw)
            try:
                params, state, loss = train_step(params, state, backend.asarray(tokens),
                                                 backend.asarray(targets), cfg, adam)
                bad = divergence(loss, state.get("grad_norm"), params, backend, first_loss)
            except NonFiniteError as e:  # the finite parameters went non-finite inside the step
                bad = ("loss", f"a value inside the step is not finite ({e})")
            step += 1
            if bad is None or bad[0] != "loss":
                saver.flush()  # the pending snapshot's parameters just gave a sane loss
            if bad is not None:
                raise Diverged(step, *bad, curves, checkpoint, saver.saved_step, identity.get("model_tag"), seed)
            first_loss = float(loss) if first_loss is None else first_loss
            bar.update(1)
            if evaluate is not None and (step % train_cfg.eval_every == 0 or step == train_cfg.steps):
                values = evaluate(_host(backend, params))
                values["train_loss"] = float(loss)
                _record(curves, step, values)
                bar.set_postfix(loss=f"{values.get('loss_tf', float(loss)):.4f}")
            if checkpoint and (step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps):
                saver.snapshot(params, state, rng, curves, step)
        saver.flush()
    except KeyboardInterrupt:
        saver.flush()  # its parameters are finite; only the next loss was not seen yet
        raise
    finally:
        bar.close()
    return TrainResult(_host(backend, params), curves, step - first, time.perf_counter() - start)
