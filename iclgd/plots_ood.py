"""The out-of-distribution figure of figure 3's multi-layer models (fig7) and of their multi-head,
MLP versions (fig8, with fig3's figure), drawn from results.json alone; registered in
iclgd.plots.PLOTTERS."""
from iclgd import plots as base

STYLES = {"tf": ("trained TF", "-"), "gd": ("L-step GD", "--"), "gdpp": ("GD++", "-.")}
TITLES = {"input": "input scale, x -> alpha x", "weight": "weight scale, w -> alpha w",
          "laws": "exp / normal / Laplace, normalised, x alpha"}


def plot_fig7(r, out_dir, name="fig7"):
    """NAME.png / .pdf: one row per variant (tiedL, deepL): its TF, L-step GD and GD++ losses against the input
    scale, the weight scale, the other laws' alpha and the number of distractor labels; a dotted
    line marks the training distribution (alpha = 1, k = 0)."""
    plt = base._plt()
    variants = list(r["ood"])
    fig, ax = plt.subplots(len(variants), 4, figsize=(18, 3.6 * len(variants)), squeeze=False, layout="constrained")
    for row, variant in zip(ax, variants):
        o, f = r["ood"][variant], r["final"][variant]
        clip = f.get("ood_gd_token_clip") or 0
        tag = f"{variant}, tokens clipped at +-{clip:g}" if clip else variant
        for a, fam in zip(row, TITLES):
            for model, (label, ls) in STYLES.items():
                a.plot(base._arr(o["alpha"][fam]), base._arr(o[fam][model]), ls, label=label)
            a.axvline(1.0, color="gray", lw=0.6, ls=":")
            a.set(xlabel="alpha", ylabel="loss", yscale="log")
            a.set_title(f"{tag}: {TITLES[fam]}", fontsize=9)
        for model, (label, ls) in STYLES.items():
            row[3].plot(o["k"], base._arr(o["distractors"][model]), ls, marker="o", ms=3, label=label)
        row[3].set(xlabel="distractor labels k", ylabel="loss")
        row[3].set_title(f"{tag}: distractor labels", fontsize=9)
        for a in row:
            a.legend(fontsize=7)
    extra = f", {r['config']['heads']} heads, MLP {'on' if r['config']['mlp'] else 'off'}" if "heads" in r["config"] else ""
    return base._save(r, fig, out_dir, name, f"out-of-distribution losses of the multi-layer models ({base._seeds(r)}{extra})")


def plot_fig8(r, out_dir):
    """fig3's figure (fig8.png / .pdf) and fig7's (fig8-ood.png / .pdf) of the multi-head models."""
    return base.plot_fig3(r, out_dir) + plot_fig7(r, out_dir, "fig8-ood")
