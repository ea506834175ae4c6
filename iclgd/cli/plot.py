"""`iclgd plot DIR`: re-render the figure of DIR/results.json (PNG and PDF), or of a sweep's
DIR/sweep.json (sweep.png, sweep.pdf); never retrains."""


def add_arguments(parser):
    parser.add_argument("dir", help="a folder holding results.json (written by `iclgd run`) or sweep.json "
                                    "(written by `iclgd sweep`)")


def run(args):
    from iclgd import rundir
    from iclgd.plots import plot_results
    from iclgd.results import null_finals, read_results
    from iclgd.sweep_merge import is_sweep_folder, plot_sweep, read_sweep
    if is_sweep_folder(args.dir):
        sweep = read_sweep(args.dir)
        with rundir.locked(args.dir, "DIR"):  # not while the sweep writes the folder
            try:
                paths = plot_sweep(sweep, args.dir)
            except (KeyError, TypeError, IndexError, ValueError) as e:
                raise ValueError(f"{args.dir}/sweep.json: cannot draw it ({type(e).__name__}: {e}); expected a "
                                 f"file written by `iclgd sweep`") from None
        for p in paths:
            print(f"wrote {p}")
        return 0
    results = read_results(args.dir)
    if results.get("status", "complete") == "complete" and null_finals(results):
        raise ValueError(f"{args.dir}/results.json: {', '.join(null_finals(results))} null (not finite); "
                         f"the run's numbers are incomplete, rerun it")
    with rundir.locked(args.dir, "DIR"):  # not while a run writes the folder
        try:
            paths = plot_results(results, args.dir)
        except (KeyError, TypeError, IndexError, ValueError) as e:  # not shaped as `iclgd run` writes it
            raise ValueError(f"{args.dir}/results.json: cannot draw {results['experiment']!r} from it "
                             f"({type(e).__name__}: {e}); expected a file written by `iclgd run`") from None
    for p in paths:
        print(f"wrote {p}")
    return 0
