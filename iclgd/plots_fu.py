"""Figures of the second-order paper's experiments (fu-algorithms, theory-preconditioner, fu-lsa, fu-gpt2),
drawn from results.json alone; registered in iclgd.plots.PLOTTERS."""
import numpy as np

from iclgd import plots  # its helpers, looked up at call time (tests wrap plots._save)

CURVE_STYLE = {"least_squares": "k-", "averaging": "c:", "3nn": "y-.", "online_gd": "m--",
               "online_gd_normalised": "m:"}


def _sime_map(ax, matrix, cols, rows, xlabel, ylabel, title, best=None):
    """A SimE heatmap: rows x cols, labelled by their grid values, the best column per row marked."""
    m = np.asarray(matrix, dtype=float)
    im = ax.imshow(m, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=6, rotation=90)
    step = max(1, len(rows) // 12)
    ax.set_yticks(range(0, len(rows), step), [str(r) for r in rows[::step]], fontsize=6)
    if best is not None:
        ax.plot([list(cols).index(b) for b in best], range(len(rows)), "r.", ms=4, label="best match")
        ax.legend(fontsize=6, loc="lower right")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, label="SimE")


def plot_fu_algorithms(r, out_dir):
    plt = plots._plt()
    g, families = r["grids"], list(r["final"])
    fig, ax = plt.subplots(len(families), 3, figsize=(17, 4.6 * len(families)), squeeze=False,
                           layout="constrained")
    for i, fam in enumerate(families):
        f = r["final"][fam]
        _sime_map(ax[i, 0], f["heatmap_newton_gd_log"], g["gd_log"], g["newton_k"], "GD steps t",
                  "Newton iterations k", f"{fam}: SimE, Newton k x GD t (2^j grid)", f["best_gd_t_for_newton_k"])
        _sime_map(ax[i, 1], f["heatmap_newton_gd_linear"], g["gd_linear"], g["newton_k"], "GD steps t",
                  "Newton iterations k", f"{fam}: SimE, Newton k x GD t (linear grid)",
                  f["best_gd_t_for_newton_k_linear"])
        a = ax[i, 2]
        n = np.array(g["examples"])
        for name, err in f["error_vs_examples"].items():
            style = CURVE_STYLE.get(name, "-" if name.startswith("newton") else "--")
            a.plot(n, plots._arr(err), style, lw=1, label=name)
        a.set_ylim(bottom=1e-6)  # least squares reaches rounding (1e-30) once n >= d
        a.set(xlabel="in-context examples", ylabel="squared error / d", yscale="log",
              title=f"{fam}: error vs examples ({f['prompts'] - f['gd_diverged_prompts']} prompts)")
        a.legend(fontsize=6, ncol=2)
    return plots._save(r, fig, out_dir, "fu-algorithms", "Iterative Newton vs GD and the classical learners")


def plot_theory_preconditioner(r, out_dir):
    plt = plots._plt()
    f, c = r["final"], r["curves"]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2), layout="constrained")
    ax[0].plot(plots._arr(c["step"]), plots._arr(c["loss_tf"]), label="trained LSA")
    ax[0].axhline(f["risk_closed_form"], color="k", ls="--", label=f"closed form ({f['risk_closed_form']:.4f})")
    ax[0].set(xlabel="training step", ylabel="loss", yscale="log", title="loss on the evaluation tasks")
    ax[0].legend(fontsize=8)
    learned, theory = np.asarray(f["preconditioner_learned"]), np.asarray(f["preconditioner_theory"])
    dims = np.arange(1, len(theory) + 1)
    ax[1].plot(dims, np.diag(theory), "ko--", label="Gamma^-1 (theory)")
    ax[1].plot(dims, np.diag(learned), "r.", ms=10, label="learned -N (W_v W_p)[-1,-1] (W_q W_k^T)[:d,:d]")
    ax[1].set(xlabel="input dimension j", ylabel="diagonal entry", title="preconditioner diagonal")
    ax[1].legend(fontsize=7)
    lim = float(np.max(np.abs(learned - theory))) or 1.0
    im = ax[2].imshow(learned - theory, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[2].set(xlabel="column", ylabel="row", title=f"learned - Gamma^-1 (rel. Frobenius error "
                                                    f"{f['preconditioner_rel_error']:.3f})")
    fig.colorbar(im, ax=ax[2], fraction=0.046)
    return plots._save(r, fig, out_dir, "theory-preconditioner",
                 f"one LSA layer on x ~ N(0, Lambda) learns Gamma^-1 ({plots._seeds(r)})")


def plot_fu_lsa(r, out_dir):
    plt = plots._plt()
    names = list(r["final"])
    families = sorted({r["final"][n]["family"] for n in names}, key=lambda s: s != "isotropic")
    fig, ax = plt.subplots(len(families), 4, figsize=(20, 4.4 * len(families)), squeeze=False,
                           layout="constrained")
    for i, fam in enumerate(families):
        mine = [n for n in names if r["final"][n]["family"] == fam]
        a = ax[i, 0]
        for n in mine:
            f = r["final"][n]
            a.plot(np.arange(1, f["layers"] + 1), plots._arr(f["loss_readout_layers"]),
                   "o-" if f["tied"] else "s--", ms=3, lw=1, label=n.split("_")[0])
        a.set(xlabel="layer", ylabel="squared error / d (all positions)", yscale="log",
              title=f"{fam}: read-out error after each layer", xticks=_layer_ticks(r, mine))
        a.legend(fontsize=6, ncol=2)
        deepest = {tied: max((n for n in mine if r["final"][n]["tied"] == tied),
                             key=lambda n: r["final"][n]["layers"], default=None) for tied in (False, True)}
        for j, key, label in ((1, "best_newton_k", "best Newton k"), (2, "best_gd_t", "best GD t")):
            a = ax[i, j]
            for tied, n in deepest.items():
                if n is None:
                    continue
                f = r["final"][n]
                layers = np.arange(1, f["layers"] + 1)
                a.plot(layers, f[key], "o-" if tied else "s--", label=f"{n.split('_')[0]}: probe")
                a.plot(layers, f[key + "_readout"], "x:", label=f"{n.split('_')[0]}: read-out")
            a.set(xlabel="layer", ylabel=label, title=f"{fam}: {label} per layer (SimE)",
                  yscale="log" if key == "best_gd_t" else "linear", xticks=_layer_ticks(r, mine))
            a.legend(fontsize=6)
        a = ax[i, 3]
        for tied, n in deepest.items():
            if n is None:
                continue
            f = r["final"][n]
            layers = np.arange(1, f["layers"] + 1)
            a.plot(layers, f["best_newton_sime"], "o-", label=f"{n.split('_')[0]}: Newton")
            a.plot(layers, f["best_gd_sime"], "s--", label=f"{n.split('_')[0]}: GD")
        a.set(xlabel="layer", ylabel="SimE of the best match", title=f"{fam}: similarity of the best match",
              xticks=_layer_ticks(r, mine))
        a.legend(fontsize=6)
    return plots._save(r, fig, out_dir, "fu-lsa", f"deep and weight-tied LSA on Gaussian data, matched layer by "
                                            f"layer ({plots._seeds(r)})")


def _layer_ticks(r, names):
    return np.arange(1, max(r["final"][n]["layers"] for n in names) + 1)


def plot_fu_gpt2(r, out_dir):
    plt = plots._plt()
    g, families = r["grids"], list(r["final"])
    fig, ax = plt.subplots(len(families), 5, figsize=(24, 4.4 * len(families)), squeeze=False,
                           layout="constrained")
    for i, fam in enumerate(families):
        f, c = r["final"][fam], r["curves"][fam]
        layers = list(range(1, f["layers"] + 1))
        a = ax[i, 0]
        a.plot(plots._arr(c["step"]), plots._arr(c["loss_tf"]), label="all positions")
        a.plot(plots._arr(c["step"]), plots._arr(c["loss_tf_last"]), label="last position")
        a.set(xlabel="training step", ylabel="squared error / d", yscale="log", title=f"{fam}: held-out loss")
        a.legend(fontsize=7)
        a = ax[i, 1]
        n = np.array(g["examples"])
        cmap = plt.get_cmap("viridis")
        probes = np.asarray(f["loss_probe_positions"], dtype=float)  # (L + 1, n)
        for l in range(1, len(probes)):
            a.plot(n, probes[l], color=cmap(l / len(probes)), lw=1, label=f"probe, block {l}")
        a.plot(n, plots._arr(f["loss_model_positions"]), "r--", lw=1.5, label="model read-out")
        a.plot(n, plots._arr(f["loss_least_squares_positions"]), "k:", lw=1.5, label="least squares")
        a.plot(n, plots._arr(f["loss_gd_positions"][-1]), "m-.", lw=1, label=f"GD t = {g['gd_log'][-1]}")
        a.set_ylim(bottom=1e-4)
        a.set(xlabel="in-context examples", ylabel="squared error / d", yscale="log",
              title=f"{fam}: error vs examples, per layer")
        a.legend(fontsize=6, ncol=2)
        _sime_map(ax[i, 2], f["heatmap_newton"], g["newton_k"], layers, "Newton iterations k", "block",
                  f"{fam}: SimE, block x Newton k", f["best_newton_k"])
        _sime_map(ax[i, 3], f["heatmap_gd_log"], g["gd_log"], layers, "GD steps t", "block",
                  f"{fam}: SimE, block x GD t", f["best_gd_t"])
        a = ax[i, 4]
        a.plot(layers, f["best_newton_k"], "o-", label=f"best Newton k (slope {f['newton_k_per_layer']:.2f}/block)")
        a.plot(layers, np.log2(np.maximum(f["best_gd_t"], 1)), "s--",
               label=f"log2 best GD t (slope {f['gd_log2_t_per_layer']:.2f}/block)")
        a.set(xlabel="block", ylabel="k, or log2 t", title=f"{fam}: best matches per block", xticks=layers)
        a.legend(fontsize=7)
    return plots._save(r, fig, out_dir, "fu-gpt2", f"GPT-2 style model trained from scratch, matched block by "
                                              f"block ({plots._seeds(r)})")
