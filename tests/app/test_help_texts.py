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


@pytest.mark.parametrize("command", ["run", "plot", "show", "config", "convert", "crosscheck"])
def test_every_command_flag_is_explained(command):
    proc = cli_subprocess(command, "--help")
    assert proc.returncode == 0
    options = proc.stdout.split("options:", 1)[1]
    for flag in re.findall(r"^  (--[\w-]+)", options, flags=re.M):
        entry = options.split(flag, 1)[1].split("\n  -", 1)[0]
        assert len(entry.split()) > 1, f"iclgd {command} {flag} has no help"
