"""Time one training step of the GPT-2 model (refimpl.gpt2, SPEC 2.7): the oracle (backend numpy)
against numba-cpu (kernels/numba/gpt2.py), train_step (forward, MSE gradient, backward, Adam) on a
ready batch of B = 64 Gaussian prompts in the interleaved layout.

Cases:
    tiny    input_dim 5, 11 pairs (T = 22), width 64, 4 blocks, 2 heads    (the project's small preset)
    larger  input_dim 10, 21 pairs (T = 42), width 128, 6 blocks, 4 heads
in float64 and float32; numba-cpu with Numba's default thread count and with one thread. Each
timing is the median (and min) of `--repeats` steps after `--warmup` steps (compilation happens in
the warm-up); every backend starts from the same parameters and sees the same batches, and the file
records how far numba-cpu's losses and final parameters are from the oracle's. The process settings
of benchmarks/train_step.py come first, as the training loop applies them (glibc keeps freed
memory; NumPy's BLAS on one thread). A nominal operation count (the products' multiply-adds, the
backward as twice the forward) gives GFLOP/s.

    python benchmarks/gpt2_step.py --out benchmarks/results/gpt2_step_cpu.json
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_step import cpu_model, numba_versions  # noqa: E402
from iclgd import runtime  # noqa: E402
from iclgd.versions import versions  # noqa: E402
from kernels import get_backend  # noqa: E402
from refimpl.config import AdamConfig, config_to_dict  # noqa: E402
from refimpl.gaussian import GaussianTaskConfig, gaussian_regression, interleaved_tokens  # noqa: E402
from refimpl.gpt2 import GPT2Config  # noqa: E402

CASES = {
    "tiny": GPT2Config(input_dim=5, num_pairs=11, embed_dim=64, num_layers=4, num_heads=2),
    "larger": GPT2Config(input_dim=10, num_pairs=21, embed_dim=128, num_layers=6, num_heads=4),
}
ADAM = AdamConfig(lr=1e-3, grad_clip=1.0)


def nominal_flops(cfg, T, batch):
    """3 x forward per step; forward per prompt: read-in 2 T d E, per block the q, k, v and output
    products 4 * 2 T E^2, scores and mixing 2 * 2 T^2 E, the MLP 2 * 2 T E F; read-out 2 (T/2) E."""
    E, F = cfg.embed_dim, cfg.mlp_widening * cfg.embed_dim
    block = 4 * 2 * T * E * E + 2 * 2 * T * T * E + 2 * 2 * T * E * F
    return 3 * batch * (2 * T * cfg.input_dim * E + cfg.num_layers * block + T * E)


def batches(cfg, batch, count, seed):
    """`count` batches (tokens (B, 2n, d), y (B, n)) of isotropic Gaussian prompts."""
    rng = np.random.default_rng(seed)
    task = GaussianTaskConfig(input_dim=cfg.input_dim, num_pairs=cfg.num_pairs)
    out = []
    for _ in range(count):
        x, y, _ = gaussian_regression(rng, batch, task, np.eye(cfg.input_dim))
        out.append((interleaved_tokens(x, y), y))
    return out


def time_steps(be, cfg, dtype, data, warmup, repeats, seed):
    """(result dict, losses, final params) of warmup + repeats train_steps, batches in turn."""
    params = be.init_params(cfg, np.random.default_rng(seed), dtype)
    state = be.adam_init(params)
    times, losses = [], []
    for i in range(warmup + repeats):
        tokens, y = data[i % len(data)]
        tok, yy = be.asarray(tokens.astype(dtype)), be.asarray(y.astype(dtype))
        t0 = time.perf_counter()
        params, state, loss = be.train_step(params, state, tok, yy, cfg, ADAM)
        float(loss)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    return ({"step_median_ms": 1e3 * float(np.median(times)), "step_min_ms": 1e3 * float(np.min(times)),
             "repeats": repeats, "warmup": warmup, "final_loss": losses[-1]}, np.array(losses),
            {k: np.asarray(v) for k, v in params.items()})


def relative_gap(got, want):
    """max |got - want| / max |want| over an array, or over all arrays of a dict together (the
    parameters' common scale: the attention's b_k has a gradient of rounding noise only, so its
    values are noise of Adam steps ~lr * 1e-9, not comparable on their own scale)."""
    if isinstance(want, dict):
        want, got = (np.concatenate([np.ravel(d[k]) for k in want]) for d in (want, got))
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def main(argv=None):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}")
    ap.add_argument("--dtypes", default="float64,float32", help="comma-separated dtypes (float64,float32)")
    ap.add_argument("--batch", type=int, default=64, help="prompts per step (64)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (3)")
    ap.add_argument("--repeats", type=int, default=20, help="timed steps; the median is reported (20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the parameters and batches (0)")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = ap.parse_args(argv)
    settings = runtime.tune_for_small_matrices()
    import numba
    default_threads = numba.get_num_threads()
    oracle, fast = get_backend("numpy"), get_backend("numba-cpu")
    load_before = os.getloadavg()
    results = []
    for case in args.cases.split(","):
        cfg = CASES[case]
        data = batches(cfg, args.batch, 4, args.seed)
        T = 2 * cfg.num_pairs
        flops = nominal_flops(cfg, T, args.batch)
        for dt in args.dtypes.split(","):
            dtype = np.dtype(dt)
            ref, ref_losses, ref_params = time_steps(oracle, cfg, dtype, data, args.warmup, args.repeats, args.seed)
            runs = [("numpy", ref, None)]
            for threads in (default_threads, 1):
                numba.set_num_threads(threads)
                try:
                    r, losses, params = time_steps(fast, cfg, dtype, data, args.warmup, args.repeats, args.seed)
                finally:
                    numba.set_num_threads(default_threads)
                r.update(numba_threads=threads, loss_gap_vs_oracle=relative_gap(losses, ref_losses),
                         params_gap_vs_oracle=relative_gap(params, ref_params))
                runs.append(("numba-cpu", r, threads))
            for name, r, threads in runs:
                r.update(backend=name, case=case, dtype=dt, nominal_gflop=flops / 1e9,
                         achieved_gflops=flops / (r["step_median_ms"] * 1e-3) / 1e9,
                         speedup_vs_oracle_median=ref["step_median_ms"] / r["step_median_ms"],
                         load_avg_after=os.getloadavg())
                results.append(r)
                print(f"{case:7s} {dt:8s} {name:10s} threads {threads or '-'}  median {r['step_median_ms']:8.2f} ms  "
                      f"min {r['step_min_ms']:8.2f} ms  x{r['speedup_vs_oracle_median']:.2f}", flush=True)
    out = {
        "benchmark": "GPT-2 model (SPEC 2.7): one train_step (forward, MSE gradient, backward, Adam) on a ready batch",
        "machine": {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1_5_15_before": load_before, "load_avg_1_5_15_after": os.getloadavg(),
                    "nice": os.nice(0)},
        "versions": {**versions(), **numba_versions(), "numba_threading_layer": numba.threading_layer()},
        "process_settings": settings,
        "shapes": {c: {"batch": args.batch, "tokens": 2 * CASES[c].num_pairs, "model": config_to_dict(CASES[c])}
                   for c in args.cases.split(",")},
        "adam": config_to_dict(ADAM),
        "results": results,
        "flop_model": " ".join(nominal_flops.__doc__.split()),
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
