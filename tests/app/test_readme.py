"""The Python examples of README.md and docs/*.md print what the text says they print."""
import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def test_the_pages_hold_examples():
    assert sum(len(python_blocks(p)) for p in PAGES) > 0, "no ```python example in README.md or docs/"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_examples_print_their_documented_output(page):
    for code in python_blocks(page):
        expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(page.relative_to(ROOT)), "exec"), {})
        assert out.getvalue().splitlines() == expected
