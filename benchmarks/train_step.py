"""Time one full training step per backend: fresh batch, forward, backward, Adam.

Cases (B = 2048 tasks, N = d = 10, SPEC 1.1 / 3):
    a  one-layer LSA                                    lr 1e-3, clip 0.001
    b  deep 5-layer LSA, token clipping at 10           lr 5e-4, clip 10
    c  2-head softmax attention with LayerNorm and MLP  lr 1e-3, clip 0.001
    d  deep 5-layer LSA, 2 heads and an MLP per layer,   lr 5e-4, clip 10
       token clipping at 10 (fig8's deepest model)
in float64 and float32, for every available backend and, in the same run, for the peers: the same
model and step written as a JAX jit program and a PyTorch eager (autograd) program on the CPU
(benchmarks/peers.py; optional: `--peers ''` leaves them out, a missing framework is reported as
unavailable). Each timing is the median of `--repeats` steps after `--warmup` steps (compilation happens in the warm-up);
per case and dtype, every backend and peer runs in turn in each of the `--repeats` rounds (one untimed
step, then the timed one), so all are timed over the same minutes (this shared machine's speed drifts by up to a third between
minutes, which timing them one after another would put into the ratios). The batch is drawn from the host
NumPy Generator inside the timed step, then handed to the backend: by the backend's own
`linear_regression_tasks` where it has one (numba-cpu: kernels.numba.draw, the same bits as the
oracle's refimpl.data, in parallel), else by refimpl.data. The kernel part alone (train_step on a
ready batch) is reported too. The peers draw their batch with their own generator (same law).

Each result also gives the achieved GFLOP/s on a nominal operation count (`flop_model` in the file:
the standard attention formulation's multiply-adds, backward counted as twice the forward), against
this machine's peak measured in the same run: a float32 and a float64 BLAS gemm (n = 1024) on one
thread, times the number of cores.

    python benchmarks/train_step.py --out benchmarks/results/train_step_cpu.json
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import availability, backend_names, get_backend  # noqa: E402
from refimpl import data  # noqa: E402
from iclgd import runtime  # noqa: E402
from refimpl.config import AdamConfig, ModelConfig, config_to_dict  # noqa: E402
from iclgd.versions import versions  # noqa: E402

CASES = {
    "a_lsa_1layer": (ModelConfig(), AdamConfig(lr=1e-3, grad_clip=0.001)),
    "b_lsa_deep5": (ModelConfig(num_layers=5, token_clip=10.0), AdamConfig(lr=5e-4, grad_clip=10.0)),
    "c_softmax_2head_ln_mlp": (ModelConfig(attention="softmax", num_heads=2, layernorm=True, mlp=True),
                               AdamConfig(lr=1e-3, grad_clip=0.001)),
    "d_lsa_deep5_2head_mlp": (ModelConfig(num_layers=5, num_heads=2, mlp=True, token_clip=10.0),
                              AdamConfig(lr=5e-4, grad_clip=10.0)),
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


def backend_stepper(be, cfg, acfg, dtype, batch, seed):
    """One of our backends' full steps as a function: () -> (step seconds, train_step alone, loss).
    The batch is drawn inside the step by the backend's own drawer where it has one (same bits)."""
    rng = np.random.default_rng(seed)
    params = be.init_params(cfg, rng, dtype)
    state = [params, be.adam_init(params)]
    sync = getattr(be, "synchronize", lambda: None)
    draw = getattr(be, "linear_regression_tasks", data.linear_regression_tasks)  # same bits

    def step():
        t0 = time.perf_counter()
        tokens, y = draw(rng, batch, 10, 10, dtype=dtype)  # fresh batch
        tok, yy = be.asarray(tokens), be.asarray(y)
        sync()
        t1 = time.perf_counter()
        state[0], state[1], loss = be.train_step(state[0], state[1], tok, yy, cfg, acfg)
        loss = float(loss)
        sync()
        t2 = time.perf_counter()
        return t2 - t0, t2 - t1, loss
    return step


def nominal_flops(cfg, T, batch):
    """Floating-point operations of one training step in the standard formulation, per batch:
    3 x forward (backward = 2 x forward); forward per layer and task: Q, K, V and output
    projections 4 * 2 T D (H K), scores and mixing 2 * 2 T^2 H K, the MLP 2 * 2 T D (w D)."""
    D, H, K = cfg.token_dim, cfg.num_heads, cfg.key_size
    per_layer = 4 * 2 * T * D * H * K + 2 * 2 * T * T * H * K
    if cfg.mlp:
        per_layer += 2 * 2 * T * D * cfg.mlp_widening * D
    return 3 * batch * cfg.num_layers * per_layer


def gemm_peak(dtype, n=1024, repeats=5):
    """GFLOP/s of the best of `repeats` n x n BLAS products on the current BLAS threads."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def peer_stepper(kind, cfg, acfg, dtype, batch, seed):
    """The JAX-jit or PyTorch-eager peer's full step (draw, forward, backward, Adam) on the CPU as a
    function: () -> (step seconds, None, loss). The loss must come in `dtype` (a peer that silently
    computes in another precision is refused by `check_dtype`)."""
    from peers import JaxPeer, TorchPeer
    from refimpl.params import init_params
    params = init_params(cfg, np.random.default_rng(seed))
    if kind == "jax-jit":
        import jax
        # JAX computes float64 as float32 unless 64-bit mode is on: on around every float64 step
        x64 = np.dtype(dtype) == np.float64
        with jax.enable_x64(x64):
            peer = JaxPeer(cfg, acfg, batch=batch, dtype=dtype, device=jax.devices("cpu")[0])
            state = [peer.init_state(params, seed)]

        def step():
            with jax.enable_x64(x64):
                t0 = time.perf_counter()
                state[0], loss = peer.train_step(state[0])
                peer.block(loss)
                return time.perf_counter() - t0, None, loss
        return step
    peer = TorchPeer(cfg, acfg, batch=batch, dtype=dtype, device="cpu")
    state = [peer.init_state(params, seed)]

    def step():
        t0 = time.perf_counter()
        loss = peer.train_step(state[0])
        return time.perf_counter() - t0, None, loss
    return step


def check_dtype(loss, dtype):
    got = str(getattr(loss, "dtype", type(loss).__name__)).replace("torch.", "")
    if got != np.dtype(dtype).name:
        raise ValueError(f"dtype: expected the peer's loss in {np.dtype(dtype).name}, got {got}")
    return got


def time_interleaved(steppers, warmup, repeats, settle=1):
    """({name: result}, {name: last loss}) for steppers {name: step}: each warmed up `warmup` times,
    then `repeats` rounds in which every stepper runs in turn, `settle` untimed steps and one timed
    step, so all of them are timed over the same minutes (this shared machine's speed drifts by up to
    a third; timed one after another, the ratios would carry that drift). The untimed steps keep
    the previous stepper's threads, which spin for a while after their work (OpenMP, PyTorch, XLA),
    out of the timed one."""
    last = {}
    for name, step in steppers.items():
        for _ in range(warmup):
            last[name] = step()
    full = {name: [] for name in steppers}
    kernel = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, step in steppers.items():
            for _ in range(settle):
                step()
            t, tk, loss = last[name] = step()
            full[name].append(t)
            if tk is not None:
                kernel[name].append(tk)
    out = {}
    for name in steppers:
        r = {"step_median_s": float(np.median(full[name])), "step_min_s": float(np.min(full[name])),
             "repeats": repeats, "warmup": warmup, "final_loss": float(last[name][2])}
        if kernel[name]:
            r["train_step_only_median_s"] = float(np.median(kernel[name]))
        out[name] = r
    return out, {name: last[name][2] for name in steppers}


PEERS = {"jax-jit": "jax", "torch-eager": "torch"}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--backends", default=",".join(backend_names()),
                    help="comma-separated backends (default: all; unavailable ones are reported as such)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated peers timed in the same run ({', '.join(PEERS)}; '' for none)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}")
    ap.add_argument("--dtypes", default="float64,float32", help="comma-separated dtypes (float64,float32)")
    ap.add_argument("--batch", type=int, default=2048, help="tasks per step (2048)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (3)")
    ap.add_argument("--repeats", type=int, default=20, help="timed steps; the median is reported (20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the parameters and batches (0)")
    ap.add_argument("--threads", type=int, default=0,
                    help="Numba threads for numba-cpu (0 = Numba's default, one per core)")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    return ap.parse_args(argv)


def time_all(args):
    """One result per (backend, case, dtype); an unavailable backend gives one entry with its reason.
    Per (case, dtype) every available backend and peer is timed in the same rounds (time_interleaved)."""
    results, backends, peers = [], [], []
    for name in args.backends.split(","):
        ok, reason = availability(name)
        if ok:
            backends.append((name, get_backend(name)))
        else:
            results.append({"backend": name, "available": False, "reason": reason})
            print(f"{name}: unavailable ({reason})", flush=True)
    for name in filter(None, args.peers.split(",")):
        try:
            __import__(PEERS[name])
            peers.append(name)
        except ImportError as e:
            results.append({"backend": name, "available": False, "reason": f"{e} (pip install -e \".[peers]\")"})
            print(f"{name}: unavailable ({e})", flush=True)
    for case in args.cases.split(","):
        cfg, acfg = CASES[case]
        for dt in args.dtypes.split(","):
            dtype = np.dtype(dt)
            steppers = {name: backend_stepper(be, cfg, acfg, dtype, args.batch, args.seed) for name, be in backends}
            for name in peers:
                try:
                    steppers[name] = peer_stepper(name, cfg, acfg, dtype, args.batch, args.seed)
                except ValueError as e:  # a model the peers do not implement
                    results.append({"backend": name, "case": case, "dtype": dt, "available": False, "reason": str(e)})
            timed, losses = time_interleaved(steppers, args.warmup, args.repeats)
            for name, r in timed.items():
                if name in PEERS:
                    r["computed_dtype"] = check_dtype(losses[name], dtype)
                r.update(backend=name, case=case, dtype=dt, load_avg_after=os.getloadavg())
                results.append(r)
                alone = (f"  (train_step alone {r['train_step_only_median_s'] * 1e3:9.3f} ms)"
                         if "train_step_only_median_s" in r else "")
                print(f"{name:11s} {case:24s} {dt:8s} step {r['step_median_s'] * 1e3:9.3f} ms{alone}", flush=True)
    return results


def add_flops(results, batch, peaks):
    """Each timed result's nominal GFLOP/s and its fraction of the machine's measured peak."""
    for r in results:
        if "step_median_s" in r:
            flops = nominal_flops(CASES[r["case"]][0], 11, batch)
            r["nominal_gflop"] = flops / 1e9
            r["achieved_gflops"] = flops / r["step_median_s"] / 1e9
            r["fraction_of_peak"] = r["achieved_gflops"] / peaks[r["dtype"]]["all_cores_gflops"]


def ratios_vs_peers(results):
    """{case/dtype: {"numba-cpu_vs_fastest_peer": fastest peer's median / numba-cpu's, each peer's,
    float64 / float32 of numba-cpu}} for every case a peer ran."""
    out = {}
    timed = {(r["backend"], r["case"], r["dtype"]): r["step_median_s"] for r in results if "step_median_s" in r}
    for (be, case, dt), t in timed.items():
        if be != "numba-cpu":
            continue
        entry = {}
        peer_times = {p: timed[(p, case, dt)] for p in PEERS if (p, case, dt) in timed}
        for p, tp in peer_times.items():
            entry[f"{p}_over_numba-cpu"] = tp / t
        if peer_times:
            entry["fastest_peer_over_numba-cpu"] = min(peer_times.values()) / t
        if dt == "float32" and (be, case, "float64") in timed:
            entry["numba-cpu_float64_over_float32"] = timed[(be, case, "float64")] / t
        out[f"{case}/{dt}"] = entry
    return out


def speedups_vs_numpy(results):
    """{backend/case/dtype: numpy's median step time / this backend's}."""
    speedups = {}
    for r in results:
        if r.get("backend") not in (None, "numpy") and "step_median_s" in r:
            base = [o for o in results if o.get("backend") == "numpy" and o.get("case") == r["case"]
                    and o.get("dtype") == r["dtype"]]
            if base:
                speedups[f"{r['backend']}/{r['case']}/{r['dtype']}"] = (
                    base[0]["step_median_s"] / r["step_median_s"])
    return speedups


def numba_versions():
    """Numba's thread count and numba-cuda's version (or why it is missing)."""
    out = {}
    try:
        import numba
        out["numba_threading_layer_threads"] = numba.get_num_threads()
        from importlib.metadata import version
        out["numba-cuda"] = version("numba-cuda")
    except Exception as e:  # numba-cuda is optional
        out["numba-cuda"] = f"not installed ({type(e).__name__})"
    return out


def main(argv=None):
    args = parse_args(argv)
    # before any timing: the oracle's step depends on both (glibc keeps freed memory; one BLAS thread)
    settings = runtime.tune_for_small_matrices()
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    load_before = os.getloadavg()
    peaks = {dt: {"one_thread_gflops": gemm_peak(np.dtype(dt))} for dt in args.dtypes.split(",")}
    for p in peaks.values():
        p["all_cores_gflops"] = p["one_thread_gflops"] * os.cpu_count()
    results = time_all(args)
    add_flops(results, args.batch, peaks)
    speedups = speedups_vs_numpy(results)
    ratios = ratios_vs_peers(results)
    out = {
        "benchmark": "one training step: fresh batch + forward + backward + Adam",
        "machine": {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
                    "platform": platform.platform(), "load_avg_1_5_15_before": load_before,
                    "load_avg_1_5_15_after": os.getloadavg(),
                    "numba_threads_requested": args.threads or "default"},
        "versions": versions(),
        "process_settings": settings,
        "shapes": {"batch": args.batch, "num_context": 10, "input_dim": 10, "tokens": 11,
                   "token_dim": 11},
        "cases": {c: {"model": config_to_dict(CASES[c][0]), "adam": config_to_dict(CASES[c][1])}
                  for c in args.cases.split(",")},
        "results": results,
        "speedup_vs_numpy_step_median": speedups,
        "ratios": ratios,
        "peak_gemm": peaks,
        "flop_model": " ".join(nominal_flops.__doc__.split()),
    }
    out["versions"].update(numba_versions())
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", args.out)
    for k, v in speedups.items():
        print(f"speedup {k}: {v:.2f}x")
    for k, v in ratios.items():
        print(f"{k}: " + ", ".join(f"{n} {x:.2f}x" for n, x in v.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
