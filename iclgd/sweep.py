"""Sweeps: one experiment over seeds x a grid of config values. Every (point, seed) is a job: an
ordinary run (iclgd.cli.run.run_in_folder) in its own folder, resumable from its checkpoints. Jobs
go to any concurrent.futures.Executor: a local process pool (`local_executor`) or the executor of a
dask.distributed Client (`Client.get_executor()`), through the one loop `execute`.

    DIR/sweep.json               the merge (iclgd/sweep_merge.py): per point, mean / std / per-seed
                                 final numbers and curves
    DIR/sweep.png, sweep.pdf     the curves with bands across seeds
    DIR/POINT/seedS/             one job's run folder (results.json, checkpoints/, its figure)
POINT names the grid values, e.g. `train.lr=0.002__heads=2` ("base" with no --grid).

A job whose folder holds complete results of the same config, seed, backend and quick flag is
skipped. Any other job resumes its checkpoints when it has some. A job whose worker died (the pool
broke, Dask's KilledWorker) is submitted again, resuming, up to `retries` times; a job that raised
(bad input, a bug) or diverged is not retried: it would do the same again.
"""
import collections
import concurrent.futures as cf
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

# exceptions by which an executor says the worker running a job died (matched by class name, so
# that distributed need not be importable): the job is submitted again
WORKER_DIED = ("BrokenProcessPool", "KilledWorker", "CommClosedError")
# thread counts of the libraries a job uses: one each, since a sweep runs one job per core
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
GPU_BACKENDS = ("numba-cuda", "cupy", "cupy-unfused")
FOLDER_CHARS = re.compile(r"[^A-Za-z0-9._=+-]")


def parse_seeds(text):
    """'0-9' -> [0..9]; '0,3,7' -> [0, 3, 7]; '4' -> [4]; items of either kind joined by commas.
    ValueError naming --seeds for anything else, a reversed range or a repeated seed."""
    seeds = []
    for item in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if not m:
            raise ValueError(f"--seeds: expected seeds like 0-9 or 0,3,7 (integers >= 0), got {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise ValueError(f"--seeds: expected a range low-high with low <= high, got {item.strip()!r}")
        seeds.extend(range(lo, hi + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"--seeds: expected each seed once, got {repeated} more than once in {text!r}")
    return seeds


def split_values(text):
    """'a,b,[1, 2],c' -> ['a', 'b', '[1, 2]', 'c']: commas inside brackets or quotes do not split."""
    values, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return values


def parse_grid(items, overrides=()):
    """['key=v1,v2', ...] -> [(key, [v1, v2]), ...] in the order given; ValueError naming --grid for
    a missing '=', an empty or repeated value, a key given twice or also given with --set."""
    grid, set_keys = [], {o.split("=", 1)[0].strip() for o in overrides}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid: expected KEY=V1,V2,..., got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        values = split_values(text)
        if not key or any(v == "" for v in values):
            raise ValueError(f"--grid: expected a key and non-empty values, got {item!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"--grid {key}: expected each value once, got {values}")
        if key in (k for k, _ in grid) or key in set_keys:
            raise ValueError(f"--grid {key}: expected each key once (in --grid and --set together), got it twice")
        grid.append((key, values))
    return grid


def grid_points(grid):
    """The points of the grid, the first key varying slowest: [[(key, value), ...], ...] ([[]] with no grid)."""
    points = [[]]
    for key, values in grid:
        points = [p + [(key, v)] for p in points for v in values]
    return points


def point_name(settings):
    """The folder name of a point: 'key=value' joined by '__', without spaces, characters other
    than letters, digits and . _ = + - replaced by '_'; 'base' with no grid."""
    return "__".join(FOLDER_CHARS.sub("_", re.sub(r"\s+", "", f"{k}={v}")) for k, v in settings) or "base"


@dataclass(frozen=True)
class Job:
    """One run of a sweep: what a worker needs to run it (strings and numbers, cheap to send)."""
    experiment: str
    point: str  # the point's folder name
    settings: tuple  # ((key, value text), ...) of the grid
    overrides: tuple  # every --set and grid override, "key=value"
    seed: int
    backend: str
    quick: bool
    out: str  # the run folder: DIR/POINT/seedS
    figure: bool = False  # draw the run's own figure too (`iclgd plot DIR/POINT/seedS` draws it later)


def plan(experiment, seeds, grid, overrides, backend, quick, out, figure=False):
    """The jobs of a sweep, each point's config resolved (so bad keys or values fail here, before
    anything runs): [(Job, config as a dict)]. ValueError when two points share a folder name."""
    from iclgd.cli.run import resolve_config
    from refimpl.config import config_to_dict
    jobs, names = [], {}
    for settings in grid_points(grid):
        name = point_name(settings)
        if name in names:
            raise ValueError(f"--grid: points {names[name]} and {dict(settings)} share the folder name {name!r}; "
                             f"write their values alike")
        names[name] = dict(settings)
        every = tuple(overrides) + tuple(f"{k}={v}" for k, v in settings)
        _, cfg = resolve_config(experiment, quick, list(every))
        for seed in seeds:
            jobs.append((Job(experiment, name, tuple(settings), every, int(seed), backend, bool(quick),
                             os.path.join(out, name, f"seed{seed}"), figure), config_to_dict(cfg)))
    return jobs


def is_complete(job, config):
    """True when the job's folder holds complete results of this config, seed, backend and quick flag."""
    from iclgd.results import RESULTS_FILE, _jsonable
    try:
        with open(os.path.join(job.out, RESULTS_FILE)) as f:
            r = json.load(f)
        return (r.get("status", "complete") == "complete" and r["experiment"] == job.experiment
                and r["seeds"] == [job.seed] and r["backend"] == job.backend and bool(r["quick"]) == job.quick
                and r["config"] == json.loads(json.dumps(_jsonable(config))))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def one_thread_each():
    """Set the thread counts of BLAS, OpenMP and Numba to one in this process (a sweep's worker):
    the environment for libraries not loaded yet, and OpenBLAS and Numba at run time where loaded."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    import sys
    if "numpy" in sys.modules:
        from iclgd.runtime import single_threaded_blas
        single_threaded_blas()
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(1)


def run_job(job):
    """Run one job in its folder (in a worker): resume its checkpoints if it has some. Returns
    {"status": "complete" | "diverged", "pid": worker PID, "seconds": wall time}. In a local pool's
    worker (the main thread) Ctrl-C interrupts the job as it does `iclgd run`; between jobs it is
    ignored there, and the pool's shutdown ends the worker."""
    one_thread_each()
    from iclgd import rundir
    from iclgd.cli.run import resolve_config, run_in_folder
    start = time.perf_counter()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    try:
        mod, cfg = resolve_config(job.experiment, job.quick, list(job.overrides))
        results = run_in_folder(job.experiment, mod, cfg, [job.seed], job.backend, job.out, quick=job.quick,
                                resume=bool(rundir.checkpoint_files(job.out)), progress=False, figure=job.figure)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return {"status": results["status"], "pid": os.getpid(), "seconds": time.perf_counter() - start}


def _init_local_worker(devices):
    """Initializer of a local pool's worker: one thread per library; with `devices` (a queue of
    GPU ids), one device per worker through CUDA_VISIBLE_DEVICES; Ctrl-C ignored between jobs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get(timeout=60))


def local_executor(jobs, devices=None):
    """A process pool of `jobs` workers (spawned, so each starts with one thread per library); with
    `devices` (GPU ids, at least `jobs` of them), worker i of the pool owns one device."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    queue = None
    if devices is not None:
        queue = ctx.Queue()
        for d in list(devices)[:jobs]:
            queue.put(d)
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_local_worker,
                                  initargs=(queue,))


def gpu_devices():
    """The GPU ids visible here: CUDA_VISIBLE_DEVICES if set, else those `nvidia-smi -L` lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@dataclass
class Outcome:
    status: str  # "complete", "diverged", "failed", "skipped" (complete before), "interrupted", "pending"
    attempts: int = 0  # submissions of the job (retries after a worker died included)
    error: str = ""  # why it failed


class Interrupted(Exception):
    """Ctrl-C during a sweep; `outcomes` holds what finished before it."""

    def __init__(self, outcomes):
        super().__init__("interrupted")
        self.outcomes = outcomes


class Progress:
    """One tqdm bar over the jobs, its postfix the done / running / failed counts (retried too)."""

    def __init__(self, total, skipped, desc, enabled):
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=skipped, desc=desc, unit="run", disable=not enabled)
        self.done, self.failed, self.retried, self.text = skipped, 0, 0, ""

    def show(self, running):
        text = f"done {self.done}, running {running}, failed {self.failed}, retried {self.retried}"
        if text != self.text:
            self.text = text
            self.bar.set_postfix_str(text)

    def finished(self, ok):
        self.done += ok
        self.failed += not ok
        self.bar.update(1)

    def close(self):
        self.bar.close()


def execute(jobs, make_executor, capacity, retries=2, progress=None, poll_s=0.5, fn=run_job):
    """Run `fn(job)` (run_job) for `jobs` on the executor `make_executor()` returns, at most
    `capacity()` in flight; a job whose worker died goes again (a broken pool is replaced by a new
    one), at most `retries` times more. Returns {job: Outcome}; Ctrl-C raises Interrupted with the
    outcomes so far, after stopping the pool's workers (their jobs keep their checkpoints)."""
    outcomes = {job: Outcome("pending") for job in jobs}
    pending, inflight = collections.deque(jobs), {}  # future -> (job, executor generation)
    executor, generation = make_executor(), 0
    try:
        while pending or inflight:
            while pending and len(inflight) < max(1, capacity()):
                job = pending.popleft()
                outcomes[job].attempts += 1
                try:
                    future = executor.submit(fn, job)
                except RuntimeError as e:  # the pool broke before its futures told us
                    if type(e).__name__ != "BrokenProcessPool":
                        raise
                    executor, generation = _replaced(executor, make_executor), generation + 1
                    future = executor.submit(fn, job)
                inflight[future] = (job, generation)
            if progress:
                progress.show(len(inflight))
            done, _ = cf.wait(list(inflight), timeout=poll_s, return_when=cf.FIRST_COMPLETED)
            broken = False
            for future in done:
                job, gen = inflight.pop(future)
                outcome = outcomes[job]
                try:
                    outcome.status = future.result()["status"]
                except Exception as e:  # noqa: BLE001  reported per job, the sweep goes on
                    died = type(e).__name__ in WORKER_DIED
                    broken |= type(e).__name__ == "BrokenProcessPool" and gen == generation
                    if died and outcome.attempts <= retries:
                        pending.append(job)  # resumes from its checkpoints
                        if progress:
                            progress.retried += 1
                        continue
                    outcome.status = "failed"
                    outcome.error = (f"its worker died {outcome.attempts} times" if died
                                     else f"{type(e).__name__}: {e}")
                if progress:
                    progress.finished(outcome.status == "complete")
            if broken:  # the pool is unusable: its other jobs fail with it and go again on a new one
                executor, generation = _replaced(executor, make_executor), generation + 1
        executor.shutdown(wait=True)  # (a Ctrl-C while the workers stop is an interruption too)
    except KeyboardInterrupt:
        for future, (job, _) in inflight.items():
            future.cancel()
        for outcome in outcomes.values():  # submitted (perhaps as Ctrl-C came) and not finished
            if outcome.status == "pending" and outcome.attempts:
                outcome.status = "interrupted"
        stop_workers(executor)
        raise Interrupted(outcomes) from None
    finally:
        if progress:
            progress.show(len(inflight))
    return outcomes


def _replaced(executor, make_executor):
    """A new executor in place of a broken local pool."""
    executor.shutdown(wait=False, cancel_futures=True)
    return make_executor()


def stop_workers(executor):
    """After Ctrl-C: send SIGINT to a local pool's workers (a terminal sends it to them too; a
    signal sent to this process alone does not), so that each job stops as `iclgd run` does on
    Ctrl-C, then shut the pool down. A Dask executor's tasks were cancelled by the caller."""
    if not isinstance(executor, cf.ProcessPoolExecutor):
        executor.shutdown(wait=False)
        return
    for pid in list(getattr(executor, "_processes", None) or {}):  # {PID: Process}
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass
    try:
        executor.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:  # a second Ctrl-C: do not wait
        executor.shutdown(wait=False, cancel_futures=True)
