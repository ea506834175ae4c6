"""`iclgd report [DIR ...] [--out FILE]`: one self-contained HTML page (figures embedded, each run's
summary table, config and versions) for the given run folders, by default the committed results/*."""
import glob
import os


def add_arguments(parser):
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help="folders holding results.json (default: every results/*/ that has one)")
    parser.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")


def run(args):
    from refimpl.atomic import atomic_write
    from iclgd.report import report_html
    dirs = args.dirs or sorted((os.path.dirname(p) for p in glob.glob(os.path.join("results", "*", "results.json"))),
                               key=lambda d: (len(d), d))  # fig1, fig2, ..., fig16
    if not dirs:
        raise ValueError("DIR: expected folders holding results.json; none given and none under results/")
    page = report_html(dirs)
    with atomic_write(args.out, "w") as f:
        f.write(page)
    print(f"wrote {args.out} ({len(dirs)} runs, {len(page) // 1024} KiB)")
    return 0
