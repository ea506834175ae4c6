"""The out-of-distribution figure of figure 3's multi-layer models (fig7), drawn from results.json
alone; registered in iclgd.plots.PLOTTERS."""
from iclgd import plots as base

STYLES = {"tf": ("trained TF", "-"), "gd": ("L-step GD", "--"), "gdpp": ("GD++", "-.")}
TITLES = {"input": "input scale, x -> alpha x", "weight": "weight scale, w -> alpha w",
          "laws": "exp / normal / Laplace, normalised, x alpha"}


def plot_fig7(r, out_dir):
    """One row per variant (tiedL, deepL): its TF, L-step GD and GD++ losses against the input
    scale, the weight scale, the other laws' alpha and the number of distractor labels; a dotted
    line marks the training distribution (alpha = 1, k = 0)."""
    plt = base._plt()
    names = list(r["ood"])
    fig, ax = plt.subplots(len(names), 4, figsize=(18, 3.6 * len(names)), squeeze=False, layout="constrained")
    for row, name in zip(ax, names):
        o, f = r["ood"][name], r["final"][name]
        clip = f.get("ood_gd_token_clip") or 0
        tag = f"{name}, tokens clipped at +-{clip:g}" if clip else name
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
    return base._save(r, fig, out_dir, "fig7", f"out-of-distribution losses of the multi-layer models ({base._seeds(r)})")
