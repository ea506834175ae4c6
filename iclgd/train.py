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
import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from refimpl.config import AdamConfig, ModelConfig, config_to_dict
from refimpl.params import init_params
from iclgd.runtime import tune_for_small_matrices


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

    def __post_init__(self):
        # lr and grad_clip: None (the SPEC 3 rule) or a number (`--set train.lr=0.002` parses it as
        # a float, `--set train.lr=null` as None: refimpl.config reads the Optional[float] type)
        for name, lowest in (("lr", "> 0"), ("grad_clip", ">= 0")):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"train.{name}: expected a number or null (SPEC 3 rule), got {value!r}")
            if not (value > 0 if lowest == "> 0" else value >= 0):
                raise ValueError(f"train.{name}: expected a number {lowest} or null (SPEC 3 rule), got {value!r}")


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


def save_checkpoint(path, params, state, rng, curves, step, backend, cfg):
    """Write everything the loop carries to `path` (.npz) atomically: temp file, then rename."""
    arrays = {f"param/{k}": v for k, v in _host(backend, params).items()}
    arrays.update({f"adam_m/{k}": v for k, v in _host(backend, state["m"]).items()})
    arrays.update({f"adam_v/{k}": v for k, v in _host(backend, state["v"]).items()})
    meta = {"step": int(step), "adam_t": int(state["t"]), "rng": rng.bit_generator.state,
            "curves": curves, "model_config": config_to_dict(cfg)}
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, rng, backend, cfg):
    """(params, state, curves, step) from `path`; the Generator's state is restored in place."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta["model_config"] != config_to_dict(cfg):
            raise ValueError(f"checkpoint {path}: its model config differs from this run's; "
                             f"expected {config_to_dict(cfg)}, got {meta['model_config']}")
        part = {pre: {k[len(pre) + 1:]: data[k] for k in data.files if k.startswith(pre + "/")}
                for pre in ("param", "adam_m", "adam_v")}
    rng.bit_generator.state = meta["rng"]
    state = {"t": meta["adam_t"], "m": _device(backend, part["adam_m"]), "v": _device(backend, part["adam_v"])}
    return _device(backend, part["param"]), state, meta["curves"], meta["step"]


def _record(curves, step, values):
    curves.setdefault("step", []).append(int(step))
    for k, v in values.items():
        curves.setdefault(k, []).append(v)


def train(cfg: ModelConfig, train_cfg: TrainConfig, source, seed, backend, evaluate=None,
          checkpoint=None, resume=False, progress=True, desc="train"):
    """Train `cfg` with Adam (paper_adam) on batches from `source`; see the module docstring.

    backend: a module of `kernels` (get_backend(name)). evaluate(host params) -> {name: float}.
    checkpoint: path of the checkpoint file (None: no checkpoints); resume: start from it if present.
    """
    tune_for_small_matrices()
    from tqdm import tqdm
    start = time.perf_counter()
    adam = paper_adam(train_cfg, cfg.num_layers)
    rng = np.random.default_rng(seed)
    params = _device(backend, init_params(cfg, rng))
    state = backend.adam_init(params)
    curves, step = {}, 0
    if resume and checkpoint and os.path.exists(checkpoint):
        params, state, curves, step = load_checkpoint(checkpoint, rng, backend, cfg)
    if step > train_cfg.steps:
        raise ValueError(f"train.steps: the checkpoint is at step {step}, beyond steps = {train_cfg.steps}")
    if step == 0 and evaluate is not None:
        _record(curves, 0, {**evaluate(_host(backend, params)), "train_loss": None})
    draw = getattr(backend, "linear_regression_tasks", None)  # same bits as refimpl.data's
    first = step
    bar = tqdm(total=train_cfg.steps, initial=step, desc=desc, disable=not progress,
               mininterval=5.0, dynamic_ncols=True)
    while step < train_cfg.steps:
        tokens, targets = source.next_batch(rng, step, draw=draw)
        params, state, loss = backend.train_step(params, state, backend.asarray(tokens),
                                                 backend.asarray(targets), cfg, adam)
        step += 1
        bar.update(1)
        if evaluate is not None and (step % train_cfg.eval_every == 0 or step == train_cfg.steps):
            values = evaluate(_host(backend, params))
            values["train_loss"] = float(loss)
            _record(curves, step, values)
            bar.set_postfix(loss=f"{values.get('loss_tf', float(loss)):.4f}")
        if checkpoint and (step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps):
            save_checkpoint(checkpoint, params, state, rng, curves, step, backend, cfg)
    bar.close()
    return TrainResult(_host(backend, params), curves, step - first, time.perf_counter() - start)
