"""`iclgd show DIR`: the summary of DIR/results.json, as `iclgd run` printed it at its end: each
final number beside its baseline and the paper's published value (iclgd/summary.py)."""


def add_arguments(parser):
    parser.add_argument("dir", help="a folder holding results.json (written by `iclgd run`)")


def run(args):
    from iclgd.results import read_results
    from iclgd.summary import summary_lines
    results = read_results(args.dir)
    try:
        lines = summary_lines(results)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # not shaped as `iclgd run` writes it
        raise ValueError(f"{args.dir}/results.json: cannot summarise it ({type(e).__name__}: {e}); "
                         f"expected a file written by `iclgd run`") from None
    print("\n".join(lines))
    return 0
