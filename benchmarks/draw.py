"""Time the training-batch draw: the oracle (refimpl.data.linear_regression_tasks) against the Numba
drawer (kernels.numba.draw), which gives the same bits and leaves the Generator in the same state.

B = 2048 tasks, N = d = 10 (SPEC 1.1 / 3), float64 and float32; each timing is the median of
`--repeats` draws after `--warmup` draws (compilation happens in the warm-up), the Numba drawer with
Numba's default thread count and with one thread. The process settings of benchmarks/train_step.py
come first (glibc keeps freed memory: the oracle's draw allocates ~4 MB per call). The result file
records the process's nice value: on a loaded machine a niced process's second thread can wait a
whole scheduler time slice, which the 2-thread median then shows.

    python benchmarks/draw.py --out benchmarks/results/draw_cpu.json
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_step import cpu_model  # noqa: E402
from iclgd import runtime  # noqa: E402
from refimpl.data import linear_regression_tasks as oracle_tasks  # noqa: E402
from iclgd.versions import versions  # noqa: E402


def median_time(draw, rng, batch, dtype, warmup, repeats):
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        draw(rng, batch, 10, 10, dtype=dtype)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--batch", type=int, default=2048, help="tasks per draw (2048)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed draws first, compilation included (5)")
    ap.add_argument("--repeats", type=int, default=50, help="timed draws; the median is reported (50)")
    ap.add_argument("--dtypes", default="float64,float32", help="comma-separated dtypes (float64,float32)")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = ap.parse_args(argv)
    settings = runtime.tune_for_small_matrices()
    import numba

    from kernels.numba.draw import linear_regression_tasks as numba_tasks
    default_threads = numba.get_num_threads()
    load_before = os.getloadavg()
    results = []
    for dt in args.dtypes.split(","):
        dtype = np.dtype(dt)
        rng = np.random.default_rng(0)
        runs = [("oracle", oracle_tasks, default_threads), ("numba", numba_tasks, default_threads),
                ("numba", numba_tasks, 1)]
        for name, draw, threads in runs:
            numba.set_num_threads(threads)
            med, best = median_time(draw, rng, args.batch, dtype, args.warmup, args.repeats)
            numba.set_num_threads(default_threads)
            results.append({"drawer": name, "dtype": dt, "numba_threads": threads,
                            "median_s": med, "min_s": best, "repeats": args.repeats,
                            "warmup": args.warmup})
            print(f"{name:6s} {dt:8s} threads {threads}  median {med * 1e3:7.3f} ms  "
                  f"min {best * 1e3:7.3f} ms", flush=True)
    out = {
        "benchmark": "training-batch draw: refimpl.data vs kernels.numba.draw (identical bits)",
        "machine": {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
                    "platform": platform.platform(), "load_avg_1_5_15_before": load_before,
                    "load_avg_1_5_15_after": os.getloadavg(), "nice": os.nice(0)},
        "process_settings": settings,
        "versions": {**versions(), "numba_threading_layer": numba.threading_layer()},
        "shapes": {"batch": args.batch, "num_context": 10, "input_dim": 10},
        "results": results,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
