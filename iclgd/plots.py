"""Figures drawn from results.json alone (STYLE habit 9: re-plotting never retrains).

`plot_results(results, out_dir)` dispatches on results["experiment"] and writes NAME.png and NAME.pdf.
"""
import os

import numpy as np

from refimpl.atomic import atomic_write


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(r, fig, out_dir, name, title):
    """Title the figure `NAME: title` (marked QUICK for a --quick run of results r), write
    out_dir/NAME.png and .pdf atomically; their paths."""
    quick = "QUICK run, reduced settings (not the paper's): " if r.get("quick") else ""
    fig.suptitle(f"{name}: {quick}{title}", fontsize=10, color="tab:red" if quick else "black")
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        # No creation date in the PDF: re-plotting the same results.json gives the same bytes.
        metadata = {"CreationDate": None} if ext == "pdf" else None
        with atomic_write(path, "wb") as f:  # a unique temporary name: two writers never collide
            fig.savefig(f, format=ext, dpi=110, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    _plt().close(fig)
    return paths


def _arr(values):
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _heat(ax, matrix, title, names=None):
    m = np.asarray(matrix, dtype=float)
    lim = float(np.max(np.abs(m))) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title, fontsize=9)
    if names is None:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xticks(range(len(names)), names, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set(xlabel="key coordinate", ylabel="query coordinate")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def plot_fig2(r, out_dir):
    plt = _plt()
    c, f = r["curves"], r["final"]
    step = _arr(c["step"])
    fig, ax = plt.subplots(1, 4, figsize=(18, 4.2), layout="constrained")
    ax[0].plot(step, _arr(c["loss_tf"]), label=f"trained TF (final {f['loss_tf']:.4f})")
    ax[0].axhline(f["loss_gd"], color="k", ls="--", label=f"1 step GD ({f['loss_gd']:.4f})")
    ax[0].axhline(f["loss_interp"], color="tab:green", ls=":", label=f"interpolation ({f['loss_interp']:.4f})")
    ax[0].axhline(f["loss_zero"], color="tab:gray", ls="-.", label=f"zero prediction ({f['loss_zero']:.4f})")
    ax[0].set_ylim(0, max(f["loss_zero"], f["loss_gd"]) * 1.25)
    ax[0].set(xlabel="training step", ylabel="loss on the evaluation tasks", title="loss")
    ax[0].legend(fontsize=7, loc="upper right")
    gap = ax[0].inset_axes([0.42, 0.22, 0.53, 0.33])  # the lines above overlap: draw their gap
    gap.plot(step, np.abs(_arr(c["loss_tf"]) - f["loss_gd"]), color="tab:blue")
    gap.set_yscale("log")
    gap.set_title("|loss TF - loss GD|", fontsize=7)
    gap.tick_params(labelsize=6)
    ax[1].plot(step, _arr(c["model_cos"]), color="tab:red")
    ax[1].set(xlabel="training step", ylabel="cosine similarity", title="model cos (TF vs GD)",
              ylim=(-0.05, 1.05))
    ax[2].plot(step, _arr(c["model_diff"]), label="model diff")
    ax[2].plot(step, _arr(c["preds_diff"]), label="preds diff")
    ax[2].set(xlabel="training step", ylabel="L2 distance", title="differences to GD", yscale="log")
    _log_ticks(ax[2])
    ax[2].legend(fontsize=8)
    w = r["per_seed"][0]["weights"]
    prod = np.asarray(w["W_KQ"]) * np.asarray(w["W_PV"])[-1, -1]
    _heat(ax[3], prod, f"W_KQ * W_PV[-1,-1] (x-diagonal mean {f['kq_pv_diag']:.3f})\n"
                       f"last row / column: the label y (0 for GD)", _token_names(prod.shape[0]))
    return _save(r, fig, out_dir, "fig2", f"one LSA layer vs one GD step (eta/N = {f['gd_eta_over_n']:.3f}, "
                 f"{_seeds(r)}, {r['steps_run']} steps run)")


def _token_names(D):
    """x_1 .. x_d and y: the coordinates of a token (the label last)."""
    return [f"x{i + 1}" for i in range(D - 1)] + ["y"]


def _log_ticks(ax):
    """Label 1, 2 and 5 of every decade on a log axis (the default labels only the powers of 10)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter(""))


def _seeds(r):
    seeds = list(r["seeds"])
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def plot_fig1(r, out_dir):
    plt = _plt()
    c, f = r["curves"], r["final"]
    lam = r["config"]["dampening"]
    step = _arr(c["step"])
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    ax[0].plot(step, _arr(c["loss_tf"]), label="trained TF, mean")
    ax[0].plot(step, _arr(c["loss_gd"]), "--", label="GD, mean")
    if "loss_tf_stable" in c:
        unstable = f.get("unstable_gd", "?")
        ax[0].plot(step, _arr(c["loss_tf_stable"]), color="C4", alpha=0.8,
                   label=f"trained TF, mean without the {unstable} GD-unstable tasks")
        ax[0].plot(step, _arr(c["loss_gd_stable"]), "--", color="C5", alpha=0.8,
                   label="GD, mean without them")
    ax[0].plot(step, _arr(c["median_tf"]), label="trained TF, median", alpha=0.7)
    ax[0].plot(step, _arr(c["median_gd"]), ":", label="GD, median", alpha=0.7)
    if "median_gd_tf_eta" in c:
        ax[0].plot(step, _arr(c["median_gd_tf_eta"]), ":", color="gray",
                   label=f"GD at the TF's step (eta/N {f['tf_eta_over_n']:.4f}), median")
    ax[0].set(xlabel="applications of the layer", ylabel="loss", yscale="log",
              title=f"lambda = {lam} (diverged: TF {f['diverged_tf']}, GD {f['diverged_gd']})")
    ax[0].set_ylim(1e-3, 10)  # a diverging task sends the mean far above; its count is in the title
    ax[0].legend(fontsize=7)
    for i, e in enumerate(r["per_seed"][0]["sweep"]):
        col = f"C{i}"
        ax[1].plot(step, _arr(e["loss_tf"]), color=col, label=f"TF, lambda {e['dampening']}")
        ax[1].plot(step, _arr(e["loss_gd"]), "--", color=col)
    ax[1].set(xlabel="applications of the layer", ylabel="mean loss (dashed: GD)", yscale="log",
              title="dampening sweep (figure 10)")
    ax[1].set_ylim(1e-3, 10)
    ax[1].legend(fontsize=8)
    return _save(r, fig, out_dir, "fig1", f"repeated LSA layer vs GD ({_seeds(r)})")


def plot_fig3(r, out_dir):
    plt = _plt()
    names = list(r["final"])
    fits = any(r["final"][name].get("gdpp_fit") for name in names)  # files before the fit curves lack them
    rows = 3 if fits else 2
    fig, ax = plt.subplots(rows, len(names), figsize=(4.2 * len(names), 3.5 * rows), squeeze=False,
                           layout="constrained")
    for i, name in enumerate(names):
        c, f = r["curves"][name], r["final"][name]
        step = _arr(c["step"])
        a = ax[0, i]
        a.plot(step, _arr(c["loss_tf"]), label="trained TF")
        a.axhline(f["loss_gd"], color="k", ls="--", label=f"{f['layers']} steps GD ({f['loss_gd']:.4f})")
        a.axhline(f["loss_gdpp"], color="tab:red", ls=":", label=f"GD++ ({f['loss_gdpp']:.4f})")
        a.set(xlabel="training step", ylabel="loss", yscale="log",
              title=f"{name}: TF {f['loss_tf']:.4f} after {f['steps']} steps")
        a.legend(fontsize=8)
        b = ax[1, i]
        layers = np.arange(1, f["layers"] + 1)
        b.plot(layers, _arr(f["loss_tf_layers"]), "o-", label="TF after layer l")
        b.plot(layers, _arr(f["loss_gd_layers"]), "s--", label="GD after step l")
        b.plot(layers, _arr(f["loss_gdpp_layers"]), "^:", label="GD++ after layer l")
        b.set(xlabel="layer", ylabel="loss", yscale="log", xticks=layers)
        b.legend(fontsize=8)
        if fits and f.get("gdpp_fit"):
            g = ax[2, i]
            g.plot(_arr(f["gdpp_fit"]["step"]), _arr(f["gdpp_fit"]["loss_gdpp"]), color="tab:red",
                   label="GD++ during its fit")
            g.axhline(f["loss_tf"], color="tab:blue", ls="--", label=f"trained TF ({f['loss_tf']:.4f})")
            g.set(xlabel="Adam step of the GD++ fit", ylabel="loss", yscale="log")
            g.legend(fontsize=8)
    extra = f", {r['config']['heads']} heads, MLP {'on' if r['config']['mlp'] else 'off'}" if "heads" in r["config"] else ""
    return _save(r, fig, out_dir, r["experiment"], f"multi-layer LSA vs GD and GD++ ({_seeds(r)}{extra})")


def plot_fig6(r, out_dir):
    """Top row: each model's loss per family; bottom row: each model's loss divided by GD's, where
    the curves that overlap above come apart. The third column splits the other-laws family by law
    (colour) for the TF (solid) and GD (dashed)."""
    plt = _plt()
    o = r["ood"]
    styles = {"tf": ("trained TF", "-"), "gd": ("GD", "--"), "gdpp": ("GD++", "-."), "interp": ("interpolation", ":")}
    titles = {"input": "input scale alpha (x -> alpha x)", "weight": "weight scale alpha (w -> alpha w)"}
    fig, ax = plt.subplots(2, 4, figsize=(18, 7), layout="constrained")
    eta = o.get("eta_over_n", {})  # eta/N behind each curve (files written before it lack it)

    def named(label, key):
        return f"{label}, eta/N {eta[key]:.3f}" if eta.get(key) is not None else label
    for col, fam in enumerate(("input", "weight")):
        alpha = _arr(o["alpha"][fam])
        for name, (label, ls) in styles.items():
            ax[0, col].plot(alpha, _arr(o[fam][name]), ls, label=named(label, name) if fam == "input" else label)
            ax[1, col].plot(alpha, _arr(o[fam][name]) / _arr(o[fam]["gd"]), ls, label=label)
        if fam == "input" and "input_closed_form" in o:  # one GD step's expected loss, closed form
            for key, curve, color in (("gd_closed_form", "gd", "k"), ("gd_closed_form_opt", "gd_opt", "tab:gray")):
                c = _arr(o["input_closed_form"][curve])
                ax[0, col].plot(alpha, c, color=color, lw=0.8, ls=(0, (1, 3)), label=named("GD, expected (closed form)", key))
                ax[1, col].plot(alpha, c / _arr(o[fam]["gd"]), color=color, lw=0.8, ls=(0, (1, 3)),
                                label=named("GD, expected (closed form)", key))
        ax[0, col].set(xlabel="alpha", ylabel="loss", yscale="log", title=titles[fam])
        ax[1, col].set(xlabel="alpha", ylabel="loss / GD's loss")
    alpha = _arr(o["alpha"]["laws"])
    by_law = o.get("by_law")
    if by_law:  # results written before the split hold only the mixed family
        for (law, curves), colour in zip(by_law.items(), ("tab:blue", "tab:orange", "tab:green")):
            n = o.get("law_tasks", {}).get(law)
            ax[0, 2].plot(alpha, _arr(curves["tf"]), "-", color=colour, label=f"{law}: TF" + (f" ({n} tasks)" if n else ""))
            ax[0, 2].plot(alpha, _arr(curves["gd"]), "--", color=colour, label=f"{law}: GD")
            ax[1, 2].plot(alpha, _arr(curves["tf"]) / _arr(curves["gd"]), "-", color=colour, label=f"{law}: TF / GD")
    else:
        for name, (label, ls) in styles.items():
            ax[0, 2].plot(alpha, _arr(o["laws"][name]), ls, label=label)
            ax[1, 2].plot(alpha, _arr(o["laws"][name]) / _arr(o["laws"]["gd"]), ls, label=label)
    ax[0, 2].set(xlabel="alpha", ylabel="loss", yscale="log", title="normalised exp / normal / Laplace inputs, scale alpha")
    ax[1, 2].set(xlabel="alpha", ylabel="loss / GD's loss")
    for name, (label, ls) in styles.items():
        ax[0, 3].plot(o["k"], _arr(o["distractors"][name]), ls, marker="o", label=label)
        ax[1, 3].plot(o["k"], _arr(o["distractors"][name]) / _arr(o["distractors"]["gd"]), ls, marker="o", label=label)
    ax[0, 3].set(xlabel="distractor labels k", ylabel="loss", title="distractor labels")
    ax[1, 3].set(xlabel="distractor labels k", ylabel="loss / GD's loss")
    for a in ax.flat:
        a.legend(fontsize=7)
    return _save(r, fig, out_dir, "fig6", f"out-of-distribution losses ({_seeds(r)})")


def plot_fig16(r, out_dir):
    plt = _plt()
    names = list(r["final"])
    sizes = [r["final"][n]["tasks"] for n in names]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    for n in names:
        c = r["curves"][n]
        ax[0].plot(_arr(c["step"]), _arr(c["loss_tf"]), label=f"B = {r['final'][n]['tasks']} training tasks")
        ax[1].plot(_arr(c["step"]), _arr(c["model_cos"]), label=f"B = {r['final'][n]['tasks']}")
    ax[0].axhline(r["final"][names[0]]["loss_gd"], color="k", ls="--", label="1 step GD")
    ax[0].set(xlabel="training step", ylabel="evaluation loss", yscale="log", title="loss on fresh tasks")
    ax[1].set(xlabel="training step", ylabel="cosine similarity", title="model cos (TF vs GD)", ylim=(-0.05, 1.05))
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=8)
    ax[2].plot(sizes, [r["final"][n]["loss_tf"] for n in names], "o-", label="TF, fresh tasks")
    ax[2].plot(sizes, [r["final"][n]["loss_train_tf"] for n in names], "s--", label="TF, training set")
    ax[2].plot(sizes, [r["final"][n]["loss_gd"] for n in names], "k:", label="GD, fresh tasks")
    ax[2].set(xlabel="training-set size B", ylabel="loss", xscale="log", yscale="log", title="final")
    ax[2].legend(fontsize=8)
    return _save(r, fig, out_dir, "fig16", f"fixed training sets ({_seeds(r)})")


def plot_diverged(r, out_dir):
    """A diverged run: whatever curves it recorded before it stopped, and where it stopped."""
    plt = _plt()
    d, c = r["diverged"], r.get("curves") or {}
    fig, ax = plt.subplots(1, 1, figsize=(6.5, 4), layout="constrained")
    drawn = [k for k in ("loss_tf", "train_loss") if k in c and np.isfinite(_arr(c[k])).any()]
    for k in drawn:
        ax.plot(_arr(c["step"]), np.abs(_arr(c[k])), label=k)
    ax.axvline(d["step"], color="tab:red", ls="--", label=f"diverged: {d.get('reason', d['tensor'])}")
    ax.set(xlabel="training step", ylabel="loss", yscale="log" if drawn else "linear")
    if not drawn:
        ax.text(0.5, 0.5, "no evaluation recorded before the divergence", ha="center",
                transform=ax.transAxes)
    ax.legend(fontsize=8)
    return _save(r, fig, out_dir, r["experiment"], f"DIVERGED at step {d['step']} ({d['model_tag']}, seed "
                 f"{d['seed']}); last good checkpoint at step {d['checkpoint_step']}")


def plot_results(results, out_dir):
    name = results["experiment"]
    if name not in PLOTTERS:
        PLOTTERS.update(_more_plotters())
    if name not in PLOTTERS:
        raise ValueError(f"results['experiment']: no plot for {name!r}; known: {sorted(PLOTTERS)}")
    if results.get("status", "complete") == "diverged":
        return plot_diverged(results, out_dir)
    return PLOTTERS[name](results, out_dir)


def _imported(module, name):
    """Plotter `name` of another plots module, imported when used (those modules read this one's
    helpers): iclgd.plots_fu (the second paper), iclgd.plots_ood (fig7, fig8)."""
    def plot(r, out_dir):
        import importlib
        return getattr(importlib.import_module(module), name)(r, out_dir)
    return plot


PLOTTERS = {"fig2": plot_fig2, "fig1": plot_fig1, "fig3": plot_fig3, "fig6": plot_fig6, "fig16": plot_fig16,
            "fig7": _imported("iclgd.plots_ood", "plot_fig7"), "fig8": _imported("iclgd.plots_ood", "plot_fig8"),
            "fu-algorithms": _imported("iclgd.plots_fu", "plot_fu_algorithms"),
            "theory-preconditioner": _imported("iclgd.plots_fu", "plot_theory_preconditioner"),
            "fu-lsa": _imported("iclgd.plots_fu", "plot_fu_lsa"), "fu-gpt2": _imported("iclgd.plots_fu", "plot_fu_gpt2")}


def _more_plotters():
    from iclgd import plots_more
    return plots_more.PLOTTERS
