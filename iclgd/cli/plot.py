"""`iclgd plot DIR`: re-render the figure of DIR/results.json (PNG and PDF); never retrains."""


def add_arguments(parser):
    parser.add_argument("dir", help="a folder holding results.json (written by `iclgd run`)")


def run(args):
    from iclgd.plots import plot_results
    from iclgd.results import read_results
    for p in plot_results(read_results(args.dir), args.dir):
        print(f"wrote {p}")
    return 0
