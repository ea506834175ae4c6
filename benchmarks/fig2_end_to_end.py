"""The README's main job end to end: `iclgd run fig2` timed cold, warm and on the oracle, with the
final numbers of the three runs compared.

    python benchmarks/fig2_end_to_end.py --out benchmarks/results/fig2_end_to_end.json

- cold: a fresh copy of the package's sources (refimpl/, kernels/, iclgd/, no __pycache__ folder,
  so no Numba cache and no bytecode of this package) runs `iclgd run fig2` on its default backend,
  numba-cpu, compiling its kernels. The installed libraries keep their bytecode, as after `pip
  install`.
- warm: the same command again in the same copy (Numba's cache now filled).
- oracle: `iclgd run fig2 --backend numpy` (skip with `--no-oracle`).

Each run is a subprocess that imports the copy (checked), timed by wall clock around it; its
results.json gives `runtime_s` too (the run without interpreter start-up and imports). Every
number of `final` must agree with the oracle's to `--rtol` (default 1e-10, relative, plus 1e-12
absolute); the file records the largest deviation and the targets of the speed issue (warm <= 20 s,
cold <= 40 s) beside the measured times. Nothing is asserted: the exit status is 1 only when a
run fails or the numbers disagree.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from iclgd.versions import versions  # noqa: E402
from train_step import cpu_model  # noqa: E402  (benchmarks/ is this script's folder)

PACKAGES = ("refimpl", "kernels", "iclgd")
TARGETS_S = {"warm": 20.0, "cold": 40.0}
# runs `iclgd` from the copy given as argv[1] and refuses to run from anywhere else
LAUNCH = ("import sys, os; root = sys.argv.pop(1); sys.path.insert(0, root); import iclgd, kernels, refimpl; "
          "bad = [m.__name__ for m in (iclgd, kernels, refimpl) if not m.__file__.startswith(root + os.sep)]; "
          "sys.exit('not the copy: ' + ', '.join(bad)) if bad else None; "
          "from iclgd.cli import main; sys.exit(main())")


def copy_sources(dest):
    """The package folders of this checkout into dest, without any __pycache__ (a fresh checkout)."""
    for name in PACKAGES:
        shutil.copytree(os.path.join(REPO, name), os.path.join(dest, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))


def timed_run(root, out, extra=(), env=None):
    """Wall seconds of `iclgd run fig2 --out OUT [extra]` from the copy at root, its results.json."""
    cmd = [sys.executable, "-c", LAUNCH, root, "run", "fig2", "--out", out, *extra]
    env = dict(os.environ if env is None else env)
    env.pop("NUMBA_CACHE_DIR", None)  # the cache beside the copy's sources: empty on the first run
    env["PYTHONPATH"] = root
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"iclgd run fig2 {' '.join(extra)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with open(os.path.join(out, "results.json")) as f:
        return wall, json.load(f), proc.stdout


def numbers(final):
    """The numeric entries of results['final'] (lists flattened with their index)."""
    out = {}
    for k, v in final.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            out.update({f"{k}[{i}]": float(x) for i, x in enumerate(v)})
    return out


def deviation(a, b, rtol):
    """(largest |a - b| / (1e-12 + rtol |b|) over b's keys, keys missing from a or not within)."""
    worst, bad = 0.0, []
    for k, vb in b.items():
        if k not in a:
            bad.append(k)
            continue
        ratio = abs(a[k] - vb) / (1e-12 + rtol * abs(vb))
        worst = max(worst, ratio)
        if ratio > 1:
            bad.append(k)
    return worst, bad


def parse_args(argv):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    ap.add_argument("--no-oracle", action="store_true", help="leave out the oracle's run (about two minutes)")
    ap.add_argument("--rtol", type=float, default=1e-10, help="relative tolerance against the oracle (1e-10)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    load_before = os.getloadavg()
    runs, finals, summary = {}, {}, ""
    with tempfile.TemporaryDirectory(prefix="iclgd-fig2-") as tmp:
        root = os.path.join(tmp, "checkout")
        copy_sources(root)
        plan = [("cold", ()), ("warm", ())] + ([] if args.no_oracle else [("oracle", ("--backend", "numpy"))])
        for name, extra in plan:
            wall, res, stdout = timed_run(root, os.path.join(tmp, name), extra)
            runs[name] = {"wall_s": wall, "runtime_s": res["runtime_s"], "backend": res["backend"],
                          "quick": res["quick"], "steps": res["config"]["train"]["steps"],
                          "load_avg_after": os.getloadavg()}
            if name in TARGETS_S:
                runs[name].update(target_s=TARGETS_S[name], within_target=wall <= TARGETS_S[name])
            finals[name] = numbers(res["final"])
            print(f"{name:6s} {res['backend']:9s} wall {wall:6.1f} s  (runtime_s {res['runtime_s']:6.1f} s)",
                  flush=True)
            if name == "warm":
                summary = stdout
    agreement = {}
    ok = True
    ref = "oracle" if "oracle" in finals else "cold"
    for name in finals:
        if name != ref:
            worst, bad = deviation(finals[name], finals[ref], args.rtol)
            agreement[f"{name}_vs_{ref}"] = {"worst_deviation_over_tolerance": worst, "disagreeing": bad,
                                            "numbers_compared": len(finals[ref])}
            ok &= not bad
            print(f"{name} vs {ref}: {len(finals[ref])} final numbers, worst |diff| / tolerance {worst:.3g}"
                  + (f"; DISAGREE: {', '.join(bad)}" if bad else ""))
    out = {
        "benchmark": "iclgd run fig2 end to end: cold (fresh sources, empty Numba cache), warm, oracle",
        "machine": {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1_5_15_before": load_before, "load_avg_1_5_15_after": os.getloadavg()},
        "versions": versions(),
        "tolerance": {"rtol": args.rtol, "atol": 1e-12},
        "runs": runs,
        "agreement": agreement,
        "final": finals,
        "summary_printed_by_the_warm_run": summary.splitlines()[-12:],
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
