"""`iclgd show DIR`: the summary of DIR/results.json, as `iclgd run` printed it at its end: each
final number beside its baseline and the paper's published value (iclgd/summary.py); for a sweep's
DIR/sweep.json, the summary `iclgd sweep` printed (mean +- std over seeds, per point)."""


def add_arguments(parser):
    parser.add_argument("dir", help="a folder holding results.json (written by `iclgd run`) or sweep.json "
                                    "(written by `iclgd sweep`)")


def run(args):
    from iclgd.results import read_results
    from iclgd.summary import summary_lines
    from iclgd import sweep_merge
    if sweep_merge.is_sweep_folder(args.dir):
        sweep = sweep_merge.read_sweep(args.dir)
        try:
            print("\n".join(sweep_merge.summary_lines(sweep)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{args.dir}/sweep.json: cannot summarise it ({type(e).__name__}: {e}); "
                             f"expected a file written by `iclgd sweep`") from None
        return 0
    results = read_results(args.dir)
    try:
        lines = summary_lines(results)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # not shaped as `iclgd run` writes it
        raise ValueError(f"{args.dir}/results.json: cannot summarise it ({type(e).__name__}: {e}); "
                         f"expected a file written by `iclgd run`") from None
    print("\n".join(lines))
    return 0
