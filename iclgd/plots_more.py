"""Figures of the experiments beyond the linear-regression LSA runs of iclgd.plots: GD++ conditioning
(fig13), softmax attention (fig11, fig12), LayerNorm (fig14) and the copy layer (fig5), drawn from
results.json alone.
`PLOTTERS` maps an experiment to its plotter; iclgd.plots.plot_results dispatches to it.
"""
import numpy as np

from iclgd import plots as base


def plot_fig13(r, out_dir):
    plt = base._plt()
    c, f = r["curves"], r["final"]
    fig, ax = plt.subplots(1, 4, figsize=(19, 4.0), layout="constrained")
    lam = base._arr(c["map"]["lambda"])
    ax[0].plot(lam, lam, "k:", lw=0.8, label="identity")
    for g, values in zip(c["map"]["gamma"], c["map"]["f"]):
        opt = abs(g - f["gamma_opt"]) < 1e-9 * max(1.0, abs(g))
        ax[0].plot(lam, base._arr(values), "--" if opt else "-",
                   label=f"gamma {g:.3g}" + (" (optimum from the extremes)" if opt else ""))
    ax[0].set(xlabel="eigenvalue lambda of X^T X", ylabel="lambda (1 - gamma lambda)^2",
              title="eigenvalue map of one GD++ layer", ylim=(0, float(lam[-1]) * 1.05))
    ax[0].legend(fontsize=6)
    ax[1].plot(base._arr(c["bound"]["gamma"]), base._arr(c["bound"]["kappa"]), color="tab:blue")
    ax[1].axvline(f["gamma_opt"], color="k", ls="--",
                  label=f"optimum gamma {f['gamma_opt']:.3g}: kappa++ {f['kappa_bound_opt']:.3g}")
    ax[1].axhline(f["kappa_extremes"], color="tab:gray", ls=":",
                  label=f"no transform: {f['kappa_extremes']:.3g}")
    for name, gammas in r["gammas"].items():
        if gammas:
            k = f.get(f"kappa_bound_{name}")
            ax[1].axvline(gammas[0], color=None,
                          lw=0.8, ls=":", label=f"{name}'s first gamma {gammas[0]:.3g}: "
                          + (f"{k:.3g}" if k is not None else "inf (1/gamma inside the spectrum)"))
    ax[1].set(xlabel="gamma", ylabel="kappa++ = max f / min f", xscale="log", yscale="log",
              title="condition bound from the extreme eigenvalues")
    ax[1].legend(fontsize=6)
    edges = base._arr(c["hist"]["log10_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    fit = r["fit_task"]
    for a, key, title in ((ax[2], "eval", f"evaluation tasks, N = {r['config']['task']['num_context']}"),
                          (ax[3], "fitlaw", f"the gammas' training law, N = {fit['num_context']}")):
        suffix = "" if key == "eval" else "_fitlaw"
        for name, counts in c["hist"][key].items():
            if name != "before" and not name.endswith("_all"):
                continue  # the first transform alone is in results.json (NAME_1)
            med = f.get(f"kappa_median_{name}{suffix}")
            label = f"{name} (median {med:.3g})" if med is not None else name
            a.step(centres, counts, where="mid", lw=1.6 if name == "before" else 1.0,
                   color="k" if name == "before" else None, label=label)
        a.set(xlabel="log10 condition number of X^T X", ylabel="tasks", title=title)
        a.legend(fontsize=6)
    return base._save(r, fig, out_dir, "fig13", "how GD++ conditions X^T X (_1: first transform, _all: all)")


def _variant_curves(r, ax, refs_per_variant=False):
    """Loss, model cos, preds diff and model diff over training for every variant of r (fig12, fig14),
    with the variants' GD / GD++ losses as horizontal lines."""
    names = list(r["final"])
    colors = {}
    for n in names:
        c, f = r["curves"][n], r["final"][n]
        step = base._arr(c["step"])
        line, = ax[0].plot(step, base._arr(c["loss_tf"]), label=f"{n} (final {f['loss_tf']:.4f})")
        colors[n] = line.get_color()
        ax[1].plot(step, base._arr(c["model_cos"]), color=colors[n], label=f"{n} vs GD")
        if "model_cos_gdpp" in c:
            ax[1].plot(step, base._arr(c["model_cos_gdpp"]), color=colors[n], ls=":", label=f"{n} vs GD++")
        ax[2].plot(step, base._arr(c["preds_diff"]), color=colors[n], label=f"{n} vs GD")
        ax[3].plot(step, base._arr(c["model_diff"]), color=colors[n], label=f"{n} vs GD")
    drawn = set()
    for n in names:
        f = r["final"][n]
        for key, ls, label in (("loss_gd", "--", "GD"), ("loss_gdpp", "-.", "GD++")):
            tag = f.get("gd_label", label) if key == "loss_gd" else f.get("gdpp_label", label)
            if key in f and (tag, f[key]) not in drawn:
                drawn.add((tag, f[key]))
                ax[0].axhline(f[key], color=colors[n] if refs_per_variant else "k", ls=ls, lw=0.9,
                              label=f"{tag} ({f[key]:.4f})")
    ax[0].set(xlabel="training step", ylabel="loss on the evaluation tasks", title="loss", yscale="log")
    base._log_ticks(ax[0])
    ax[1].set(xlabel="training step", ylabel="cosine similarity", title="model cos", ylim=(-0.05, 1.05))
    ax[2].set(xlabel="training step", ylabel="mean |y_TF - y_GD|", title="preds diff", yscale="log")
    ax[3].set(xlabel="training step", ylabel="mean ||g_TF - g_GD||", title="model diff", yscale="log")
    for a in ax:
        a.legend(fontsize=6)


def plot_fig12(r, out_dir):
    plt = base._plt()
    fig, ax = plt.subplots(1, 4, figsize=(19, 4.0), layout="constrained")
    _variant_curves(r, ax)
    return base._save(r, fig, out_dir, "fig12", f"one softmax self-attention layer, 1 and 2 heads, vs GD and "
                      f"GD++ ({base._seeds(r)})")


def plot_fig11(r, out_dir):
    plt = base._plt()
    w, f = r["per_seed"][0]["weights"], r["final"]
    heads = w["scaled_W_KQ"]
    fig, ax = plt.subplots(1, len(heads) + 2, figsize=(4.6 * (len(heads) + 2), 4.0), layout="constrained")
    names = base._token_names(len(heads[0]))
    for h, m in enumerate(heads):
        base._heat(ax[h], m, f"head {h + 1}: W_KQ scaled by W_PV[-1,-1] (|off-diag| {f[f'offdiag_abs_head{h}']:.3g})",
                   names)
    base._heat(ax[len(heads)], w["scaled_W_KQ_sum"], f"sum of the heads (|off-diag| {f['offdiag_abs_sum']:.3g})", names)
    c = r["curves"]
    ax[-1].plot(base._arr(c["step"]), base._arr(c["loss_tf"]), label=f"2-head softmax (final {f['loss_tf']:.4f})")
    ax[-1].axhline(f["loss_gd"], color="k", ls="--", label=f"1 step GD ({f['loss_gd']:.4f})")
    ax[-1].set(xlabel="training step", ylabel="loss on the evaluation tasks", title="training", yscale="log")
    ax[-1].legend(fontsize=7)
    return base._save(r, fig, out_dir, "fig11", f"per-head products of the 2-head softmax layer ({base._seeds(r)}; "
                      f"off-diagonal of the sum / heads' mean {f['offdiag_cancellation']:.2f})")


def plot_fig14(r, out_dir):
    plt = base._plt()
    fig, ax = plt.subplots(1, 4, figsize=(19, 4.0), layout="constrained")
    _variant_curves(r, ax, refs_per_variant=True)
    names = ", ".join(f"{n}: {label}" for n, label in r.get("variants", {}).items())
    return base._save(r, fig, out_dir, "fig14", f"LayerNorm before LSA vs GD and GD++ ({names}; {base._seeds(r)})")


def plot_fig4(r, out_dir):
    plt = base._plt()
    c, f = r["curves"], r["final"]
    fig = plt.figure(figsize=(19, 8.0), layout="constrained")
    top = fig.subfigures(2, 1)
    ax = top[0].subplots(1, 3)
    for name, label, style in (("tf", "trained TF", "-"), ("mlpgd", "MLP + GD (fixed GD step)", "--")):
        ax[0].plot(base._arr(c[name]["step"]), base._arr(c[name]["loss"]), style,
                   label=f"{label}: final {f[name]['loss']:.5f}")
    ax[0].axhline(f["loss_zero"], color="tab:gray", ls="-.", label=f"zero prediction ({f['loss_zero']:.4f})")
    ax[0].set(xlabel="training step", ylabel="loss on the evaluation tasks", title="loss", yscale="log")
    ax[0].legend(fontsize=7)
    step = base._arr(c["tf"]["step"])
    ax[1].plot(step, base._arr(c["tf"]["partial_cos"]), label=f"partial cos (d y / d x_q): final {f['tf']['partial_cos']:.3f}")
    ax[1].set(xlabel="training step", ylabel="cosine similarity", title="TF vs MLP + GD: first-order term",
              ylim=(-1.05, 1.05))
    ax[1].legend(fontsize=7)
    for key, label in (("preds_diff", "preds diff"), ("partial_diff", "partial diff")):
        ax[2].plot(step, base._arr(c["tf"][key]), label=f"{label}: final {f['tf'][key]:.4f}")
    ax[2].set(xlabel="training step", ylabel="mean absolute / L2 difference", title="TF vs MLP + GD", yscale="log")
    ax[2].legend(fontsize=7)
    fn = r["per_seed"][0]["functions"]
    x = np.asarray(fn["x"], dtype=float)
    axf = top[1].subplots(1, len(fn["truth"]), sharey=True)
    for i, a in enumerate(np.atleast_1d(axf)):
        a.plot(x, fn["truth"][i], color="k", lw=1, label="truth")
        a.scatter(fn["context_x"][i], fn["context_y"][i], color="k", s=12, zorder=3, label="context")
        for name, colour in (("tf", "tab:blue"), ("mlpgd", "tab:orange")):
            a.plot(x, fn[name]["before"][i], ":", color=colour, label=f"{name} before the step")
            a.plot(x, fn[name]["after"][i], "-" if name == "tf" else "--", color=colour, label=f"{name} after")
        a.set(xlabel="x_q", ylabel="y (truth) / prediction",
              title=f"task {i}: a = {fn['amplitude'][i]:.2f}, rho = {fn['phase'][i]:.2f}")
    np.atleast_1d(axf)[0].legend(fontsize=7)
    return base._save(r, fig, out_dir, "fig4", f"sine regression: MLP front end + one LSA layer vs MLP + one GD step "
                      f"(eta {r.get('gd_eta')}; {base._seeds(r)}"
                      + ("; a and rho from one u, as the public code" if r["config"]["task"].get("coupled") else "")
                      + ")")


def plot_fig5(r, out_dir):
    plt = base._plt()
    c, f = r["curves"], r["final"]
    step = base._arr(c["step"])
    fig, ax = plt.subplots(1, 4, figsize=(19, 4.0), layout="constrained")
    ax[0].plot(step, base._arr(c["loss_tf"]), label=f"2-layer TF (final {f['loss_tf']:.4f})")
    ax[0].axhline(f["loss_gd"], color="k", ls="--", label=f"1 step GD ({f['loss_gd']:.4f})")
    ax[0].axhline(f["loss_zero"], color="tab:gray", ls="-.", label=f"zero prediction ({f['loss_zero']:.4f})")
    ax[0].set(xlabel="training step", ylabel="loss on the evaluation tasks", title="loss", yscale="log")
    ax[0].legend(fontsize=7)
    for key, label in (("copy_own", "token k (own)"), ("copy_next", "token k + 1 (next)"),
                       ("copy_other", "other tokens (mean)")):
        ax[1].plot(step, base._arr(c[key]), marker=".", label=f"{label}: final {f[key]:.3f}")
    ax[1].set(xlabel="training step", ylabel="norm of the batch-mean Jacobian",
              title="layer 0: d t(e_k) / d e_j (copy analysis)")
    ax[1].legend(fontsize=7)
    att = r["per_seed"][0]["attention"]
    for a, (name, kind) in zip(ax[2:], (("layer0", "softmax weights"), ("layer1", "linear scores Q K^T"))):
        m = np.asarray(att[name], dtype=float)[0]  # (T, N) of head 0
        lim = float(np.max(np.abs(m))) or 1.0
        im = a.imshow(m, cmap="RdBu_r" if kind.startswith("linear") else "viridis",
                      vmin=-lim if kind.startswith("linear") else 0, vmax=lim)
        a.set(xlabel="key token", ylabel="query token", title=f"{name}: mean {kind}")
        fig.colorbar(im, ax=a, fraction=0.046)
    return base._save(r, fig, out_dir, "fig5", f"copying on alternating tokens (encoding {r.get('layout', '?')}, "
                      f"{base._seeds(r)})")


def plot_fig15(r, out_dir):
    """One panel per heads variant (each seed's evaluation loss, one GD step's as a line), and the
    grokking block's training- and test-set losses for each seed that trained it."""
    plt = base._plt()
    heads = [n for n in r["final"] if n.startswith("heads")]
    grok = [s for s in r["per_seed"] if "grok" in s["curves"]]
    panels = len(heads) + (1 if grok else 0)
    fig, ax = plt.subplots(1, panels, figsize=(5.2 * panels, 3.9), layout="constrained", squeeze=False)
    ax = ax[0]
    gd = next(iter(r["final"].values()))["loss_gd"]
    for a, name in zip(ax, heads):
        for i, s in enumerate(r["per_seed"]):
            c, reached = s["curves"][name], s["steps_to_gd"][name]
            a.plot(base._arr(c["step"]), base._arr(c["loss_tf"]), color=f"C{i % 10}", lw=1,
                   label=f"seed {s['seed']}: " + (f"near GD at step {reached}" if reached is not None
                                                   else "never near GD"))
        a.axhline(gd, color="k", ls="--", lw=1, label=f"1 step GD {gd:.4f}")
        h = r["final"][name]["heads"]
        a.set(xlabel="training step", ylabel="evaluation loss", yscale="log",
              title=f"one LSA layer, {h} head{'s' if h > 1 else ''}, fresh tasks")
        a.legend(fontsize=6)
    if grok:
        a = ax[-1]
        for i, s in enumerate(grok):
            c = s["curves"]["grok"]
            a.plot(base._arr(c["step"]), base._arr(c["loss_test"]), color=f"C{i % 10}", lw=1.2,
                   label=f"seed {s['seed']}: test (fresh tasks)")
            a.plot(base._arr(c["step"]), base._arr(c["loss_train"]), color=f"C{i % 10}", lw=0.8, ls=":",
                   label=f"seed {s['seed']}: train ({s['final']['grok']['tasks']} fixed tasks)")
        a.axhline(gd, color="k", ls="--", lw=1, label=f"1 step GD {gd:.4f}")
        g = r["config"]["grok"]
        a.set(xlabel="training step", ylabel="loss", yscale="log",
              title=f"LSA + MLP block, lr {g['lr']:g}, batch {g['batch']}")
        a.legend(fontsize=6)
    return base._save(r, fig, out_dir, "fig15", f"phase transitions and grokking ({base._seeds(r)})")


PLOTTERS = {"fig4": plot_fig4, "fig15": plot_fig15, "fig5": plot_fig5, "fig11": plot_fig11, "fig12": plot_fig12, "fig13": plot_fig13, "fig14": plot_fig14}
