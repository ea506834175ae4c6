"""Help texts a user reads: whole sentences, every flag explained (subprocesses, as typed)."""
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli_subprocess


@pytest.mark.parametrize("script", ["benchmarks/draw.py", "benchmarks/train_step.py", "benchmarks/bench_cupy.py"])
def test_benchmark_help_is_whole_sentences_with_every_flag_explained(script):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    description = text.split("\n\n")[1].strip()
    assert description.endswith("."), description
    options = text.split("options:", 1)[1]
    for flag in re.findall(r"^  (--[\w-]+)", options, flags=re.M):
        entry = options.split(flag, 1)[1].split("\n  -", 1)[0]
        assert len(entry.split()) > 1, f"{script} {flag} has no help"


@pytest.mark.parametrize("command", ["run", "plot", "show", "config", "report", "convert", "crosscheck"])
def test_every_command_flag_is_explained(command):
    proc = cli_subprocess(command, "--help")
    assert proc.returncode == 0
    options = proc.stdout.split("options:", 1)[1]
    for flag in re.findall(r"^  (--[\w-]+)", options, flags=re.M):
        entry = options.split(flag, 1)[1].split("\n  -", 1)[0]
        assert len(entry.split()) > 1, f"iclgd {command} {flag} has no help"


@pytest.mark.slow
def test_the_fast_subset_leaves_out_only_the_tests_marked_slow():
    """`pytest -m "not slow"` (the README's development subset) keeps most tests and drops the ones
    marked slow; the marker is registered, so a typo in it would be an error (--strict-markers)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--strict-markers", "-m", "slow"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:]
    slow, total = map(int, re.search(r"(\d+)/(\d+) tests collected", proc.stdout).groups())
    assert 0 < slow < total / 5
    assert "test_kill_9_then_resume_is_bit_identical" in proc.stdout
