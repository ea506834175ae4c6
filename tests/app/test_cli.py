"""The command line: `iclgd info` and `iclgd gradcheck --json`."""
import json
import subprocess
import sys

import pytest

from iclgd.cli import main


@pytest.mark.slow
def test_gradcheck_json_has_exactly_the_promised_keys(capsys):
    status = main(["gradcheck", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and len(rows) > 50
    assert all(set(r) == {"check", "param", "max_rel_err", "passed"} for r in rows)
    assert status == (0 if all(r["passed"] for r in rows) else 1)
    assert status == 0
    assert {r["check"] for r in rows} >= {"lsa", "softmax_attention", "layernorm", "model_lsa_1layer"}


@pytest.mark.slow
def test_gradcheck_table_and_exit_status_from_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "iclgd", "gradcheck"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "0 failed" in out.stdout and "max_rel_err" in out.stdout


def test_version_from_python_m_and_the_package_agree():
    import iclgd
    out = subprocess.run([sys.executable, "-m", "iclgd", "--version"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"iclgd {iclgd.__version__}"


def test_info_lists_versions_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "backends:" in out
    assert "numpy        available" in out


@pytest.mark.slow
def test_gradcheck_exit_status_is_1_when_a_check_fails(monkeypatch, capsys):
    from refimpl import gradcheck
    monkeypatch.setattr(gradcheck, "TOLERANCE", 0.0)  # nothing passes a zero tolerance
    assert main(["gradcheck"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_help_is_whole_sentences_and_run_lists_the_backends():
    from kernels import backend_names
    top = subprocess.run([sys.executable, "-m", "iclgd", "--help"], capture_output=True, text=True, check=False)
    assert top.returncode == 0, top.stderr
    description = top.stdout.split("\n\n")[1].strip()
    assert description.endswith("."), description
    bad = subprocess.run([sys.executable, "-m", "iclgd", "run", "fig2", "--backend", "nope"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    line = bad.stderr.strip().splitlines()[-1]
    assert "--backend" in line and "'nope'" in line and all(name in line for name in backend_names())
