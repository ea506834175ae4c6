"""Figure 3: multi-layer LSA against multi-step GD and GD++ (SPEC 4.1, 4.2).

Variants: a weight-tied L-layer model (`tied_layers`, trained train.steps) and deep models with
L in `deep_layers` (trained `deep_steps`, lr / clip / token clip by the SPEC 3 rules). For each:
eta of L-step GD from the grid, GD++ scalars trained from (eta, eta/N^2) (one pair when tied, one
per layer when deep), the trained model's loss and its alignment with GD and GD++ every
eval_every steps, and the per-layer losses of all three at the end.
"""
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import baselines, metrics
from refimpl.tasks import eval_tasks
from iclgd.train import TrainConfig, paper_adam, paper_token_clip, resolved_adam
from refimpl.config import TaskConfig
from refimpl.atomic import atomic_write
from refimpl.fieldcheck import check_fields, check_items
from iclgd.evaluation import evaluation_ops
from iclgd.gdpp_fit import GDPPConfig, fit_gdpp
from iclgd.experiments.common import lsa_config, make_evaluator, mean_over_seeds, train_model


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # weight-tied: 5 000 steps (SPEC 3)
    tied_layers: int = 2  # applications of the weight-tied layer (paper: 2); 0 = no tied variant
    deep_layers: tuple = (2, 3, 5)  # depths of the deep models (paper figure 3: up to 5)
    deep_steps: tuple = (50000,)  # training steps of the deep models (SPEC 3: 50 000): one for all, or one per depth
    gdpp: GDPPConfig = field(default_factory=GDPPConfig)
    workers: int = 1  # variants trained in parallel processes (results do not depend on it)

    def __post_init__(self):
        check_fields(self, "", {"tied_layers": ">= 0", "workers": ">= 1"})
        if self.deep_layers:
            check_items("deep_layers", self.deep_layers, int, ">= 1")
        check_items("deep_steps", self.deep_steps, int, ">= 1")
        variants(self)  # deep_steps: one entry, or one per depth
        if not self.deep_layers and not self.tied_layers:
            raise ValueError("deep_layers: expected at least one depth when tied_layers = 0, got []")

    def model_options(self):
        """ModelConfig fields of the trained models beyond lsa_config's: none here (one head, no
        MLP); fig8's Config adds heads and MLPs."""
        return {}


QUICK = {"train.steps": "200", "train.batch": "256", "train.eval_every": "100",
         "task.eval_tasks": "1000", "train.checkpoint_every": "100", "deep_layers": "[3]",
         "deep_steps": "[200]", "gdpp.steps_tied": "50", "gdpp.steps_deep": "50", "gdpp.batch": "256"}


def variants(cfg: Config):
    """[(name, L, tied, steps)]."""
    steps = tuple(cfg.deep_steps)
    if len(steps) not in (1, len(cfg.deep_layers)):
        raise ValueError(f"deep_steps: expected one entry or one per depth of deep_layers = "
                         f"{cfg.deep_layers}, got {cfg.deep_steps}")
    steps = steps * len(cfg.deep_layers) if len(steps) == 1 else steps
    out = [(f"tied{cfg.tied_layers}", cfg.tied_layers, True, cfg.train.steps)] if cfg.tied_layers else []
    return out + [(f"deep{L}", int(L), False, int(n)) for L, n in zip(cfg.deep_layers, steps)]


def run_variant(cfg, name, L, tied, steps, seed, tokens, targets, backend, out_dir, resume, progress):
    """Train one variant for one seed and evaluate it against L-step GD (the grid's eta) and GD++
    (fitted): (final numbers, the training's result, models), where models = {"tf", "gd",
    "gdpp": (params, ModelConfig)} as evaluated here (GD without token clipping)."""
    task = cfg.task
    d, N = task.input_dim, task.num_context
    eta, _ = baselines.grid_search_eta(tokens, targets, steps=L)
    ops = evaluation_ops(backend)
    gd_cfg = baselines.gd_model_config(d, L)
    ref_gd = metrics.Reference(baselines.gd_params(d, eta, N), gd_cfg, tokens, targets, ops)
    etas, gammas, fit = cached_gdpp(cfg, name, L, tied, eta, seed, out_dir, (tokens, targets), reuse=resume,
                                     progress=progress, backend=backend)
    gdpp_cfg = baselines.gdpp_model_config(d, L, tied, token_clip=paper_token_clip(L))
    ref_gdpp = metrics.Reference(baselines.gdpp_params(d, etas, gammas, N), gdpp_cfg, tokens, targets, ops)
    cfg_tf = lsa_config(task, num_layers=L, tied=tied, **cfg.model_options())
    evaluate = make_evaluator(cfg_tf, tokens, targets, {"gd": ref_gd, "gdpp": ref_gdpp}, backend)
    train_cfg = dataclasses.replace(cfg.train, steps=steps)
    res = train_model(cfg_tf, cfg, seed, backend, out_dir, name, evaluate, resume, progress, train_cfg)
    final = evaluate(res.params)
    _, per_layer_tf, _ = metrics.losses(res.params, tokens, targets, cfg_tf, ops)
    adam = paper_adam(train_cfg, L)
    final.update({
        "loss_gd": ref_gd.loss, "loss_gdpp": ref_gdpp.loss,
        "loss_tf_layers": per_layer_tf, "loss_gd_layers": ref_gd.per_layer,
        "loss_gdpp_layers": ref_gdpp.per_layer,
        "gd_eta": eta, "gdpp_eta": etas, "gdpp_gamma": gammas, "gdpp_fit": fit,
        "layers": L, "weight_tied": tied, "steps": steps, "lr": adam.lr, "grad_clip": adam.grad_clip,
        "token_clip": cfg_tf.token_clip,
    })
    models = {"tf": (res.params, cfg_tf), "gd": (ref_gd.params, gd_cfg), "gdpp": (ref_gdpp.params, gdpp_cfg)}
    return final, res, models


def cached_gdpp(cfg, name, L, tied, eta, seed, out_dir, eval_set, reuse, progress=False, backend=None):
    """fit_gdpp (with its curve on eval_set), saved to out_dir/checkpoints/gdpp_NAME_seedS.json; with
    `reuse` (--resume) a saved fit with the same settings is read back instead of refitted."""
    key = {"gdpp": dataclasses.asdict(cfg.gdpp), "task": dataclasses.asdict(cfg.task), "eta0": eta,
           "layers": L, "tied": tied, "grad_clip": paper_adam(cfg.train, L).grad_clip}
    path = os.path.join(out_dir, "checkpoints", f"gdpp_{name}_seed{seed}.json") if out_dir else None
    if reuse and path and os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
            if saved["key"] == json.loads(json.dumps(key)):
                return np.array(saved["etas"]), np.array(saved["gammas"]), saved["fit"]
        except (OSError, ValueError, KeyError, TypeError) as e:  # a cache: refit rather than fail
            print(f"GD++ fit {path}: unreadable ({type(e).__name__}); fitting again", file=sys.stderr)
    etas, gammas, fit = fit_gdpp(cfg.task, cfg.gdpp, cfg.train, seed, L, tied, eta, progress, backend, eval_set)
    if out_dir:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = json.dumps({"key": key, "etas": etas.tolist(), "gammas": gammas.tolist(), "fit": fit})
        with atomic_write(path, "w") as f:
            f.write(text)
    return etas, gammas, fit


def _variant_job(args):
    """One (seed, variant) in a worker process; the backend travels by name."""
    cfg, (name, L, tied, steps), seed, backend_name, out_dir, resume, progress, per_variant = args
    from kernels import get_backend
    backend = get_backend(backend_name)
    tokens, targets = eval_tasks(cfg.task)
    final, res, models = run_variant(cfg, name, L, tied, steps, seed, tokens, targets, backend,
                                     out_dir, resume, progress)
    more = per_variant(cfg, L, models, tokens, targets, backend) if per_variant else {}
    final.update(more.pop("final", {}))
    return final, res.curves, res.steps_run, more


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True, per_variant=None):
    """Train and evaluate every variant for every seed (cfg.workers at a time). `per_variant(cfg, L,
    models, tokens, targets, backend) -> dict`, when given, runs in each variant's job after its
    training and fits (models as run_variant returns them; tokens (B, T, D) and targets (B,) the
    evaluation set): its "final" entry joins the variant's final numbers, and each other KEY becomes
    results[KEY][variant] (mean over seeds) and per_seed[i][KEY][variant] (fig7 adds its
    out-of-distribution curves this way)."""
    start = time.perf_counter()
    tokens, targets = eval_tasks(cfg.task)
    jobs = [(cfg, v, seed, backend.name, out_dir, resume, progress, per_variant)
            for seed in seeds for v in variants(cfg)]
    if cfg.workers > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(min(cfg.workers, len(jobs))) as pool:
            outputs = pool.map(_variant_job, jobs, chunksize=1)
    else:
        outputs = [_variant_job(job) for job in jobs]
    per_seed, steps_run, it = [], 0, iter(outputs)
    for seed in seeds:
        entry = {"seed": seed, "final": {}, "curves": {}}
        for name, *_ in variants(cfg):
            entry["final"][name], entry["curves"][name], n, more = next(it)
            steps_run += n
            for key, value in more.items():
                entry.setdefault(key, {})[name] = value
        per_seed.append(entry)
    names = [name for name, *_ in variants(cfg)]
    extra = {key: {name: mean_over_seeds([s[key][name] for s in per_seed]) for name in names}
             for key in per_seed[0] if key not in ("seed", "final", "curves")}
    final = {name: mean_over_seeds([s["final"][name] for s in per_seed]) for name in names}
    curves = {name: mean_over_seeds([s["curves"][name] for s in per_seed]) for name in names}
    resolved = {"adam": {name: resolved_adam(cfg.train, L) for name, L, *_ in variants(cfg)}}
    return {"final": final, "curves": curves, **extra, "per_seed": per_seed, "steps_run": steps_run, "resolved": resolved,
            "loss_zero": float(0.5 * np.mean(targets**2)), "runtime_s": time.perf_counter() - start,
            "notes": "final and curves hold one entry per variant (tiedL, deepL); *_layers: loss after "
                     "each layer / GD step; GD is plain GD (no token clipping); GD++ and the TF clip "
                     "tokens at +-10 when L > 3; steps: training steps of that variant."}
