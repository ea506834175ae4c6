"""benchmarks/gpu_check.sh, run in a subprocess with a PATH of stand-ins: without a GPU it exits 2
at once with the reason, before running Python or pip; with one (a stand-in nvidia-smi) it runs its
stages in order, each under its own timeout, tees their output to OUTDIR and records each stage's
outcome, with python3 when there is no `python`."""
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
TOOLS = ("bash", "dirname", "mkdir", "date", "tee", "timeout", "grep", "head", "cat", "ls", "sleep",
         "env", "tail")


def stub(bindir, name, body):
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def bindir(tmp_path):
    """A PATH holding only the shell tools the script needs, and recording python/pip stand-ins."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("bash and coreutils' timeout are needed to run the script")
    d = tmp_path / "bin"
    d.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), d / tool)
    calls = tmp_path / "calls.txt"
    for name in ("python", "python3", "pip", "pip3"):
        stub(d, name, f'echo "{name} $*" >> {calls}')
    return d


def run(bindir, outdir, extra_env=None):
    env = {"PATH": str(bindir), "HOME": str(bindir.parent)}
    env.update(extra_env or {})
    return subprocess.run(["bash", SCRIPT, str(outdir)], capture_output=True, text=True, env=env,
                          cwd=str(bindir.parent), timeout=120)


def calls(bindir):
    f = bindir.parent / "calls.txt"
    return f.read_text().splitlines() if f.exists() else []


@pytest.mark.parametrize("smi, reason", [
    (None, "nvidia-smi not found"),
    ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver"; exit 9',
     "nvidia-smi -L failed: NVIDIA-SMI has failed because it couldn't communicate"),
    ('echo "No devices found."', "lists none: No devices found."),
])
def test_without_a_gpu_it_exits_2_with_the_reason_before_anything_else(bindir, tmp_path, smi, reason):
    if smi is not None:
        stub(bindir, "nvidia-smi", smi)
    out = tmp_path / "out"
    res = run(bindir, out)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().startswith("gpu_check: no GPU: ") and reason in res.stderr
    assert calls(bindir) == []  # no python, no pip: nothing installed or run
    assert not out.exists()  # nothing written


def test_usage_error_exits_2(bindir):
    res = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env={"PATH": str(bindir)})
    assert res.returncode == 2 and "usage: bash benchmarks/gpu_check.sh OUTDIR" in res.stderr


def test_without_python_it_exits_2(bindir, tmp_path):
    stub(bindir, "nvidia-smi", 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"')
    for name in ("python", "python3"):
        (bindir / name).unlink()
    res = run(bindir, tmp_path / "out")
    assert res.returncode == 2 and "neither python nor python3" in res.stderr


def test_with_a_gpu_every_stage_runs_under_its_timeout_and_is_recorded(bindir, tmp_path):
    """Stand-ins: nvidia-smi lists a GPU, only python3 exists (it records its arguments; as the
    smoke stage it hangs). The smoke stage is cut by its timeout and the later stages still run."""
    stub(bindir, "nvidia-smi", 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"')
    (bindir / "python").unlink()
    log = tmp_path / "calls.txt"
    stub(bindir, "python3", f'echo "python3 $*" >> {log}\n'
                            'case "$*" in *benchmarks.gpu_smoke*) exec sleep 30;; esac')
    out = tmp_path / "out"
    res = run(bindir, out, {"T_SMOKE": "1"})
    assert res.returncode == 1, res.stdout + res.stderr  # a stage timed out
    summary = (out / "summary.txt").read_text().splitlines()
    stages = ["1_env", "2_compile", "3_smoke", "4_sanitizer", "5_tests", "6_bench"]
    assert [line.split(":")[0] for line in summary] == stages
    assert summary[0].startswith("1_env: ok") and summary[1].startswith("2_compile: ok")
    assert summary[2] == "3_smoke: TIMED OUT after 1 s"
    assert summary[3].startswith("4_sanitizer: FAILED (exit 3")  # no compute-sanitizer here
    assert "compute-sanitizer not found" in (out / "4_sanitizer.log").read_text()
    assert summary[4].startswith("5_tests: ok") and summary[5].startswith("6_bench: ok")
    for stage in stages:
        assert (out / f"{stage}.log").read_text().startswith(f"== {stage} (timeout ")
    assert "GPU 0: NVIDIA H100" in (out / "1_env.log").read_text()
    made = calls(bindir)
    assert all(c.startswith("python3 ") for c in made)  # never `python`, never pip
    assert (f"python3 -m benchmarks.bench_cupy --out {out}/bench_cupy.json --sweep "
            "--peers jax,torch,numba_cuda,unfused") in made
    assert any(c.startswith("python3 -m pytest -m gpu") for c in made)
    assert "python3 -m benchmarks.gpu_smoke" in made and "python3 -m benchmarks.gpu_compile" in made


def test_default_stage_timeouts_fit_in_nine_minutes():
    """The stages' default timeouts, each with its kill grace, add up to at most 9 minutes."""
    import re
    text = open(SCRIPT).read()
    stages = re.findall(r"^stage \w+ \"\$(T_\w+)\"", text, re.M)
    defaults = dict(re.findall(r"^(T_\w+)=\$\{T_\w+:-(\d+)\}", text, re.M))
    grace = int(re.search(r"^KILL_AFTER=(\d+)", text, re.M).group(1))
    assert stages == ["T_ENV", "T_COMPILE", "T_SMOKE", "T_SANITIZER", "T_TESTS", "T_BENCH"]
    assert sum(int(defaults[t]) + grace for t in stages) <= 9 * 60
