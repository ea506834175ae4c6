"""`iclgd gradcheck`: every hand-written backward of the oracle against central finite differences
(refimpl/gradcheck.py); a table, or one JSON list with --json; exit status 1 if any check fails."""
import json

from refimpl.gradcheck import TOLERANCE, run_all


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON list of result objects")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


def run(args):
    rows = run_all(args.seed)
    failed = [r for r in rows if not r["passed"]]
    if args.json:
        print(json.dumps(rows))
    else:
        width = max(len(r["check"]) for r in rows)
        pwidth = max(len(r["param"]) for r in rows)
        print(f"{'check':{width}s}  {'param':{pwidth}s}  max_rel_err  result")
        for r in rows:
            print(f"{r['check']:{width}s}  {r['param']:{pwidth}s}  {r['max_rel_err']:11.2e}  "
                  f"{'ok' if r['passed'] else 'FAIL'}")
        worst = max(rows, key=lambda r: r["max_rel_err"])
        print(f"{len(rows)} gradients checked, {len(failed)} failed (tolerance {TOLERANCE:g}); "
              f"worst {worst['max_rel_err']:.2e} ({worst['check']} / {worst['param']})")
    return 1 if failed else 0
