"""Experiments: one module per figure of the paper. Each module provides
    Config       a frozen dataclass tree (with a `task` and a `train` section), the paper's settings
    QUICK        {key: value} overrides that make a run finish in seconds (tests, --quick)
    PRESETS      (optional) {name: {key: value}}: named sizes; `--set preset=NAME` applies one first
    run(cfg, seeds, backend, out_dir, resume, progress) -> results dict (see iclgd.results)
and its figure is drawn by `iclgd.plots.PLOTTERS[name]` from the results alone.
"""
import importlib

# name -> (module, paper figure, one-line description)
EXPERIMENTS = {
    "fig2": ("iclgd.experiments.fig2", "Figure 2 (+ 9)",
             "one-layer LSA vs one GD step: losses, alignment over training, interpolation, weights"),
    "fig1": ("iclgd.experiments.fig1", "Figure 1 (+ 10)",
             "a trained layer repeated 50 times with dampening vs GD at the same dampened step"),
    "fig3": ("iclgd.experiments.fig3", "Figure 3",
             "weight-tied 2-layer and deep 2/3/5-layer LSA vs L-step GD and GD++ (per-layer losses)"),
    "fig4": ("iclgd.experiments.fig4", "Figure 4",
             "sine regression: embedding + input MLP + one LSA layer vs the same front end through one fixed GD step"),
    "fig5": ("iclgd.experiments.fig5", "Figure 5",
             "two layers (softmax, then linear) on alternating x / y tokens: the first layer learns to copy"),
    "fig6": ("iclgd.experiments.fig6", "Figures 6, 7",
             "out-of-distribution losses (input scale, weight scale, other input laws), distractors"),
    "fig7": ("iclgd.experiments.fig7", "Figure 7 (+ 6)",
             "out-of-distribution losses of fig3's weight-tied and deep models vs L-step GD and GD++"),
    "fig8": ("iclgd.experiments.fig8", "Figures 7, 8",
             "figure 3's weight-tied and deep models with several heads and MLPs vs GD and GD++"),
    "fig11": ("iclgd.experiments.fig11", "Figure 11",
              "the 2-head softmax layer's per-head W_KQ scaled by W_PV[-1,-1], and their sum"),
    "fig12": ("iclgd.experiments.fig12", "Figure 12",
              "one softmax self-attention layer with 1 and 2 heads vs one GD step and GD++"),
    "fig13": ("iclgd.experiments.fig13", "Figure 13",
              "GD++'s eigenvalue map of X^T X and the condition numbers before and after its transforms"),
    "fig14": ("iclgd.experiments.fig14", "Figure 14",
              "LayerNorm before LSA (one layer; two layers with LN between) vs GD and GD++"),
    "fig15": ("iclgd.experiments.fig15", "Figure 15",
              "seed-dependent phase transitions of one LSA layer with 1 and 2 heads; grokking on 8 192 fixed tasks"),
    "fig16": ("iclgd.experiments.fig16", "Figure 16",
              "one LSA layer trained on a fixed set of B tasks vs GD alignment, for several B"),
    "fu-algorithms": ("iclgd.experiments.fu_algorithms", "Fu et al. (Newton vs GD)",
                      "Iterative Newton vs GD (SimE heatmaps, best t per k) and the classical learners, "
                      "isotropic and ill-conditioned"),
    "theory-preconditioner": ("iclgd.experiments.theory_preconditioner", "Ahn et al. / Zhang et al. (theory)",
                              "one LSA layer on diagonal-covariance Gaussian data vs Gamma^-1 and its closed-form risk"),
    "fu-lsa": ("iclgd.experiments.fu_lsa", "Fu et al. (layer matching)",
               "deep and weight-tied LSA on Gaussian and ill-conditioned data: per-layer Newton / GD matches"),
    "fu-gpt2": ("iclgd.experiments.fu_gpt2", "Fu et al. (GPT-2 layer matching)",
                "a GPT-2 style model trained from scratch (presets tiny, small, paper): per-layer probes, "
                "Newton / GD matches, isotropic and ill-conditioned"),
}


def get_experiment(name):
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown name {name!r}; valid names: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name][0])
