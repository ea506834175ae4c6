"""`iclgd sweep` end to end on tiny fig2 runs, in a subprocess as a user runs it: a Dask LocalCluster
with 2 workers runs and merges a 4-run sweep, a rerun skips every finished run, the local pool merges
to the same numbers; a worker killed mid-run (Dask, local pool) still completes the sweep; Ctrl-C
keeps the finished runs and the same command continues. Without dask the flags give the install
command."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, SIGINT_AS_IN_A_TERMINAL, cli_subprocess

TINY = ["--quick", "--set", "train.steps=20", "--set", "task.eval_tasks=200", "--set", "train.eval_every=10",
        "--set", "train.checkpoint_every=10", "--no-progress"]
GRID = ["--seeds", "0-1", "--grid", "train.lr=0.001,0.002"]


def _sweep_json(folder):
    with open(os.path.join(folder, "sweep.json")) as f:
        return json.load(f)


def _results(folder, point, seed):
    with open(os.path.join(folder, point, f"seed{seed}", "results.json")) as f:
        return json.load(f)


def _popen(*argv):
    code = SIGINT_AS_IN_A_TERMINAL + "import sys\nfrom iclgd.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _running_job_pid(folder, proc, timeout=300, seed="seed"):
    """The PID of the worker holding the lock of a run folder under `folder` whose name starts with
    `seed` (the PID is in the lock file), once there is one."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for root, _, files in os.walk(folder):
            if ".iclgd.lock" in files and os.path.basename(root).startswith(seed):
                try:
                    return int(open(os.path.join(root, ".iclgd.lock")).read().strip())
                except (OSError, ValueError):
                    continue
        time.sleep(0.05)
    raise AssertionError(f"no run started under {folder}: {proc.communicate()}")


def _kill_a_running_job(folder, proc, timeout=300):
    """SIGKILL the worker running a job under `folder`; the PID."""
    pid = _running_job_pid(folder, proc, timeout)
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c, distributed.Client(c) as client:
        yield c, client


@pytest.mark.slow
def test_dask_sweep_merges_reruns_skip_and_the_local_pool_agrees(cluster, tmp_path):
    c, _ = cluster
    on_dask, local = tmp_path / "dask", tmp_path / "local"
    p = cli_subprocess("sweep", "fig2", *GRID, *TINY, "--out", on_dask, "--scheduler", c.scheduler_address)
    assert p.returncode == 0, p.stderr
    sweep = _sweep_json(on_dask)
    assert sweep["status"] == "complete" and [pt["name"] for pt in sweep["points"]] == ["train.lr=0.001",
                                                                                         "train.lr=0.002"]
    for pt in sweep["points"]:
        assert pt["seeds"] == [0, 1] and all(j["status"] == "complete" for j in pt["jobs"].values())
        runs = [_results(on_dask, pt["name"], s) for s in (0, 1)]
        assert all(r["config"]["train"]["lr"] == float(pt["settings"]["train.lr"]) for r in runs)
        losses = [r["final"]["loss_tf"] for r in runs]
        assert pt["final"]["loss_tf"]["per_seed"] == losses
        assert pt["final"]["loss_tf"]["mean"] == pytest.approx(np.mean(losses), rel=1e-15)
        assert pt["curves"]["loss_tf"]["per_seed"] == [r["curves"]["loss_tf"] for r in runs]
    assert os.path.getsize(on_dask / "sweep.png") > 0

    stamps = {f: os.stat(f).st_mtime_ns for f in on_dask.glob("*/seed*/results.json")}
    p = cli_subprocess("sweep", "fig2", *GRID, *TINY, "--out", on_dask, "--scheduler", c.scheduler_address)
    assert p.returncode == 0, p.stderr
    again = _sweep_json(on_dask)
    assert all(j["status"] == "skipped" for pt in again["points"] for j in pt["jobs"].values())
    assert {f: os.stat(f).st_mtime_ns for f in stamps} == stamps  # nothing rerun or rewritten
    assert [pt["final"] for pt in again["points"]] == [pt["final"] for pt in sweep["points"]]

    p = cli_subprocess("sweep", "fig2", *GRID, *TINY, "--out", local, "--jobs", "2")
    assert p.returncode == 0, p.stderr
    pooled = _sweep_json(local)
    for key in ("final", "curves", "tail_median"):  # same seeds, same float64 arithmetic: the same bits
        assert [pt[key] for pt in pooled["points"]] == [pt[key] for pt in sweep["points"]], key


@pytest.mark.slow
def test_dask_sweep_completes_when_a_worker_is_killed_mid_run(cluster, tmp_path):
    c, client = cluster
    proc = _popen("sweep", "fig2", *GRID, *TINY, "--out", tmp_path, "--scheduler", c.scheduler_address)
    killed = _kill_a_running_job(tmp_path, proc)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    sweep = _sweep_json(tmp_path)
    assert sweep["status"] == "complete"
    assert all(pt["seeds"] == [0, 1] for pt in sweep["points"])
    client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker
    assert killed not in client.run(os.getpid).values()


@pytest.mark.slow
def test_local_pool_sweep_retries_the_run_of_a_killed_worker(tmp_path):
    proc = _popen("sweep", "fig2", "--seeds", "0-1", *TINY, "--out", tmp_path, "--jobs", "2")
    _kill_a_running_job(tmp_path, proc)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    jobs = _sweep_json(tmp_path)["points"][0]["jobs"]
    assert all(j["status"] == "complete" for j in jobs.values())
    assert max(j["attempts"] for j in jobs.values()) == 2  # the killed run went again
    for s in (0, 1):
        assert _results(tmp_path, "base", s)["status"] == "complete"


@pytest.mark.slow
def test_ctrl_c_keeps_finished_runs_and_the_same_command_continues(tmp_path):
    # 2 000 steps: long enough that seed 1 is still running when the poll (every 50 ms) finds it,
    # on a fast machine with a warm Numba cache too (20 steps could finish between two polls)
    argv = ["sweep", "fig2", "--seeds", "0-1", *TINY, "--set", "train.steps=2000", "--out", tmp_path, "--jobs", "1"]
    proc = _popen(*argv)
    first = tmp_path / "base" / "seed0" / "results.json"
    _running_job_pid(tmp_path, proc, seed="seed1")  # seed 0 is done, seed 1 is running
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "the same command continues" in err
    sweep = _sweep_json(tmp_path)
    assert sweep["status"] == "interrupted" and sweep["points"][0]["seeds"] == [0]
    stamp = os.stat(first).st_mtime_ns
    p = cli_subprocess(*argv)
    assert p.returncode == 0, p.stderr
    jobs = _sweep_json(tmp_path)["points"][0]["jobs"]
    assert jobs["0"]["status"] == "skipped" and jobs["1"]["status"] == "complete"
    assert os.stat(first).st_mtime_ns == stamp


BLOCK = "import sys\nsys.modules[{name!r}] = None  # as if not installed"


@pytest.mark.parametrize("flags, blocked", [(["--scheduler", "tcp://127.0.0.1:1"], "distributed"),
                                            (["--cluster", "slurm"], "dask_jobqueue")])
def test_without_dask_the_flags_name_the_install_command(tmp_path, flags, blocked):
    p = cli_subprocess("sweep", "fig2", "--quick", "--out", tmp_path, *flags, prelude=BLOCK.format(name=blocked))
    assert p.returncode == 2
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[cluster]"' in err and flags[0] in err, err
