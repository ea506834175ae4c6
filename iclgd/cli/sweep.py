"""`iclgd sweep EXPERIMENT --seeds 0-9 --grid KEY=V1,V2 ...`: one run per (grid point, seed), each
in its own resumable folder DIR/POINT/seedS, on a local process pool (default: one job per core, one
BLAS/Numba thread each; one per GPU with a GPU backend), on a Dask scheduler (--scheduler) or on a
SLURM cluster through dask-jobqueue (--cluster slurm); merged into DIR/sweep.json and drawn in
DIR/sweep.png with bands across seeds (iclgd/sweep.py, iclgd/sweep_merge.py, docs/sweeps.md).

Runs that are complete are skipped, so the same command continues an interrupted sweep. Exit 0 when
every run is complete, 1 when one failed or diverged (the others are merged), 130 on Ctrl-C (the
finished runs are kept and merged, the running ones keep their checkpoints).
"""
import json
import os
import sys
import time

INSTALL_CLUSTER = 'pip install -e ".[cluster]"'  # dask.distributed and dask-jobqueue
SLURM_DEFAULTS = {"cores": 1, "processes": 1, "memory": "4GB", "walltime": "06:00:00"}
SLURM_PROLOGUE = [f"export {v}=1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                            "NUMBA_NUM_THREADS")]


def add_arguments(parser):
    from kernels import DEFAULT_BACKEND, backend_names
    parser.add_argument("experiment", help="experiment name (see `iclgd list`)")
    parser.add_argument("--seeds", default="0", help="seeds: a range 0-9, a list 0,3,7 or one seed 4 (default 0)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a config key and its values, one run per value (repeatable: the product of "
                             "all --grid keys); commas inside brackets do not split, e.g. 'sizes=[16,64],[256]'")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field for every run, as `iclgd run --set` (repeatable)")
    parser.add_argument("--out", default=None, help="sweep folder (default runs/sweep-EXPERIMENT)")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=backend_names(), metavar="NAME",
                        help=f"backend of every run: {', '.join(backend_names())} (default {DEFAULT_BACKEND}; "
                             f"numpy is the float64 oracle)")
    parser.add_argument("--quick", action="store_true", help="every run with the experiment's --quick settings")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on this dask.distributed scheduler (e.g. tcp://10.0.0.5:8786) instead of a "
                            f"local pool; needs {INSTALL_CLUSTER}")
    where.add_argument("--cluster", choices=["slurm"], default=None,
                       help=f"start Dask workers as SLURM jobs through dask-jobqueue; needs {INSTALL_CLUSTER}")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local pool: runs at once (default one per core, or per GPU with a GPU backend); "
                             "--cluster: SLURM jobs to start, one worker each (default 4)")
    parser.add_argument("--cluster-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a SLURMCluster argument, e.g. queue=gpu, account=proj, walltime=12:00:00, "
                             f"memory=8GB (repeatable; default {SLURM_DEFAULTS}); a JSON value is parsed")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a run whose worker died is submitted again, resuming (default 2)")
    parser.add_argument("--run-figures", action="store_true",
                        help="draw each run's own figure too (off: a sweep draws sweep.png; `iclgd plot "
                             "DIR/POINT/seedS` draws one run's later)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and which are complete; run none")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from kernels import get_backend
    from iclgd import rundir
    from iclgd.sweep import is_complete, parse_grid, parse_seeds, plan
    seeds = parse_seeds(args.seeds)
    grid = parse_grid(args.grid, args.overrides)
    if args.retries < 0:
        raise ValueError(f"--retries: expected an integer >= 0, got {args.retries}")
    if args.jobs is not None and (args.jobs < 1 or args.scheduler):
        raise ValueError(f"--jobs: expected an integer >= 1 with a local pool or --cluster (not with --scheduler), "
                         f"got {args.jobs}{' with --scheduler' if args.scheduler else ''}")
    if args.cluster_option and not args.cluster:
        raise ValueError("--cluster-option: expected with --cluster slurm, got it without")
    get_backend(args.backend)  # unavailable: the reason and the install command, before anything runs
    out = args.out or os.path.join("runs", f"sweep-{args.experiment}")
    jobs = plan(args.experiment, seeds, grid, args.overrides, args.backend, args.quick, os.path.abspath(out),
                args.run_figures)
    complete = {job for job, config in jobs if is_complete(job, config)}
    todo = [job for job, _ in jobs if job not in complete]
    if args.dry_run:
        for job, _ in jobs:
            print(f"{os.path.join(out, job.point, f'seed{job.seed}')}: {'complete' if job in complete else 'to run'}")
        return 0
    with rundir.locked(out):
        return _sweep(args, out, seeds, grid, jobs, complete, todo)


def _sweep(args, out, seeds, grid, planned, complete, todo):
    from iclgd.sweep import Interrupted, Outcome, Progress, execute, is_complete
    start = time.perf_counter()
    outcomes = {job: Outcome("skipped") for job in complete}
    interrupted = False
    if todo:
        make_executor, capacity, close = executor_for(args, len(todo))  # no dask: its one-line error
        progress = Progress(len(planned), len(complete), f"sweep {args.experiment}", not args.no_progress)
        try:
            outcomes.update(execute(todo, make_executor, capacity, args.retries, progress))
        except Interrupted as e:
            outcomes.update(e.outcomes)
            interrupted = True
        except KeyboardInterrupt:  # Ctrl-C outside execute's own handler: its outcomes are read below
            interrupted = True
        finally:
            progress.close()
            close()
    for job, config in planned:  # a run stopped after writing its results (while drawing, say) is complete
        outcome = outcomes.setdefault(job, Outcome("pending"))
        if outcome.status in ("interrupted", "pending") and is_complete(job, config):
            outcome.status = "complete"
    jobs = [job for job, _ in planned]
    sweep_json = os.path.join(out, "sweep.json")
    try:
        sweep = write_sweep(args, out, seeds, grid, jobs, outcomes, time.perf_counter() - start)
    except KeyboardInterrupt:  # sweep.json is written whole or not at all: the runs are safe either way
        print(f"iclgd sweep: interrupted while merging into {sweep_json}; the same command continues (complete "
              f"runs are skipped, the others resume their checkpoints) and merges again", file=sys.stderr)
        return 130
    from iclgd.sweep_merge import summary_lines
    print("\n".join(summary_lines(sweep)))
    if interrupted:
        done = sum(o.status in ("complete", "skipped") for o in outcomes.values())
        print(f"iclgd sweep: interrupted; {done} of {len(jobs)} runs complete and merged into "
              f"{sweep_json}; the same command continues (complete runs are skipped, "
              f"the others resume their checkpoints)", file=sys.stderr)
        return 130
    return 0 if sweep["status"] == "complete" else 1


def write_sweep(args, out, seeds, grid, jobs, outcomes, runtime_s):
    """Merge every point's complete runs into DIR/sweep.json and draw DIR/sweep.png; the merge."""
    from refimpl.atomic import atomic_write
    from iclgd.experiments import EXPERIMENTS
    from iclgd.results import _jsonable
    from iclgd.sweep_merge import SWEEP_FILE, merge, plot_sweep
    from iclgd.versions import versions
    points = {}
    for job in jobs:
        o = outcomes[job]
        entry = points.setdefault(job.point, (job.point, os.path.abspath(out), job.settings, seeds, {}))
        entry[4][job.seed] = {"status": o.status, "attempts": o.attempts, "error": o.error}
    header = {"experiment": args.experiment, "figure": EXPERIMENTS[args.experiment][1], "seeds": seeds,
              "grid": [[k, v] for k, v in grid], "overrides": list(args.overrides), "backend": args.backend,
              "quick": bool(args.quick), "versions": versions(), "runtime_s": runtime_s}
    sweep = _jsonable(merge(header, list(points.values())))
    path = os.path.join(out, SWEEP_FILE)
    with atomic_write(path, "w") as f:
        f.write(json.dumps(sweep, indent=1) + "\n")
    print(f"wrote {path}")
    if any(p.get("curves") for p in sweep["points"]):
        for p in plot_sweep(sweep, out):
            print(f"wrote {p}")
    return sweep


def executor_for(args, n_todo):
    """(make_executor, capacity, close) for the local pool, --scheduler or --cluster slurm."""
    if args.scheduler or args.cluster:
        return _dask_executor(args, n_todo)
    from iclgd.sweep import GPU_BACKENDS, gpu_devices, local_executor
    devices = None
    limit = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.backend in GPU_BACKENDS:
        devices = gpu_devices()
        if not devices:
            raise ValueError(f"--backend {args.backend}: expected a visible GPU (CUDA_VISIBLE_DEVICES, or "
                             f"nvidia-smi -L), found none")
        if args.jobs is not None and args.jobs > len(devices):
            raise ValueError(f"--jobs: expected at most {len(devices)} with backend {args.backend} (one run per "
                             f"GPU; visible: {', '.join(devices) or 'none'}), got {args.jobs}")
        limit = len(devices)
    n = args.jobs or max(1, min(n_todo, limit))
    return (lambda: local_executor(n, devices)), (lambda: n), (lambda: None)


def _dask_executor(args, n_todo):
    try:
        from distributed import Client
    except ImportError:
        flag = "--scheduler" if args.scheduler else "--cluster"
        raise ValueError(f"{flag}: needs dask.distributed, which is not installed; install: {INSTALL_CLUSTER}") from None
    cluster = None
    if args.cluster:
        cluster = _slurm_cluster(args, n_todo)
        client = Client(cluster)
    else:
        try:
            client = Client(args.scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as e:  # unreachable; not an address
            raise ValueError(f"--scheduler {args.scheduler}: cannot connect ({type(e).__name__}: {e}); expected "
                             f"the address of a running dask scheduler, e.g. tcp://HOST:8786") from None
    executor = client.get_executor(pure=False)  # pure=False: a resubmitted run is a new task

    def capacity():
        return sum(client.nthreads().values())

    def close():
        client.close()
        if cluster is not None:
            cluster.close()
    return (lambda: executor), capacity, close


def slurm_options(items):
    """SLURMCluster's keyword arguments: SLURM_DEFAULTS, the one-thread prologue, then each
    --cluster-option KEY=VALUE (VALUE parsed as JSON where it is JSON, else kept as text)."""
    options = dict(SLURM_DEFAULTS, job_script_prologue=list(SLURM_PROLOGUE))
    for item in items:
        if "=" not in item:
            raise ValueError(f"--cluster-option: expected KEY=VALUE, got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    return options


def _slurm_cluster(args, n_todo):
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ValueError(f"--cluster slurm: needs dask-jobqueue, which is not installed; install: {INSTALL_CLUSTER}") from None
    try:
        cluster = SLURMCluster(**slurm_options(args.cluster_option))
    except TypeError as e:  # an argument SLURMCluster does not take
        raise ValueError(f"--cluster-option: {e}") from None
    cluster.scale(jobs=args.jobs or min(n_todo, 4))
    return cluster
