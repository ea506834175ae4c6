"""`iclgd crosscheck FILE [--rtol R] [--atol A] [--json]`: the report of iclgd/interop/crosscheck.py,
as a table or one JSON object. Exit status 0 if every tensor passes, 1 if one fails (and only
then), 2 if the file or an option is not valid, whatever the error: one line on stderr and, under
--json, {"passed": false, "error": "...", "tensors": []} on stdout. In the JSON, a number that is
not finite (an oracle that overflowed) is written as the string "inf", "-inf" or "nan"."""
import json
import math
import sys

from iclgd.interop.crosscheck import ATOL, RTOL, check_tolerance, crosscheck_file, format_report


def add_arguments(parser):
    parser.add_argument("file", metavar="FILE", help="an .npz file of the exchange format")
    parser.add_argument("--rtol", type=float, default=RTOL,
                        help=f"relative tolerance, a finite number >= 0 ({RTOL:g})")
    parser.add_argument("--atol", type=float, default=ATOL,
                        help=f"absolute tolerance, a finite number >= 0 ({ATOL:g})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _finite_json(value):
    """The report with every non-finite float as a string, so that the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value


def _error_message(error, path):
    """One line: a ValueError is the project's own message; anything else that went wrong while
    reading the file or recomputing it is named by its type."""
    text = str(error) if isinstance(error, ValueError) else \
        f"FILE {path}: cannot be checked ({type(error).__name__}: {error})"
    return " ".join(text.split())


def run(args):
    try:
        check_tolerance("--rtol", args.rtol)
        check_tolerance("--atol", args.atol)
        report = crosscheck_file(args.file, args.rtol, args.atol)
    except Exception as e:  # noqa: BLE001 -- an invalid file is status 2, never a crash (1)
        message = _error_message(e, args.file)
        if args.json:
            print(json.dumps({"passed": False, "error": message, "tensors": []}))
        print(f"iclgd crosscheck: error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(_finite_json(report), allow_nan=False) if args.json else format_report(report))
    return 0 if report["passed"] else 1
