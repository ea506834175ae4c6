"""Compile, in parallel processes, every CUDA module of the `cupy` backend that the later stages of
benchmarks/gpu_check.sh load (both dtypes; model_step.cu generic and for the shapes of fig2 and
deep-5 at T = 11), so that they find them in CuPy's on-disk kernel cache instead of compiling one
after another on the clock of their own timeouts. Needs a GPU (CuPy compiles for its device).

    python -m benchmarks.gpu_compile [--jobs 8]

One line per module with its compile time; exit status 0 when all compiled, 1 otherwise, 2 when
the cupy backend cannot run.
"""
import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import kernels  # noqa: E402
from kernels.cupy import build as cb  # noqa: E402
from refimpl.config import ModelConfig  # noqa: E402

SHAPES = {"fig2": ModelConfig(), "deep5_clip": ModelConfig(num_layers=5, token_clip=0.5)}  # T = 11


def modules():
    """[(source, kernel, dtype name, defines)]: one kernel of every module the checks load."""
    out = []
    for dt in ("float32", "float64"):
        out += [("block.cu", "block_backward", dt, ()), ("model_step.cu", "model_step", dt, ()),
                ("adam.cu", "adam_apply", dt, ()), ("tasks.cu", "draw_tasks", dt, ())]
        out += [("model_step.cu", "model_step", dt, cb.model_step_defines(cb.model_dims(cfg, 11)))
                for cfg in SHAPES.values()]
    return sorted(out, key=lambda m: m[0] != "block.cu")  # the longest compiles first


def compile_one(item):
    src, name, dt, defines = item
    from kernels.cupy import backend
    t0 = time.perf_counter()
    backend.kernel(src, name, np.dtype(dt), defines=defines)  # CuPy compiles and caches on disk
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="gpu_compile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="processes")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs: expected at least 1, got {args.jobs}")
    ok, reason = kernels.availability("cupy")
    if not ok:
        print(f"gpu_compile: the cupy backend cannot run: {reason}", file=sys.stderr)
        return 2
    items = modules()
    failed = 0
    t0 = time.perf_counter()
    # spawned, not forked: this process has initialised CUDA, which a forked child cannot use
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(item, pool.submit(compile_one, item)) for item in items]
        for (src, name, dt, defines), fut in futures:
            label = f"{src} {dt} {' '.join(defines) or '(generic)'}"
            try:
                print(f"compiled {label} in {fut.result():.1f} s", flush=True)
            except Exception as e:  # reported, and the exit status says so
                print(f"FAILED {label}: {type(e).__name__}: {e}", flush=True)
                failed += 1
    print(f"gpu_compile: {len(items)} modules, {failed} failed, {time.perf_counter() - t0:.1f} s wall")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
