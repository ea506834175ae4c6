"""Pieces of the experiments that train model variants beyond the one-head LSA (softmax heads,
LayerNorm) on the linear-regression tasks and compare each with GD and GD++ (figures 11, 12, 14).

Shape legend: B tasks, T = N + 1 tokens, D = d + 1 token width, L layers.
"""
import dataclasses

from refimpl import baselines, metrics
from refimpl.config import ModelConfig, TaskConfig
from iclgd.experiments.common import make_evaluator, train_model
from iclgd.gdpp_fit import fit_gdpp
from iclgd.train import paper_token_clip


def gd_reference(task: TaskConfig, tokens, targets, steps):
    """`steps` GD steps at the grid's eta for that many steps (SPEC 4.1): (Reference, eta)."""
    eta, _ = baselines.grid_search_eta(tokens, targets, steps=steps)
    d, N = task.input_dim, task.num_context
    return metrics.Reference(baselines.gd_params(d, eta, N), baselines.gd_model_config(d, steps),
                             tokens, targets), eta


def gdpp_reference(exp_cfg, seed, num_layers, tied, eta, backend, tokens, targets, progress):
    """GD++ of `num_layers` layers fitted with Adam from `eta` (SPEC 4.2): (Reference, etas, gammas)."""
    task = exp_cfg.task
    etas, gammas, _ = fit_gdpp(task, exp_cfg.gdpp, exp_cfg.train, seed, num_layers, tied, eta, progress, backend)
    cfg = baselines.gdpp_model_config(task.input_dim, num_layers, tied, paper_token_clip(num_layers))
    ref = metrics.Reference(baselines.gdpp_params(task.input_dim, etas, gammas, task.num_context), cfg, tokens, targets)
    return ref, [float(e) for e in etas], [float(g) for g in gammas]


def regression_model(**kw):
    """The default `model` section of these experiments: a transformer on the regression tokens of
    the default task (D = K = d + 1 = 11), with `kw` set."""
    return ModelConfig(token_dim=11, key_size=11, **kw)


def check_model_section(exp_cfg, fixed, default):
    """The experiment's `model` section (`--set model.*`) fits its task (token_dim = task.input_dim +
    1) and leaves at `default`'s values the keys each variant sets itself (`fixed`): a one-line
    ValueError naming the key otherwise."""
    D = exp_cfg.task.input_dim + 1
    if exp_cfg.model.token_dim != D:
        raise ValueError(f"model.token_dim: expected task.input_dim + 1 = {D}, got {exp_cfg.model.token_dim}")
    for key in fixed:
        want, got = getattr(default, key), getattr(exp_cfg.model, key)
        if got != want:
            raise ValueError(f"model.{key}: set by each variant of this experiment, so expected the default "
                             f"{want!r}, got {got!r}")


def variant_model(base: ModelConfig, num_layers=1, **options):
    """A variant's model: the experiment's `model` section with the variant's depth and options, and
    the token clip of that depth (SPEC 3) unless model.token_clip sets one."""
    clip = base.token_clip or paper_token_clip(num_layers)
    return dataclasses.replace(base, num_layers=num_layers, token_clip=clip, **options)


def train_against(exp_cfg, tag, cfg, refs, seed, backend, out_dir, resume, progress, tokens, targets, train_cfg=None):
    """Train `cfg` for one seed, evaluating against refs = {name: Reference} (alignment with the first
    without a suffix, the others as _NAME), evaluated on the run's backend. Returns (TrainResult,
    final numbers incl. loss_NAME)."""
    evaluate = make_evaluator(cfg, tokens, targets, refs, backend)
    res = train_model(cfg, exp_cfg, seed, backend, out_dir, tag, evaluate, resume, progress, train_cfg)
    final = evaluate(res.params)
    final.update({f"loss_{name}": ref.loss for name, ref in refs.items()})
    return res, final
