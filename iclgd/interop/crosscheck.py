"""`iclgd crosscheck FILE`: recompute a file of the exchange format (iclgd/interop/exchange.py) with the
float64 oracle and compare every result it holds, tensor by tensor, for the file's model ("lsa" or
"gpt2", iclgd/interop/exchange_models.py).

An entry passes when |actual - oracle| <= atol + rtol * |oracle| (numpy.allclose's rule).
Reported per tensor: max_abs_err; max_rel_err, the largest |actual - oracle| / max(|actual|,
|oracle|, tiny) (SPEC 7's relative error, at most 2); worst_index, the first index of the largest
absolute difference, with the two values there; note, None or why the tensor cannot pass. A
tensor where the oracle's value is not finite (an overflow in float64) fails, whatever the file
holds: no number is within a tolerance of inf. Tolerances are finite numbers >= 0 (an infinite
one would pass anything). Exit status: 0 if every tensor passes, 1 if one fails, 2 if the file is
not valid (an error naming the key).
"""
import math
import numbers

import numpy as np

from iclgd.interop.exchange import load_exchange, oracle_results

RTOL = 1e-9  # float64 implementations agree to ~1e-13; the float32 ones need --rtol 1e-4 or so
ATOL = 1e-12
TINY = np.finfo(np.float64).tiny


def check_tolerance(name, value):
    """A tolerance is a finite number >= 0; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _nonfinite_note(a, e):
    """Why a tensor cannot pass when the oracle's (or, given directly, the file's) values are not
    finite; None when all are."""
    for who, x in (("the oracle's", e), ("the file's", a)):
        bad = x.size - int(np.count_nonzero(np.isfinite(x)))
        if bad:
            first = tuple(int(k) for k in np.argwhere(~np.isfinite(x))[0])
            return (f"{who} value is not finite at {bad} of {x.size} entries (first at {first}, "
                    f"{x[first]}): no value can be compared with it, so the tensor fails")
    return None


def compare(name, actual, expected, rtol=RTOL, atol=ATOL):
    """One report row: {name, shape, dtype, max_abs_err, max_rel_err, worst_index, actual, oracle,
    passed, note}."""
    dtype = str(np.asarray(actual).dtype)
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"{name}: expected shape {e.shape}, got {a.shape}")
    with np.errstate(invalid="ignore"):
        err = np.abs(a - e)  # same shape as the tensor; NaN where both are the same inf
        rel = err / np.maximum(np.maximum(np.abs(a), np.abs(e)), TINY)
    note = _nonfinite_note(a, e)
    i = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
    return {
        "name": name,
        "shape": list(e.shape),
        "dtype": dtype,
        "max_abs_err": float(err.max(initial=0.0)),
        "max_rel_err": float(rel.max(initial=0.0)),
        "worst_index": [int(k) for k in i],
        "actual": float(a[i]) if err.size else None,
        "oracle": float(e[i]) if err.size else None,
        "passed": note is None and bool(np.all(err <= atol + rtol * np.abs(e))),
        "note": note,
    }


def _unmatched(name, actual, note):
    """The row of a tensor the oracle could not compute."""
    actual = np.asarray(actual)
    return {"name": name, "shape": list(actual.shape), "dtype": str(actual.dtype),
            "max_abs_err": math.nan, "max_rel_err": math.nan, "worst_index": [], "actual": None,
            "oracle": None, "passed": False, "note": note}


def crosscheck(exchange, rtol=RTOL, atol=ATOL):
    """Compare the results of a loaded file (load_exchange) with the oracle's: a report dict."""
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    try:
        with np.errstate(all="ignore"):  # an overflow is reported as a failing tensor, with a note
            ours = oracle_results(exchange["cfg"], exchange["params"], exchange["tokens"],
                                  exchange["targets"])
    except ValueError as e:
        if "NaN or inf" not in str(e):
            raise
        ours = {name: None for name in exchange["results"]}  # the oracle stopped at an overflow
        note = (f"the oracle's value is not finite: its float64 computation overflowed ({e}), so "
                f"no value can be compared with it and the tensor fails")
    rows = [compare(name, value, ours[name], rtol, atol) if ours[name] is not None
            else _unmatched(name, value, note) for name, value in exchange["results"].items()]
    return {"passed": bool(rows) and all(r["passed"] for r in rows),
            "model": exchange.get("model", "lsa"), "rtol": rtol, "atol": atol, "tensors": rows}


def crosscheck_file(path, rtol=RTOL, atol=ATOL):
    """crosscheck(load_exchange(path)); the tolerances are checked before the file is read."""
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    return crosscheck(load_exchange(path), rtol, atol)


def format_report(report):
    lines = [f"{'tensor':28s} {'shape':>12s} {'max abs err':>11s} {'max rel err':>11s}  "
             f"{'worst index':14s} result"]
    for r in report["tensors"]:
        shape = "x".join(map(str, r["shape"])) or "()"
        lines.append(f"{r['name']:28s} {shape:>12s} {r['max_abs_err']:11.2e} {r['max_rel_err']:11.2e}  "
                     f"{str(tuple(r['worst_index'])):14s} {'ok' if r['passed'] else 'FAIL'}")
    failed = [r["name"] for r in report["tensors"] if not r["passed"]]
    verdict = "PASSED" if report["passed"] else f"FAILED: {', '.join(failed)}"
    if any(r["dtype"] == "float32" and not r["passed"] for r in report["tensors"]):
        verdict += ("\n(float32 results differ from float64 ones by ~1e-6 relative: "
                    "try --rtol 1e-4 --atol 1e-6)")
    lines += [f"{r['name']}: {r['note']}" for r in report["tensors"] if r.get("note")]
    lines.append(f"{verdict} (model {report['model']}, {len(report['tensors'])} tensors, "
                 f"rtol {report['rtol']:g}, atol {report['atol']:g})")
    return "\n".join(lines)
