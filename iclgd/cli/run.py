"""`iclgd run EXPERIMENT`: train, evaluate, write DIR/results.json and the figure (PNG and PDF).

DIR (--out) defaults to runs/EXPERIMENT, a folder git ignores; the committed results/ are written
only when named. The run holds DIR's lock throughout and refuses a DIR holding another experiment's
or another config's results, or checkpoints it was not asked to resume (iclgd/rundir.py; --force
overrides). Ctrl-C stops with the last checkpoints named and the command that resumes them (exit
130); a divergence writes results.json with "status": "diverged" (exit 1).
"""
import os
import shlex
import sys

from kernels import DEFAULT_BACKEND


def add_arguments(parser):
    parser.add_argument("experiment", help="experiment name (see `iclgd list`)")
    parser.add_argument("--out", default=None,
                        help="output folder (default runs/EXPERIMENT; the committed results/EXPERIMENT "
                             "only when named)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds: 0 .. K-1 (default 1)")
    from kernels import backend_names
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=backend_names(), metavar="NAME",
                        help=f"backend for training and evaluation: {', '.join(backend_names())} (default "
                             f"{DEFAULT_BACKEND}; numpy is the float64 oracle)")
    parser.add_argument("--quick", action="store_true", help="small settings that finish in seconds")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints")
    parser.add_argument("--force", action="store_true",
                        help="overwrite DIR's results of another experiment or config, and delete its "
                             "checkpoints when not resuming")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. train.steps=1500 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config(experiment, quick, overrides):
    """The experiment's Config with its preset's overrides (an experiment with PRESETS, when
    --set preset=NAME names one), then the --quick overrides, then the --set overrides, applied."""
    from refimpl.config import apply_overrides
    from iclgd.experiments import get_experiment
    mod = get_experiment(experiment)
    cfg = mod.Config()
    presets = getattr(mod, "PRESETS", None)
    named = [item.split("=", 1)[1].strip() for item in overrides
             if "=" in item and item.split("=", 1)[0].strip() == "preset"]
    if presets is not None and named:
        if named[-1] not in presets:
            raise ValueError(f"preset: expected one of {tuple(presets)}, got {named[-1]!r}")
        cfg = apply_overrides(cfg, {**presets[named[-1]], "preset": named[-1]})
    if quick:
        cfg = apply_overrides(cfg, mod.QUICK)
    return mod, apply_overrides(cfg, overrides)


def resume_command(args, out):
    """The command line that continues this run from its checkpoints."""
    words = ["iclgd", "run", args.experiment, "--out", out, "--resume"]
    if args.seeds != 1:
        words += ["--seeds", str(args.seeds)]
    if args.backend != DEFAULT_BACKEND:
        words += ["--backend", args.backend]
    if args.quick:
        words.append("--quick")
    for item in args.overrides:
        words += ["--set", item]
    return " ".join(shlex.quote(w) for w in words)


def announce_compilation(backend):
    """A compiling backend (numba-cpu) whose kernels are not cached yet compiles them on first use:
    say so before the run seems to stall."""
    to_compile = getattr(backend, "kernels_to_compile", None)
    missing = to_compile() if to_compile is not None else []
    if missing:
        print(f"{backend.name}: {len(missing)} kernels are not cached yet and are compiled on first use, once "
              f"(about a minute of CPU time); later runs load them from Numba's cache", file=sys.stderr, flush=True)


def run(args):
    from iclgd import rundir
    if args.seeds < 1:
        raise ValueError(f"--seeds: expected an integer >= 1, got {args.seeds}")
    mod, cfg = resolve_config(args.experiment, args.quick, args.overrides)
    out = args.out or rundir.default_out(args.experiment)
    try:
        results = run_in_folder(args.experiment, mod, cfg, list(range(args.seeds)), args.backend, out,
                                quick=args.quick, resume=args.resume, force=args.force,
                                progress=not args.no_progress, verbose=True)
    except KeyboardInterrupt:
        saved = rundir.last_checkpoints(out) or "none yet"
        print(f"iclgd run: interrupted; checkpoints in {os.path.join(out, 'checkpoints')}: {saved}; "
              f"continue with: {resume_command(args, out)}", file=sys.stderr)
        return 130
    return 0 if results["status"] == "complete" else 1


def run_in_folder(experiment, mod, cfg, seeds, backend_name, out, quick=False, resume=False, force=False,
                  progress=True, verbose=False, figure=True):
    """One run into folder `out` under its lock (refusing a folder holding other work, as `iclgd run`
    does): train and evaluate `seeds`, write results.json and (if `figure`) the figure. The results
    dict, whose status is "complete" or "diverged". `iclgd run` and every run of `iclgd sweep` go
    through here."""
    from kernels import get_backend
    from refimpl.config import config_to_dict
    from iclgd import rundir
    backend = get_backend(backend_name)
    with rundir.locked(out):
        rundir.check_out(out, experiment, config_to_dict(cfg), resume, force)
        announce_compilation(backend)
        return _train_and_write(experiment, mod, cfg, seeds, backend_name, backend, out, quick, resume,
                                progress, verbose, figure)


def _train_and_write(experiment, mod, cfg, seeds, backend_name, backend, out, quick, resume, progress, verbose,
                     figure):
    from iclgd.experiments import EXPERIMENTS
    from iclgd.train import Diverged
    from iclgd.versions import versions
    from refimpl.config import config_to_dict
    header = {"experiment": experiment, "figure": EXPERIMENTS[experiment][1],
              "config": config_to_dict(cfg), "seeds": list(seeds), "backend": backend_name,
              "versions": versions(), "quick": bool(quick)}
    try:
        results = mod.run(cfg, list(seeds), backend, out, resume=resume, progress=progress)
        results.update({**header, "status": "complete"})
    except Diverged as e:
        results = diverged_results(header, e)
        if verbose:
            print(f"iclgd run: {e}", file=sys.stderr)
    paths = write_and_plot(out, results, figure)
    if verbose:
        for p in paths:
            print(f"wrote {p}")
        from iclgd.summary import summary_lines
        print("\n".join(summary_lines(results)))
    return results


def diverged_results(header, e):
    """results.json of a run stopped by a divergence: where, what, and the curves up to there."""
    return {**header, "status": "diverged",
            "diverged": {"step": e.step, "tensor": e.tensor, "reason": e.reason, "model_tag": e.model_tag,
                         "seed": e.seed, "checkpoint": e.checkpoint, "checkpoint_step": e.checkpoint_step},
            "curves": e.curves, "final": {}, "per_seed": [], "steps_run": e.step, "runtime_s": None,
            "notes": "the run stopped at a non-finite value; final and per_seed are empty"}


def write_and_plot(out, results, figure=True):
    """Write results.json and (if `figure`) the figure; a diverged run never replaces complete
    results: it is written beside them as results.diverged.json, unplotted. The paths written."""
    from iclgd.plots import plot_results
    from iclgd.results import RESULTS_FILE, read_status, write_results
    if results["status"] != "complete" and read_status(os.path.join(out, RESULTS_FILE)) == "complete":
        return [write_results(out, results, name="results.diverged.json")]
    return [write_results(out, results), *(plot_results(results, out) if figure else [])]
