"""Figures of the experiments beyond the linear-regression LSA runs of iclgd.plots: GD++ conditioning
(fig13), softmax attention (fig11, fig12) and LayerNorm (fig14), drawn from results.json alone.
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


PLOTTERS = {"fig13": plot_fig13}
