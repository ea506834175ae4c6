"""GPU benchmark of the `cupy` backend against its unfused baseline, numba-cuda (when registered)
and peers written for the benchmark (JAX jit, PyTorch eager / torch.compile): one training step
and a whole fig2 training (1-layer LSA, 5 000 steps, batch 2048, N = d = 10, online tasks drawn on
the device). Writes one JSON file with device, driver, versions, shapes and timings.

    python -m benchmarks.bench_cupy --out FILE [--sweep] [--steps 5000] [--dtype float32] [--peers jax,torch]

Definitions (all wall-clock on the host, the GPU synchronised before the clock stops):
  step_s             time per training step when steps are issued one by one from Python
  device_step_s      time per step with no per-step host work: fused -- 100 steps captured in one
                     CUDA graph, replayed; JAX -- lax.fori_loop of the same steps in one jit call
  launch_overhead    1 - device_step_s / step_s: the fraction of a step spent issuing it
  fig2_s             the whole 5 000-step training (parameters initialised, compiled, warmed up
                     before the clock starts); fig2_logged_s reads the loss back every 100 steps
  speedup_vs[peer]   peer step_s / fused step_s, and the same for fig2_s
  sweep[B]           (--sweep) graph_step_s: time per fused step by CUDA events around replays of
                     a graph of graph_steps steps, for B = 256 .. 4096, with the launch shape used
  tail               (--sweep) at --batch: compute_s, model_step alone (per-task work, warp sums,
                     partial rows; events over a graph of those launches); one_launch_step_s and
                     two_launch_step_s, the whole step with the partial rows summed by the last block
                     or by the multi-block kernel; tail_*_s = step - compute_s (reduction + Adam);
                     generic_one_launch_step_s, the step from model_step.cu compiled without the
                     model's shapes as constants (every other number uses the specialised build)
Exits with status 2 and the reason, writing nothing, when there is no usable GPU.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import kernels  # noqa: E402
from refimpl.config import AdamConfig, ModelConfig, config_to_dict  # noqa: E402
from refimpl.params import init_params  # noqa: E402

FIG2 = ModelConfig()  # one LSA layer, D = K = 11, one head
FIG2_ADAM = AdamConfig(lr=1e-3, grad_clip=0.001)  # SPEC 3: L <= 2 -> clip 0.001, L <= 3 -> lr 1e-3


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench_cupy", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--out", required=True, help="JSON file to write (outside the working tree, e.g. "
                   "OUTDIR/bench_cupy.json; a result worth keeping is copied to benchmarks/results/)")
    p.add_argument("--steps", type=int, default=5000, help="steps of the whole training (5000)")
    p.add_argument("--batch", type=int, default=2048, help="tasks per step (2048)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="(float32)")
    p.add_argument("--repeats", type=int, default=200, help="steps timed for the per-step numbers")
    p.add_argument("--peers", default="jax,torch,torch_compile,numba_cuda,unfused",
                   help="comma-separated subset of jax, torch, torch_compile, numba_cuda, unfused")
    p.add_argument("--graph-steps", type=int, default=100,
                   help="steps captured in one CUDA graph (or one fori_loop) for device_step_s")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters and batches (0)")
    p.add_argument("--sweep", action="store_true",
                   help="also time the fused step by CUDA events for B = 256 .. 4096, and its tail")
    p.add_argument("--sweep-batches", default="256,512,1024,2048,4096", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _wall_total(fn, n, sync):
    """Seconds for n calls of fn, the device synchronised before the clock starts and stops."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return time.perf_counter() - t0


def _wall(fn, n, sync):
    """Seconds per call of fn (n calls)."""
    return _wall_total(fn, n, sync) / n


def _versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("cupy", "jax", "jaxlib", "torch", "numba", "numba_cuda"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # not installed or no version attribute
            out[mod] = None
    return out


def device_meta():
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(0)
    meta = {"name": props["name"].decode(), "compute_capability": f"{props['major']}.{props['minor']}",
            "multiprocessors": props["multiProcessorCount"],
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "driver_version": cp.cuda.runtime.driverGetVersion(),
            "runtime_version": cp.cuda.runtime.runtimeGetVersion()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        meta["nvidia_smi"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        meta["nvidia_smi"] = None
    return meta


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------
def bench_fused(params, args, dtype):
    kernels.get_backend("cupy")  # a one-line error with the reason when it cannot run
    from kernels.cupy import graph
    res = {}
    t0 = time.perf_counter()
    tr = graph.GraphTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype)
    res["setup_s"] = time.perf_counter() - t0  # compile (first time), buffers, warm-up, capture
    for _ in range(10):
        tr.step()
    res["step_s"] = _wall(tr.step, args.repeats, tr.synchronize)
    eager = graph.GraphTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype, use_graph=False)
    res["eager_step_s"] = _wall(eager.step, args.repeats, eager.synchronize)
    # graph_steps steps in one graph: no host work between steps
    k = args.graph_steps
    with tr.stream:
        tr.stream.begin_capture()
        for _ in range(k):
            tr._launch(apply=1)
        big = tr.stream.end_capture()
    big.upload(tr.stream)
    big.launch(tr.stream)
    res["device_step_s"] = _wall(lambda: big.launch(tr.stream), max(1, args.repeats // k), tr.synchronize) / k
    res["launch_overhead"] = 1 - res["device_step_s"] / res["step_s"]
    res["eager_launch_overhead"] = 1 - res["device_step_s"] / res["eager_step_s"]
    fresh = graph.GraphTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype)
    fresh.synchronize()
    t0 = time.perf_counter()
    fresh.run(args.steps)
    fresh.synchronize()
    res["fig2_s"] = time.perf_counter() - t0
    res["fig2_final_batch_loss"] = fresh.loss()
    logged = graph.GraphTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype)
    logged.synchronize()
    t0 = time.perf_counter()
    log = logged.run(args.steps, log_every=100)
    logged.synchronize()
    res["fig2_logged_s"] = time.perf_counter() - t0
    res["fig2_loss_every_100"] = [loss for _, loss in log]
    return res


def _event_time(launch, n, stream):
    """Seconds per call of launch() measured by two CUDA events on `stream` around n calls."""
    import cupy as cp
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(stream)
    for _ in range(n):
        launch()
    end.record(stream)
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1e-3 / n


def _graph_time(tr, launch_once, args):
    """Seconds per launch_once() from events around replays of a graph of graph_steps of them."""
    k = args.graph_steps
    with tr.stream:
        tr.stream.begin_capture()
        for _ in range(k):
            launch_once()
        g = tr.stream.end_capture()
    g.upload(tr.stream)
    g.launch(tr.stream)  # warm-up replay
    return _event_time(lambda: g.launch(tr.stream), max(1, args.repeats // k), tr.stream) / k


def bench_sweep(params, args, dtype):
    """Time per fused step (CUDA events, replayed graphs) over batch sizes, with launch shapes."""
    from kernels.cupy import graph
    out = {}
    for B in [int(b) for b in args.sweep_batches.split(",")]:
        tr = graph.GraphTrainer(params, FIG2, FIG2_ADAM, B, args.seed, dtype=dtype)
        ln = tr.buf.launch
        out[str(B)] = {"graph_step_s": _graph_time(tr, lambda: tr._launch(apply=1), args),
                       "grid": ln.grid, "warps_per_block": ln.warps_per_block,
                       "tasks_per_warp": ln.tasks_per_warp, "finish_in_kernel": ln.finish_in_kernel}
    return out


def bench_tail(params, args, dtype):
    """The tail (partial rows summed, norm, Adam) against the per-task compute, at --batch."""
    from kernels.cupy import build as cb
    from kernels.cupy import graph
    one = graph.GraphTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype)
    saved = cb.REDUCE_IN_KERNEL_ENTRIES
    cb.REDUCE_IN_KERNEL_ENTRIES = 0  # the two-launch step: model_step, then model_step_finish
    try:
        two = graph.GraphTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype)
    finally:
        cb.REDUCE_IN_KERNEL_ENTRIES = saved
    generic = graph.GraphTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype,
                                 specialize=False)
    res = {"one_launch_step_s": _graph_time(one, lambda: one._launch(apply=1), args),
           "generic_one_launch_step_s": _graph_time(generic, lambda: generic._launch(apply=1), args),
           "two_launch_step_s": _graph_time(two, lambda: two._launch(apply=1), args),
           "compute_s": _graph_time(two, lambda: two.buf.launch_step(
               two.vec, None, None, two.draw, None, 1, two.m, two.v, two.step_dev, two.adam_cfg,
               stream=two.stream, finish=False), args)}
    res["tail_one_launch_s"] = res["one_launch_step_s"] - res["compute_s"]
    res["tail_two_launch_s"] = res["two_launch_step_s"] - res["compute_s"]
    return res


def bench_unfused(params, args, dtype):
    import cupy as cp
    be = kernels.get_backend("cupy-unfused")
    from kernels.cupy import graph  # the device draw of the fused backend
    p = {k: cp.asarray(v) for k, v in params.items()}
    state = {"p": p, "s": be.adam_init(p), "t": 0}

    def step():
        tok, y = graph.draw_tasks(args.seed, state["t"], args.batch, dtype=dtype)  # device draw
        state["p"], state["s"], state["loss"] = be.train_step(state["p"], state["s"], tok, y, FIG2, FIG2_ADAM)
        state["t"] += 1

    sync = cp.cuda.Device().synchronize
    for _ in range(5):
        step()
    res = {"step_s": _wall(step, max(10, args.repeats // 10), sync)}
    state.update(p={k: cp.asarray(v) for k, v in params.items()}, t=0)
    state["s"] = be.adam_init(state["p"])
    res["fig2_s"] = _wall_total(step, args.steps, sync)
    res["fig2_final_batch_loss"] = float(state["loss"])
    return res


def bench_numba_cuda(params, args, dtype):
    """numba-cuda: its DeviceTrainer (device-drawn batches, nothing per step but launches: step_s,
    fig2_s, the same task stream as the fused trainer) and the functional train_step on one fixed
    batch (three output vectors allocated and one host wait per step: functional_step_s)."""
    names = [n for n in kernels.backend_names() if "numba" in n and "cuda" in n]
    if not names:
        return {"skipped": "no numba CUDA backend registered in kernels.BACKENDS"}
    ok, reason = kernels.availability(names[0])
    if not ok:
        return {"skipped": f"{names[0]}: {reason}"}
    from numba import cuda

    from kernels.numba.gpu_trainer import DeviceTrainer
    be = kernels.get_backend(names[0])
    sync = cuda.synchronize
    res = {"backend": names[0]}
    t0 = time.perf_counter()
    tr = DeviceTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype)
    tr.run(3)
    sync()
    res["setup_s"] = time.perf_counter() - t0  # compiles (first time), buffers, warm-up
    res["step_s"] = _wall(tr.step, args.repeats, sync)
    fresh = DeviceTrainer(params, FIG2, FIG2_ADAM, args.batch, args.seed, dtype=dtype)
    res["fig2_s"] = _wall_total(fresh.step, args.steps, sync)
    res["fig2_final_batch_loss"] = fresh.loss()
    tok, y = tr.draw.draw(0)  # one fixed batch on the device
    state = {"p": {k: be.asarray(v) for k, v in params.items()}}
    state["s"] = be.adam_init(state["p"])

    def step():
        state["p"], state["s"], _ = be.train_step(state["p"], state["s"], tok, y, FIG2, FIG2_ADAM)

    for _ in range(3):
        step()
    res["functional_step_s"] = _wall(step, max(1, args.repeats // 10), sync)
    return res


def bench_jax(params, args, dtype):
    try:
        import jax
    except ImportError as e:
        return {"skipped": f"JAX not installed ({e}); pip install 'jax[cuda12]'"}
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        return {"skipped": "JAX has no GPU backend; pip install 'jax[cuda12]'"}
    from benchmarks.peers import JaxPeer
    jax.config.update("jax_default_matmul_precision", "highest")  # float32 products, as the others
    peer = JaxPeer(FIG2, FIG2_ADAM, batch=args.batch, dtype=dtype, device=gpus[0])
    st = {"s": peer.init_state(params, args.seed)}

    def step():
        st["s"], st["loss"] = peer.train_step(st["s"])

    sync = lambda: jax.block_until_ready(st["s"])  # noqa: E731
    t0 = time.perf_counter()
    step()
    sync()
    res = {"setup_s": time.perf_counter() - t0, "device": str(gpus[0]), "matmul_precision": "highest"}
    res["step_s"] = _wall(step, args.repeats, sync)
    k = args.graph_steps
    loop = lambda: st.__setitem__("l", peer.train_loop(st["s"], k))  # noqa: E731
    loop()
    jax.block_until_ready(st["l"])
    res["device_step_s"] = _wall(loop, max(1, args.repeats // k), lambda: jax.block_until_ready(st["l"])) / k
    res["launch_overhead"] = 1 - res["device_step_s"] / res["step_s"]
    st["s"] = peer.init_state(params, args.seed)
    res["fig2_s"] = _wall_total(step, args.steps, sync)
    res["fig2_final_batch_loss"] = float(st["loss"])
    return res


def bench_torch(params, args, dtype, compile):
    try:
        import torch
    except ImportError as e:
        return {"skipped": f"PyTorch not installed ({e})"}
    if not torch.cuda.is_available():
        return {"skipped": f"PyTorch {torch.__version__} has no CUDA device (a CPU build?)"}
    from benchmarks.peers import TorchPeer
    peer = TorchPeer(FIG2, FIG2_ADAM, batch=args.batch, dtype=dtype, device="cuda", compile=compile)
    st = peer.init_state(params, args.seed)
    t0 = time.perf_counter()
    for _ in range(3):  # torch.compile compiles here
        peer.train_step(st)
    peer.synchronize()
    res = {"setup_s": time.perf_counter() - t0, "device": torch.cuda.get_device_name(0),
           "allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    res["step_s"] = _wall(lambda: peer.train_step(st), args.repeats, peer.synchronize)
    res["launch_overhead"] = None  # not measured: no launch-free variant of the eager step
    st = peer.init_state(params, args.seed)
    last = {}

    def train_step():
        last["loss"] = peer.train_step(st)

    res["fig2_s"] = _wall_total(train_step, args.steps, peer.synchronize)
    res["fig2_final_batch_loss"] = float(last["loss"])
    return res


# ----------------------------------------------------------------------------------------------
def _write(out, result):
    """The JSON so far, written atomically (a temporary file renamed over `out`)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, out)


def main(argv=None):
    args = parse_args(argv)
    ok, reason = kernels.availability("cupy")
    if not ok:
        print(f"bench_cupy: cannot benchmark without a usable GPU: {reason}", file=sys.stderr)
        return 2
    dtype = np.dtype(args.dtype)
    params = init_params(FIG2, np.random.default_rng(args.seed), dtype)
    meta = device_meta()
    out = args.out
    peers = [p for p in args.peers.split(",") if p]
    result = {
        "benchmark": "fig2 training step: 1-layer LSA, online tasks drawn on the device",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(), "device": meta, "versions": _versions(),
        "shapes": {"B": args.batch, "N": 10, "d": 10, "T": 11, "D": 11, "dtype": args.dtype,
                   "steps": args.steps, "repeats": args.repeats, "graph_steps": args.graph_steps},
        "model": config_to_dict(FIG2), "adam": config_to_dict(FIG2_ADAM),
        "definitions": __doc__.split("Definitions")[1].split("Exits")[0].strip(),
        "results": {},
        "complete": False,  # True once every part has run
    }
    runs = {"fused_cupy": lambda: bench_fused(params, args, dtype),
            "unfused": lambda: bench_unfused(params, args, dtype),
            "numba_cuda": lambda: bench_numba_cuda(params, args, dtype),
            "jax": lambda: bench_jax(params, args, dtype),
            "torch": lambda: bench_torch(params, args, dtype, compile=False),
            "torch_compile": lambda: bench_torch(params, args, dtype, compile=True)}
    for name, fn in runs.items():
        if name != "fused_cupy" and name not in peers:
            continue
        print(f"bench_cupy: {name} ...", file=sys.stderr, flush=True)
        try:
            result["results"][name] = fn()
        except Exception as e:  # a failing peer is recorded, never replaced by a number
            result["results"][name] = {"error": f"{type(e).__name__}: {e}"}
        _write(out, result)  # after every part: a run cut short keeps what it measured
    if args.sweep:
        for name, fn in (("sweep", bench_sweep), ("tail", bench_tail)):
            print(f"bench_cupy: {name} ...", file=sys.stderr, flush=True)
            try:
                result[name] = fn(params, args, dtype)
            except Exception as e:  # recorded, never replaced by a number
                result[name] = {"error": f"{type(e).__name__}: {e}"}
            _write(out, result)
    fused = result["results"]["fused_cupy"]
    result["speedup_vs"] = {}
    for name, r in result["results"].items():
        if name == "fused_cupy" or "step_s" not in r or "step_s" not in fused:
            continue
        result["speedup_vs"][name] = {"step": r["step_s"] / fused["step_s"],
                                      "fig2": r["fig2_s"] / fused["fig2_s"] if "fig2_s" in r else None}
    result["complete"] = True
    _write(out, result)
    if "step_s" not in fused:
        print(f"bench_cupy: the fused step failed: {fused}", file=sys.stderr)
        return 1
    print(json.dumps({"out": out, "fused_step_us": fused["step_s"] * 1e6, "fused_fig2_s": fused["fig2_s"],
                      "speedup_vs": result["speedup_vs"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
