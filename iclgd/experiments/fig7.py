"""Figure 7 (and figure 6's multi-layer panels, as A.2 describes them): out-of-distribution
behaviour of figure 3's multi-layer models against L-step GD and GD++ (SPEC 1.2, 4.1, 4.2, 5). The
paper (A.2): "the trained Transformers behave remarkably similar to GD and GD++ for layer depth
greater than 1", the match becoming worse for deeper architectures.

The models are fig3's, trained and fitted by fig3's code with fig3's config keys and defaults:
the weight-tied `tied_layers`-layer model and the deep models of `deep_layers`, SPEC 3's lr / clip /
token clip by depth, L-step GD at the grid's eta for L steps, GD++ with its fitted (eta, gamma)
(one pair when tied, one per layer when deep). Then, in each variant's job, fig6's evaluation
(iclgd.experiments.ood) of the trained TF, L-step GD and GD++ on the evaluation set rescaled for
every alpha: input scale (input_grid), weight scale (weight_grid), the normalised exponential /
normal / Laplace inputs (law_grid, also split by law) and k = 0 .. N distractor labels.

Token clipping. The paper clips the tokens of its deeper models after every step of transformation
"for the trained TF and GD", so that their OOD loss plateaus. Here every model of a variant runs
with that variant's TF token clip, paper_token_clip(L) (SPEC 3: +-10 when L > 3, none otherwise;
the paper's text says "K > 2"; its bound is missing from our copy of the text): the TF and GD++ as
fig3 trains / fits and evaluates them, and L-step GD, which fig3 runs unclipped
(refimpl.baselines.gd_model_config's default), with the same clip after each of its L applications
(the whole token matrix, x part and labels, as refimpl.block does for every model). The GD curve is the clipped one; fig3's `loss_gd`
(unclipped) stays in `final` beside `loss_gd_ood`, the clipped GD on the unscaled evaluation set;
the two are equal unless a token reaches the clip there. GD's eta is fig3's grid optimum of
unclipped L-step GD. With a clip, GD's loss is no longer exactly alpha^2 times under weight scale
alpha (`weight_scale_law_dev_gd` says by how much).
"""
import dataclasses
from dataclasses import dataclass

import numpy as np

from refimpl import metrics
from iclgd.evaluation import evaluation_ops
from iclgd.experiments import fig3
from iclgd.experiments import ood as ood_eval

MODELS = ("tf", "gd", "gdpp")  # the curves of each variant


@dataclass(frozen=True)
class Config(fig3.Config):
    input_grid: tuple = (0.5, 2.0, 0.03)  # start, stop, step of the input scale (SPEC 1.2)
    weight_grid: tuple = (0.5, 5.0, 0.1)  # start, stop, step of the weight scale (SPEC 1.2)
    law_grid: tuple = (0.5, 5.0, 0.1)  # start, stop, step of alpha for the other input laws (SPEC 1.2)

    def __post_init__(self):
        super().__post_init__()
        ood_eval.check_grids(self)


# fig3's quick settings with the deep 5-layer model (token clip +-10) in place of deep 3, and grids
# that hold alpha = 1
QUICK = {**fig3.QUICK, "deep_layers": "[5]", "input_grid": "[0.5, 2.0, 0.25]", "weight_grid": "[0.5, 5.0, 0.5]",
         "law_grid": "[0.5, 5.0, 1.5]"}


def variant_ood(cfg, L, models, tokens, targets, backend):
    """fig3.run's per_variant: the OOD curves of one trained variant, {"final": summary numbers,
    "ood": ood_axes and ood_curves of the TF, the token-clipped L-step GD and GD++}."""
    clip = models["tf"][1].token_clip
    gd_params, gd_cfg = models["gd"]
    models = {"tf": models["tf"], "gd": (gd_params, dataclasses.replace(gd_cfg, token_clip=clip)),
              "gdpp": models["gdpp"]}
    ops = evaluation_ops(backend)
    alphas = ood_eval.grids(cfg)
    law_set = ood_eval.law_tasks(cfg.task)  # tokens (B, T, D), targets (B,), law (B,)
    curves = ood_eval.ood_curves(models, cfg.task, tokens, targets, alphas, law_set, ops)
    at_one = {name: metrics.losses(p, tokens, targets, c, ops)[0] for name, (p, c) in models.items()}
    final = {"ood_gd_token_clip": clip, "loss_gd_ood": at_one["gd"]}
    for name in MODELS:
        final[f"weight_scale_law_dev_{name}"] = ood_eval.weight_scale_law_dev(
            curves["weight"][name], alphas["weight"], at_one[name])
    for fam in ood_eval.GRID_KEYS:
        for ref in ("gd", "gdpp"):
            final[f"ood_rel_dev_{ref}_{fam}"] = max_relative_deviation(curves[fam]["tf"], curves[fam][ref])
        for name in MODELS:  # at the end of each grid (input scale 2, weight scale 5, law alpha 5 by default)
            final[f"loss_{name}_{fam}_{alphas[fam][-1]:.2f}"] = curves[fam][name][-1]
    return {"final": final, "ood": {**ood_eval.ood_axes(alphas, cfg.task, law_set[2]), **curves}}


def max_relative_deviation(curve, ref):
    """max over the grid of |curve / ref - 1| where both are finite; None where none is."""
    a = np.array([np.nan if v is None else v for v in curve], dtype=float)  # (G,)
    b = np.array([np.nan if v is None else v for v in ref], dtype=float)  # (G,)
    dev = np.abs(a / b - 1)  # (G,)
    return float(np.nanmax(dev)) if np.isfinite(dev).any() else None


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    r = fig3.run(cfg, seeds, backend, out_dir, resume, progress, per_variant=variant_ood)
    r["notes"] = ("final, curves and ood hold one entry per variant (tiedL, deepL); final and curves are "
                  "fig3's (loss_gd: L-step GD without token clipping). ood[variant][family][model] for "
                  "the families input, weight, laws: the loss at each ood[variant].alpha[family] (None = "
                  "diverged); by_law[law][model]: the laws family split by input law (law_tasks[law] tasks "
                  "each); distractors[model][i]: the loss with k[i] distractor labels. Models: tf, gd "
                  "(L-step GD at gd_eta with the variant's token clip, final.ood_gd_token_clip), gdpp. "
                  "final.loss_gd_ood: that clipped GD on the unscaled evaluation set; "
                  "weight_scale_law_dev_*: max |loss(alpha) / (alpha^2 loss(1)) - 1|; ood_rel_dev_REF_FAMILY: "
                  "max over the grid of |TF / REF - 1|; loss_MODEL_FAMILY_A: at the grid's last alpha A.")
    return r
