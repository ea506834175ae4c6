"""`iclgd run EXPERIMENT`: train, evaluate, write DIR/results.json and the figure (PNG and PDF)."""
import os


def add_arguments(parser):
    parser.add_argument("experiment", help="experiment name (see `iclgd list`)")
    parser.add_argument("--out", default=None, help="output folder (default results/EXPERIMENT)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds: 0 .. K-1 (default 1)")
    from kernels import backend_names
    parser.add_argument("--backend", default="numpy", choices=backend_names(), metavar="NAME",
                        help=f"training backend: {', '.join(backend_names())} (default numpy)")
    parser.add_argument("--quick", action="store_true", help="small settings that finish in seconds")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. train.steps=1500 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config(experiment, quick, overrides):
    """The experiment's Config with the --quick overrides, then the --set overrides, applied."""
    from refimpl.config import apply_overrides
    from iclgd.experiments import get_experiment
    mod = get_experiment(experiment)
    cfg = mod.Config()
    if quick:
        cfg = apply_overrides(cfg, mod.QUICK)
    return mod, apply_overrides(cfg, overrides)


def run(args):
    from kernels import get_backend
    from refimpl.config import config_to_dict
    from iclgd.experiments import EXPERIMENTS
    from iclgd.versions import versions
    from iclgd.plots import plot_results
    from iclgd.results import write_results
    mod, cfg = resolve_config(args.experiment, args.quick, args.overrides)
    if args.seeds < 1:
        raise ValueError(f"--seeds: expected an integer >= 1, got {args.seeds}")
    backend = get_backend(args.backend)
    out = args.out or os.path.join("results", args.experiment)
    os.makedirs(out, exist_ok=True)
    seeds = list(range(args.seeds))
    results = mod.run(cfg, seeds, backend, out, resume=args.resume, progress=not args.no_progress)
    results.update({"experiment": args.experiment, "figure": EXPERIMENTS[args.experiment][1],
                    "config": config_to_dict(cfg), "seeds": seeds, "backend": args.backend,
                    "versions": versions(), "quick": bool(args.quick)})
    path = write_results(out, results)
    print(f"wrote {path}")
    for p in plot_results(results, out):
        print(f"wrote {p}")
    return 0
