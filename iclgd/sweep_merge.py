"""sweep.json: the runs of a sweep merged, per point, across seeds; its summary and its figure.

sweep.json keys: experiment, figure, seeds, grid ([[key, [values]], ...]), overrides, backend, quick,
status ("complete"; "incomplete" when a job failed or diverged; "interrupted"), versions, runtime_s
(the invocation that wrote it), notes, and points: one entry per grid point with
    name, folder, settings {key: value}, seeds (those with complete results), jobs {seed: {status,
    attempts, error}}, and, over those seeds,
    final        the tree of each run's `final`, every number replaced by {mean, std, per_seed}
                 (a list of numbers, such as the losses per layer, element-wise)
    curves       the tree of each run's `curves`, every curve by {mean, std, per_seed} (lists,
                 element-wise), "step" kept as it is
    ood          (fig6, fig7, fig8) the tree of each run's `ood` in the same way, its axes (alpha,
                 k, law_tasks) kept as they are
    tail_median  per curve (those in `final` too, as fig3's GD++ fit), the median over its last
                 TAIL_FRACTION of evaluations (a statistic that does not depend on where a noisy
                 curve happens to end), as {mean, std, per_seed}
std is the sample standard deviation (ddof 1; null for one seed); a mean or std is null where a
seed's value is null (not finite).
"""
import math
import os

import numpy as np

from iclgd.results import RESULTS_FILE, read_results

SWEEP_FILE = "sweep.json"
TAIL_FRACTION = 0.1
MERGED = ("final", "curves", "ood")  # the trees of results.json merged across seeds, where every run has one
AXES = ("step", "alpha", "k", "law_tasks")  # what curves run over: kept when equal across seeds, else listed


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stats(values):
    """{mean, std, per_seed} of numbers (None where any is None or not finite)."""
    ok = all(_is_number(v) and math.isfinite(v) for v in values)
    arr = np.array(values, dtype=float) if ok else None
    return {"mean": float(arr.mean()) if ok else None,
            "std": float(arr.std(ddof=1)) if ok and len(values) > 1 else None,
            "per_seed": list(values)}


def _curve_stats(curves):
    """{mean, std, per_seed} element-wise over equally long curves (lists of numbers or None)."""
    columns = [_stats([c[i] for c in curves]) for i in range(len(curves[0]))]
    return {"mean": [s["mean"] for s in columns], "std": [s["std"] for s in columns], "per_seed": list(curves)}


def _numeric_list(v):
    return isinstance(v, list) and all(x is None or _is_number(x) for x in v) and v


def stats_tree(trees):
    """The tree of `trees` (one per seed, shaped alike) with each number, and each list of numbers
    element-wise (a curve, the losses per layer), replaced by its stats across them; the axes (a
    tree under a key of AXES) and other leaves kept when equal across seeds, else listed."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: (_kept(v) if k in AXES else stats_tree(v))
                for k in first if all(k in t for t in trees) for v in [[t[k] for t in trees]]}
    if _numeric_list(first) and all(_numeric_list(t) and len(t) == len(first) for t in trees):
        return _curve_stats(trees)
    if _is_number(first) or (first is None and any(_is_number(t) for t in trees)):
        return _stats(trees)
    return _kept(trees)


def _kept(values):
    return values[0] if all(v == values[0] for v in values) else {"per_seed": list(values)}


def tail_median(curve, fraction=TAIL_FRACTION):
    """The median of the last ceil(fraction * len) entries of a curve; None if any is None."""
    tail = curve[len(curve) - max(1, math.ceil(fraction * len(curve))):]
    return None if any(v is None for v in tail) else float(np.median(tail))


def tail_medians(tree):
    """The tail median of every list of numbers in a dict that has a "step" list (the curves, and
    curves kept in `final` such as fig3's GD++ fit), in the tree's shape; other leaves dropped."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            sub = tail_medians(v)
            if sub:
                out[k] = sub
        elif k != "step" and "step" in tree and _numeric_list(v):
            out[k] = tail_median(v)
    return out


def _merged(a, b):
    """Two trees of dicts merged (b's leaves where both have one)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merged(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def merge_point(name, sweep_dir, settings, seeds, jobs):
    """One point's entry of sweep.json from the results.json of its complete seeds, read from
    SWEEP_DIR/NAME/seedS ({seed: job outcome dict} in `jobs`)."""
    runs = {s: read_results(os.path.join(sweep_dir, name, f"seed{s}")) for s in seeds
            if jobs[s]["status"] in ("complete", "skipped")}
    entry = {"name": name, "folder": name, "settings": dict(settings), "seeds": sorted(runs), "jobs": jobs}
    if runs:
        ordered = [runs[s] for s in sorted(runs)]
        for key in MERGED:
            if all(key in r for r in ordered):
                entry[key] = stats_tree([r[key] for r in ordered])
        entry["tail_median"] = stats_tree([_merged(tail_medians(r["curves"]), tail_medians(r["final"]))
                                           for r in ordered])
    return entry


def merge(header, points):
    """sweep.json's content: `header` (experiment ... runtime_s) and the points
    [(name, sweep folder, settings, seeds, {seed: job outcome dict})]."""
    merged = [merge_point(*p) for p in points]
    statuses = [j["status"] for p in merged for j in p["jobs"].values()]
    status = ("interrupted" if any(s in ("interrupted", "pending") for s in statuses) else
              "complete" if all(s in ("complete", "skipped") for s in statuses) else "incomplete")
    return {**header, "status": status, "points": merged,
            "notes": f"per point over its complete seeds: final and curves as mean, std (ddof 1) and "
                     f"per_seed; tail_median: the median of each curve over its last {TAIL_FRACTION:.0%} "
                     f"of evaluations. Each run is in POINT/seedS/{RESULTS_FILE}."}


SWEEP_KEYS = ("experiment", "seeds", "status", "points")


def read_sweep(folder):
    """DIR/sweep.json as a dict; ValueError naming the file when it is absent, not JSON or lacks a key."""
    import json
    path = os.path.join(folder, SWEEP_FILE)
    try:
        with open(path) as f:
            sweep = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"DIR: expected a folder holding {SWEEP_FILE}, found none at {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from None
    missing = [k for k in SWEEP_KEYS if not isinstance(sweep, dict) or k not in sweep]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; expected a file written by `iclgd sweep`")
    return sweep


def is_sweep_folder(folder):
    """True for a folder holding sweep.json and no results.json (a sweep's, not a run's)."""
    return os.path.isfile(os.path.join(folder, SWEEP_FILE)) and not os.path.isfile(os.path.join(folder, RESULTS_FILE))


def _fmt(stats, sign=1.0):
    if not isinstance(stats, dict) or stats.get("mean") is None:
        return "-"
    std = f" +- {stats['std']:.2g}" if stats.get("std") is not None else ""
    return f"{sign * stats['mean']:.4g}{std}"


def summary_lines(sweep):
    """Per point: each REFERENCE row of the experiment as mean +- std over seeds of its final value
    and, where the number has a curve, of that curve's tail median; the same for its baseline; and
    what the paper reports (SPEC 6)."""
    from iclgd.summary import REFERENCE
    rows = REFERENCE.get(sweep["experiment"], [])
    quick = " | QUICK: reduced settings, not the paper's" if sweep.get("quick") else ""
    lines = [f"sweep {sweep['experiment']} ({sweep.get('figure', '?')}) on {sweep.get('backend')}, "
             f"seeds {', '.join(map(str, sweep['seeds']))}; {len(sweep['points'])} point(s); "
             f"status {sweep['status']}{quick}; final: the value at the end, tail: the median over the "
             f"last {TAIL_FRACTION:.0%} of evaluations (mean +- std over seeds)"]
    for p in sweep["points"]:
        lines.append(f"{p['name']}: {len(p['seeds'])} of {len(p['jobs'])} seed(s) complete"
                     + "".join(f"; seed {s} {j['status']}{': ' + j['error'] if j.get('error') else ''}"
                               for s, j in p["jobs"].items() if j["status"] not in ("complete", "skipped")))
        final, tails = p.get("final") or {}, p.get("tail_median") or {}
        nested = final and all(isinstance(v, dict) and "per_seed" not in v for v in final.values())
        for group, values in (final.items() if nested else [(None, final)]):
            tail = tails.get(group, {}) if group else tails
            for label, key, base, paper in rows:
                if key not in values:
                    continue
                text = _both(values, tail, key)
                if base:
                    text += f" (baseline {_both(values, tail, base)}; paper: {paper})"
                else:
                    text += f" (paper: {paper})"
                lines.append(f"  {f'[{group}] ' if group else ''}{label}: {text}")
    return lines


def _both(values, tail, key):
    """'final M +- S, tail M +- S' of `key` ('-key': negated), the tail where a curve of that name
    is in `tail` or one level below it (fig3's GD++ fit curve `gdpp_fit.loss_gdpp`)."""
    sign, key = (-1.0, key[1:]) if key.startswith("-") else (1.0, key)
    text = f"final {_fmt(values.get(key), sign)}"
    found = tail.get(key) if isinstance(tail.get(key), dict) and "mean" in tail.get(key) else next(
        (v[key] for v in tail.values() if isinstance(v, dict) and isinstance(v.get(key), dict)
         and "mean" in v[key]), None)
    return text + (f", tail {_fmt(found, sign)}" if found is not None else "")


def plot_sweep(sweep, out_dir, max_panels=12):
    """DIR/sweep.png and .pdf: for every loss curve (per variant; not the per-layer ones) one panel,
    each point its mean over seeds with a band of +- one std, each seed thin, and the mean of each
    baseline the summary compares it with (GD, GD++) as a horizontal line; where the runs have
    out-of-distribution curves, one more panel per variant: every model's loss over the input
    scale, mean and band. At most max_panels panels. The paths."""
    from iclgd.plots import _arr, _plt, _save
    panels = []
    for p in sweep["points"]:
        for path, node in _curve_nodes(p.get("curves") or {}):
            if path[-1].startswith("loss") and "layer" not in path[-1] and path not in panels:
                panels.append(path)
    panels = panels[:max_panels] or [("loss",)]
    for p in sweep["points"]:  # and the out-of-distribution curves over the input scale (fig6, fig7, fig8)
        panels += [("ood", *path) for path, _ in _ood_groups(p.get("ood") or {}) if ("ood", *path) not in panels]
    panels = panels[:max_panels]
    plt = _plt()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), layout="constrained", squeeze=False)
    for ax, path in zip(axes.flat, panels):
        if path[0] == "ood":
            _plot_ood_panel(ax, sweep["points"], path[1:], _arr)
            continue
        for i, p in enumerate(sweep["points"]):
            node, steps = _lookup(p.get("curves") or {}, path)
            if node is None:
                continue
            x, mean = _arr(steps), _arr(node["mean"])
            std = _arr([0.0 if s is None else s for s in node["std"]])
            color = f"C{i % 10}"
            ax.plot(x, mean, color=color, label=f"{p['name']} ({len(p['seeds'])} seeds)")
            for j, base in enumerate(_baselines(sweep["experiment"], p.get("final") or {}, path)):
                ax.axhline(base[1], color=color, ls=("--", ":", "-.")[j % 3], lw=1,
                           label=f"{p['name']}: {base[0]} {base[1]:.4g}")
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.25, lw=0)
            for curve in node["per_seed"]:
                ax.plot(x, _arr(curve), color=color, lw=0.5, alpha=0.35)
        ax.set(xlabel="training step", ylabel=f"{path[-1]} (evaluation tasks)", title=" / ".join(path),
               yscale="log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    r = {"quick": sweep.get("quick")}
    return _save(r, fig, out_dir, "sweep", f"{sweep['experiment']} over seeds "
                 f"{', '.join(map(str, sweep['seeds']))}: mean, +- 1 std band, each seed thin")


OOD_STYLES = {"tf": "-", "gd": "--", "gdpp": ":", "interp": "-."}


def _ood_groups(ood):
    """[(path, tree)] of the trees in a point's `ood` that hold curves over alpha: the top level
    (fig6) or one per variant (fig7, fig8)."""
    if "alpha" in ood:
        return [((), ood)]
    return [((k,), v) for k, v in ood.items() if isinstance(v, dict) and "alpha" in v]


def _plot_ood_panel(ax, points, path, _arr):
    """One panel: each point's models (TF, GD, GD++, ...) over the input scale, mean with a band of
    +- one std over seeds."""
    for i, p in enumerate(points):
        group = dict(_ood_groups(p.get("ood") or {})).get(tuple(path))
        if not group or "input" not in group:
            continue
        x = _arr(group["alpha"]["input"])
        for model, node in group["input"].items():
            mean = _arr(node["mean"])
            std = _arr([0.0 if v is None else v for v in node["std"]])
            ax.plot(x, mean, OOD_STYLES.get(model, "-"), color=f"C{i % 10}", label=f"{p['name']}: {model}")
            ax.fill_between(x, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2, lw=0)
    ax.axvline(1.0, color="gray", lw=0.6, ls=":")
    ax.set(xlabel="input scale alpha (x -> alpha x)", ylabel="loss (evaluation tasks)", yscale="log",
           title=" / ".join(["ood", *path, "input"]))
    ax.legend(fontsize=7)


def _baselines(experiment, final, path):
    """[(key, mean)] of the baselines REFERENCE names for the curve at `path` (per variant)."""
    from iclgd.summary import REFERENCE
    group = final
    for k in path[:-1]:
        group = group.get(k, {}) if isinstance(group, dict) else {}
    out = []
    for _, key, base, _ in REFERENCE.get(experiment, []):
        node = group.get(base) if key == path[-1] and base and not base.startswith("-") else None
        if isinstance(node, dict) and node.get("mean") is not None and (base, node["mean"]) not in out:
            out.append((base, node["mean"]))
    return out


def _curve_nodes(tree, path=()):
    for k, v in tree.items():
        if isinstance(v, dict) and "mean" in v and isinstance(v["mean"], list):
            yield path + (k,), v
        elif isinstance(v, dict):
            yield from _curve_nodes(v, path + (k,))


def _lookup(tree, path):
    """(the curve stats node at `path`, the step list beside it), or (None, None)."""
    for k in path[:-1]:
        tree = tree.get(k) if isinstance(tree, dict) else None
    if not isinstance(tree, dict) or path[-1] not in tree or "step" not in tree:
        return None, None
    return tree[path[-1]], tree["step"]
