"""Time one full training step per backend: fresh batch, forward, backward, Adam.

    python benchmarks/bench_step.py [--backends numpy ...] [--cases a b c] [--dtypes float64 float32]
                                    [--repeats 30] [--out benchmarks/results/step_cpu.json]

Cases (SPEC 3 settings, linear-regression tasks with N = d = 10, B = 2048):
    a: 1-layer LSA           b: deep 5-layer LSA (token clipping at 10, lr 5e-4, clip 10)
    c: 2-layer, 2-head softmax attention with LayerNorm and MLP
Reports the median (and quartiles) of `repeats` timed steps after `warmup` untimed ones, with the
machine, versions, load average and shapes in the JSON result.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kernels import availability, get_backend  # noqa: E402
from refimpl.config import AdamConfig, ModelConfig  # noqa: E402
from refimpl.data import linear_regression_tasks  # noqa: E402
from refimpl.info import versions  # noqa: E402
from refimpl.params import init_params  # noqa: E402
from refimpl.runtime import tune_for_small_matrices  # noqa: E402

B, N, d = 2048, 10, 10
CASES = {
    "a": ("1-layer LSA", ModelConfig(), AdamConfig(lr=1e-3, grad_clip=1e-3)),
    "b": ("deep 5-layer LSA", ModelConfig(num_layers=5, token_clip=10.0),
          AdamConfig(lr=5e-4, grad_clip=10.0)),
    "c": ("2-layer 2-head softmax + LayerNorm + MLP",
          ModelConfig(num_layers=2, num_heads=2, attention="softmax", layernorm=True, mlp=True),
          AdamConfig(lr=1e-3, grad_clip=1e-3)),
}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_case(backend, cfg, adam_cfg, dtype, repeats, warmup, seed=0):
    rng = np.random.default_rng(seed)
    params = backend.asarray_params(init_params(cfg, rng, dtype)) if hasattr(backend, "asarray_params") \
        else {k: backend.asarray(v) for k, v in init_params(cfg, rng, dtype).items()}
    state = backend.adam_init(params)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        tokens, y = linear_regression_tasks(rng, B, N, d, dtype=dtype)  # fresh batch on the host
        params, state, loss = backend.train_step(params, state, backend.asarray(tokens),
                                                 backend.asarray(y), cfg, adam_cfg)
        float(backend.to_numpy(loss))  # the step is complete once its loss is on the host
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return {"median_ms": float(np.median(t)), "p25_ms": float(np.percentile(t, 25)),
            "p75_ms": float(np.percentile(t, 75)), "repeats": repeats, "warmup": warmup}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["numpy"])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "step_cpu.json"))
    args = ap.parse_args(argv)
    for name in args.backends:
        ok, reason = availability(name)
        if not ok:
            ap.error(f"backend {name!r} is not available: {reason}")
    process_settings = tune_for_small_matrices()
    results = []
    for case in args.cases:
        label, cfg, adam_cfg = CASES[case]
        for dtype in args.dtypes:
            for name in args.backends:
                r = time_case(get_backend(name), cfg, adam_cfg, np.dtype(dtype), args.repeats, args.warmup)
                r.update(case=case, description=label, backend=name, dtype=dtype,
                         shapes={"B": B, "N": N, "d": d, "T": N + 1, "D": d + 1,
                                 "L": cfg.num_layers, "H": cfg.num_heads, "K": cfg.key_size})
                results.append(r)
                print(f"{case} {label:42s} {dtype:8s} {name:10s} {r['median_ms']:9.3f} ms "
                      f"(p25 {r['p25_ms']:.3f}, p75 {r['p75_ms']:.3f})", flush=True)
    report = {
        "benchmark": "one training step: fresh batch, forward, backward, Adam",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_at_end": list(os.getloadavg())},
        "process_settings": process_settings,
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
