"""`iclgd crosscheck FILE [--rtol R] [--atol A] [--json]`: the report of iclgd/interop/crosscheck.py,
as a table or one JSON object. Exit status 0 if every tensor passes, 1 if one fails, 2 if the file is
not valid."""
import json
import sys

from iclgd.interop.crosscheck import ATOL, RTOL, crosscheck_file, format_report


def add_arguments(parser):
    parser.add_argument("file", metavar="FILE", help="an .npz file of the exchange format")
    parser.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance ({RTOL:g})")
    parser.add_argument("--atol", type=float, default=ATOL, help=f"absolute tolerance ({ATOL:g})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args):
    try:
        report = crosscheck_file(args.file, args.rtol, args.atol)
    except ValueError as e:
        if not args.json:
            raise
        print(json.dumps({"passed": False, "error": str(e), "tensors": []}))
        print(f"iclgd crosscheck: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["passed"] else 1
