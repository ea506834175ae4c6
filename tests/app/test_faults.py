"""Faults and misuse of `iclgd run`, each reproduced through the command line in a subprocess:
mixed runs (resume with other settings, another experiment's folder, two runs on one folder), the
default output folder, divergence, Ctrl-C and kill -9, a full disk, corrupt checkpoints, bad folders.
Every refusal is exit status 2 with one line on stderr naming the key or file; nothing finished is lost.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, SIGINT_AS_IN_A_TERMINAL, cli_subprocess

pytestmark = pytest.mark.slow  # the fast subset leaves these out: each case runs the command line, most in a subprocess

TINY = ["--quick", "--no-progress", "--set", "task.eval_tasks=200", "--set", "train.batch=64",
        "--set", "train.checkpoint_every=10", "--set", "train.eval_every=10"]


def cli(*args, cwd, prelude=""):
    return cli_subprocess(*args, cwd=cwd, prelude=prelude)


def error_line(proc):
    """The one line a refusal prints (no traceback)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln
             and not ln.startswith("  ")]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def results(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def params_of(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k.startswith("param/")}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished 20-step fig2 run: (cwd, its folder)."""
    cwd = tmp_path_factory.mktemp("done")
    proc = cli("run", "fig2", "--out", "a", *TINY, "--set", "train.steps=20", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, cwd / "a"


@pytest.mark.slow
def test_default_out_is_the_ignored_runs_folder_never_results(tmp_path):
    proc = cli("run", "fig2", *TINY, "--set", "train.steps=10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "fig2" / "results.json").is_file()
    assert not (tmp_path / "results").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/fig2/results.json"], cwd=ROOT)
    assert ignored.returncode == 0  # the default folder is ignored by git in the repository


@pytest.mark.parametrize("key,value", [("train.lr", "0.002"), ("train.batch", "32"), ("train.b2", "0.99"),
                                       ("train.grad_clip", "0.01"), ("task.input_range", "2.0")])
def test_resume_with_another_setting_is_refused_naming_the_key(done, key, value):
    cwd, out = done
    before = (out / "results.json").read_bytes()
    proc = cli("run", "fig2", "--out", out, *TINY, "--set", "train.steps=30", "--set", f"{key}={value}",
               "--resume", cwd=cwd)
    assert proc.returncode == 2
    line = error_line(proc)
    assert key.split(".", 1)[1] in line and value.rstrip("0").rstrip(".") in line
    assert (out / "results.json").read_bytes() == before


def test_checkpoint_alone_refuses_another_setting_naming_both_values(done, tmp_path):
    """A killed run leaves checkpoints and no results.json: the checkpoint itself holds the setup."""
    cwd, out = done
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoints").mkdir()
    src = out / "checkpoints" / "lsa1_seed0.npz"
    (tmp_path / "ck" / "checkpoints" / "lsa1_seed0.npz").write_bytes(src.read_bytes())
    proc = cli("run", "fig2", "--out", tmp_path / "ck", *TINY, "--set", "train.steps=30",
               "--set", "train.b1=0.8", "--resume", cwd=cwd)
    assert proc.returncode == 2
    assert "train.b1: checkpoint 0.9, this run 0.8" in error_line(proc)


@pytest.mark.slow
def test_resume_with_more_steps_is_allowed_and_bit_identical(done, tmp_path):
    cwd, out = done
    full = cli("run", "fig2", "--out", tmp_path / "full", *TINY, "--set", "train.steps=30", cwd=cwd)
    resumed = cli("run", "fig2", "--out", out, *TINY, "--set", "train.steps=30", "--resume", cwd=cwd)
    assert full.returncode == 0 and resumed.returncode == 0, resumed.stderr
    a, b = params_of(tmp_path / "full" / "checkpoints" / "lsa1_seed0.npz"), params_of(out / "checkpoints" / "lsa1_seed0.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert results(tmp_path / "full")["final"] == results(out)["final"]


def test_another_experiment_in_the_folder_is_refused_and_left_intact(done):
    cwd, out = done
    files = lambda: {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".iclgd.lock"}  # noqa: E731
    before = files()
    for extra in ([], ["--resume"]):
        proc = cli("run", "fig1", "--out", out, *TINY, *extra, cwd=cwd)
        assert proc.returncode == 2
        assert "experiment 'fig2', not 'fig1'" in error_line(proc)
    assert files() == before


@pytest.mark.slow
def test_fresh_run_over_checkpoints_needs_force(done, tmp_path):
    cwd, out = done
    (tmp_path / "b").mkdir()
    for p in out.rglob("*"):
        if p.is_file() and "lock" not in p.name:
            dst = tmp_path / "b" / p.relative_to(out)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    proc = cli("run", "fig2", "--out", tmp_path / "b", *TINY, "--set", "train.steps=20", cwd=cwd)
    assert proc.returncode == 2
    assert re.search(r"lsa1_seed0.npz at step \d+\)", error_line(proc)) and "--force" in error_line(proc)
    forced = cli("run", "fig2", "--out", tmp_path / "b", *TINY, "--set", "train.steps=10", "--force", cwd=cwd)
    assert forced.returncode == 0, forced.stderr
    assert results(tmp_path / "b")["config"]["train"]["steps"] == 10


@pytest.mark.slow
def test_resume_without_checkpoint_says_it_starts_fresh(tmp_path):
    proc = cli("run", "fig2", "--out", "new", *TINY, "--set", "train.steps=10", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no checkpoint at" in proc.stderr and "fresh" in proc.stderr


def test_a_second_run_on_a_locked_folder_is_refused_with_the_holders_pid(done, tmp_path):
    from iclgd import rundir
    cwd, out = done
    with rundir.locked(str(tmp_path / "busy")):
        proc = cli("run", "fig2", "--out", tmp_path / "busy", *TINY, "--set", "train.steps=10", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"in use by another run (PID {os.getpid()})" in error_line(proc)
    assert not (tmp_path / "busy" / "results.json").exists()
    with rundir.locked(str(out)):  # nor is a folder re-plotted while a run writes it
        proc = cli("plot", out, cwd=cwd)
    assert proc.returncode == 2
    assert f"DIR {out}: in use by another run (PID {os.getpid()})" in error_line(proc)


@pytest.mark.slow
def test_divergence_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = cli("run", "fig2", "--out", "d", *TINY, "--set", "train.steps=20", "--set", "train.lr=1e37",
               "--set", "train.checkpoint_every=1", cwd=tmp_path)
    assert proc.returncode == 1
    assert "diverged at step" in proc.stderr and "Traceback" not in proc.stderr
    r = results(tmp_path / "d")
    assert r["status"] == "diverged" and r["diverged"]["step"] >= 1 and r["diverged"]["tensor"]
    assert not (tmp_path / "d" / "checkpoints" / "lsa1_seed0.npz").exists()  # no diverged state saved
    replot = cli("plot", "d", cwd=tmp_path)
    assert replot.returncode == 0, replot.stderr
    assert (tmp_path / "d" / "fig2.png").stat().st_size > 1000


@pytest.mark.slow
def test_ctrl_c_names_the_checkpoint_and_resume_command_and_resumes_bit_identically(done, tmp_path):
    cwd, out = done
    args = ["run", "fig2", "--out", "c", *TINY, "--set", "train.steps=1500", "--set", "train.checkpoint_every=5"]
    code = SIGINT_AS_IN_A_TERMINAL + "import sys\nfrom iclgd.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=tmp_path, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": ROOT})
    ckpt = tmp_path / "c" / "checkpoints" / "lsa1_seed0.npz"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before Ctrl-C could be sent: make it longer"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = [ln for ln in err.splitlines() if "interrupted" in ln][0]
    assert "lsa1_seed0.npz at step" in line and "--resume" in line
    assert not (tmp_path / "c" / "results.json").exists()
    resume = shlex.split(line.split("continue with: ", 1)[1])[2:]  # the arguments after "iclgd run"
    finish = cli("run", *resume, cwd=tmp_path)
    assert finish.returncode == 0, finish.stderr
    whole = cli(*args[:2], "--out", "w", *args[4:], cwd=tmp_path)
    assert whole.returncode == 0
    a, b = params_of(ckpt), params_of(tmp_path / "w" / "checkpoints" / "lsa1_seed0.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(tmp_path):
    args = ["run", "fig2", *TINY, "--set", "train.steps=1500", "--set", "train.checkpoint_every=5"]
    code = "import sys\nfrom iclgd.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args, "--out", "k"], cwd=tmp_path,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": ROOT})
    ckpt = tmp_path / "k" / "checkpoints" / "lsa1_seed0.npz"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.kill()
    proc.wait()
    (tmp_path / "k" / "checkpoints" / ".lsa1_seed0.npz.killed.tmp").write_bytes(b"half a checkpoint")
    assert cli(*args, "--out", "k", "--resume", cwd=tmp_path).returncode == 0
    assert cli(*args, "--out", "w", cwd=tmp_path).returncode == 0
    a, b = params_of(ckpt), params_of(tmp_path / "w" / "checkpoints" / "lsa1_seed0.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not [p for p in (tmp_path / "k").rglob("*.tmp")]  # what the killed writer left is gone


@pytest.mark.slow
def test_full_disk_is_one_line_and_loses_no_finished_file(done, tmp_path):
    """ENOSPC while writing results.json: the earlier results stay whole, no temporary file is left."""
    cwd, out = done
    before = (out / "results.json").read_bytes()
    prelude = ("import errno, os\n_real = os.fsync\n"
               "def fsync(fd):\n    if os.readlink(f'/proc/self/fd/{fd}').endswith('.tmp') and "
               "'results.json' in os.readlink(f'/proc/self/fd/{fd}'):\n"
               "        raise OSError(errno.ENOSPC, 'No space left on device')\n    return _real(fd)\n"
               "os.fsync = fsync")
    proc = cli("run", "fig2", "--out", out, *TINY, "--set", "train.steps=30", "--resume", cwd=cwd, prelude=prelude)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "No space left on device" in line and "--resume" in line
    assert (out / "results.json").read_bytes() == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line_naming_it(tmp_path):
    (tmp_path / "x" / "checkpoints").mkdir(parents=True)
    (tmp_path / "x" / "checkpoints" / "lsa1_seed0.npz").write_bytes(b"PK\x03\x04 truncated")
    proc = cli("run", "fig2", "--out", "x", *TINY, "--resume", cwd=tmp_path)
    assert proc.returncode == 2
    assert "lsa1_seed0.npz: unreadable" in error_line(proc)


@pytest.mark.parametrize("make,expect", [("file", "expected a folder, got a file"),
                                         ("under_file", "cannot create the folder")])
def test_bad_out_folder_is_one_line(tmp_path, make, expect):
    (tmp_path / "f").write_text("not a folder")
    out = tmp_path / "f" if make == "file" else tmp_path / "f" / "sub"
    proc = cli("run", "fig2", "--out", out, *TINY, cwd=tmp_path)
    assert proc.returncode == 2
    assert expect in error_line(proc)


@pytest.mark.parametrize("override,expect", [
    ("deep_layers=[2,", "deep_layers: expected a JSON value"),
    ("deep_layers=5", "deep_layers: expected a list, got 5"),
    ("train.lr=nan", "train.lr: expected a number > 0 or null, got nan"),
    ("train.eval_every=0", "train.eval_every: expected an integer >= 1, got 0"),
])
def test_bad_config_values_are_one_line(tmp_path, override, expect):
    proc = cli("run", "fig3", "--out", "y", "--quick", "--set", override, cwd=tmp_path)
    assert proc.returncode == 2
    assert expect in error_line(proc)


@pytest.mark.parametrize("damage,expect", [
    (lambda r: r["final"].update(loss_gd=None), "final['loss_gd'] null (not finite)"),
    (lambda r: r["curves"].update(step="abc"), "cannot draw 'fig2' from it"),
    (lambda r: r.pop("per_seed"), "missing key(s) ['per_seed']"),
    (None, "not a valid JSON file"),
])
def test_plot_of_a_damaged_results_file_is_one_line(done, tmp_path, damage, expect):
    cwd, out = done
    r = results(out)
    (tmp_path / "p").mkdir()
    if damage is None:
        (tmp_path / "p" / "results.json").write_text('{"experiment": "fig2", trunc')
    else:
        damage(r)
        (tmp_path / "p" / "results.json").write_text(json.dumps(r))
    proc = cli("plot", tmp_path / "p", cwd=cwd)
    assert proc.returncode == 2
    assert expect in error_line(proc)
    assert not (tmp_path / "p" / "fig2.png").exists()
