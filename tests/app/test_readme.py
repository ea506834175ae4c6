"""The Python examples of README.md and docs/*.md print what the text says they print."""
import contextlib
import io
import pathlib
import re

import shlex

import pytest

from tests.conftest import cli_subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_pages_hold_examples():
    assert sum(len(python_blocks(p)) for p in PAGES) > 0, "no ```python example in README.md or docs/"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_examples_print_their_documented_output(page, tmp_path, monkeypatch):
    """Run in an empty folder, as a reader would: the examples may write files there."""
    monkeypatch.chdir(tmp_path)
    run_python_blocks(page)
    for command, expected in shell_sessions(page):  # `$ iclgd ...` lines after the Python examples
        done = cli_subprocess(*shlex.split(command)[1:], cwd=tmp_path)
        got = done.stdout.splitlines()
        assert len(got) >= len(expected), (command, done.stdout, done.stderr)
        for want, line in zip(expected, got):
            assert line.startswith(want[:-3]) if want.endswith("...") else line == want, (command, line)


def fenced_blocks(page):
    """[(language, text)] of the page's ``` blocks, fences paired in order."""
    blocks, current = [], None
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                blocks.append((current[0], "\n".join(current[1])))
                current = None
        elif current is not None:
            current[1].append(line)
    return blocks


def shell_sessions(page):
    """[(command, its printed lines)] of the plain ``` blocks that start with '$ iclgd'."""
    out = []
    for language, text in fenced_blocks(page):
        if language or not text.startswith("$ iclgd"):
            continue
        for line in text.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            else:
                out[-1][1].append(line)
    return out


def run_python_blocks(page):
    for code in python_blocks(page):
        expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(page.relative_to(ROOT)), "exec"), {})
        assert out.getvalue().splitlines() == expected


def test_every_stated_run_time_is_the_runtime_the_results_file_records():
    """The README's run-time column (and the main job's time) quote `runtime_s` of the committed
    results.json, in minutes to one decimal."""
    import json
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|.*\| ([0-9.]+) min[^|]*\|$", text, flags=re.M)
    from tests.app.test_summary_and_config import COMMITTED  # every experiment but those not run yet
    assert {name for name, _ in rows} == set(COMMITTED)
    for name, minutes in rows:
        runtime = json.loads((ROOT / "results" / name / "results.json").read_text())["runtime_s"]
        assert f"{runtime / 60:.1f}" == minutes, name
    fig2 = json.loads((ROOT / "results" / "fig2" / "results.json").read_text())["runtime_s"]
    assert f"the committed run took {fig2 / 60:.1f} min, as its `runtime_s` records" in " ".join(text.split())
