"""The three floors import only downwards: refimpl/ <- kernels/ <- iclgd/.

refimpl/ is the float64 oracle and may use numpy, scipy and the standard library only; kernels/
may use anything but the application iclgd/. Every import is read from the source with ``ast``:
``import x``, ``from x import y`` (also inside functions) and ``importlib.import_module("x")``.
"""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOORS = ("refimpl", "kernels", "iclgd")
MAX_MODULE_LINES = 350

REFIMPL_ALLOWED = {"numpy", "scipy", "refimpl"} | set(sys.stdlib_module_names)
# (module, imported top-level name) pairs that break the rule on purpose, each with its reason.
REFIMPL_EXCEPTIONS = set()  # none: refimpl.validate.array_module finds cupy in sys.modules
KERNELS_FORBIDDEN = {"iclgd"}


def imported_names(source, package=None):
    """Every module name a source imports, absolute (relative imports resolved against
    ``package``, the dotted package the module sits in), with the line of each import."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = (package or "").split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join([p for p in base if p] + ([name] if name else []))
            found.append((name, node.lineno))
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((arg.value, node.lineno))
    return found


def _is_import_module(func):
    """importlib.import_module(...) or a bare import_module(...) (from importlib import ...)."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"


def floor_violations(path, root):
    """["file:line imports name (why)"] for one module, judged by the floor it sits in."""
    rel = path.relative_to(root)
    floor = rel.parts[0]
    package = ".".join(rel.parts[:-1])
    out = []
    for name, line in imported_names(path.read_text(), package):
        top = name.split(".")[0]
        if floor == "refimpl" and top not in REFIMPL_ALLOWED \
                and (rel.as_posix(), top) not in REFIMPL_EXCEPTIONS:
            out.append(f"{rel.as_posix()}:{line} imports {name} (refimpl: numpy/scipy/stdlib only)")
        if floor == "kernels" and top in KERNELS_FORBIDDEN:
            out.append(f"{rel.as_posix()}:{line} imports {name} (kernels must not import iclgd)")
    return out


def floor_modules(root):
    return sorted(p for floor in FLOORS for p in (root / floor).rglob("*.py"))


def test_every_floor_has_modules():
    """The walk below sees the real tree (an empty walk would pass vacuously)."""
    for floor in FLOORS:
        assert list((ROOT / floor).rglob("*.py")), floor


def test_floors_import_only_downwards():
    violations = [v for path in floor_modules(ROOT) for v in floor_violations(path, ROOT)]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("floor, source, flagged", [
    ("refimpl", "import numpy as np\nimport scipy.linalg\nimport json\n", False),
    ("refimpl", "from kernels import get_backend\n", True),
    ("refimpl", "def f():\n    import matplotlib.pyplot as plt\n", True),
    ("refimpl", "import importlib\nm = importlib.import_module('tqdm')\n", True),
    ("refimpl", "from ...iclgd import train\n", True),  # relative import above refimpl/
    ("refimpl", "import torch\n", True),
    ("kernels", "import numba\nfrom refimpl import model\n", False),
    ("kernels", "def f():\n    from iclgd.runtime import x\n", True),
    ("kernels", "from importlib import import_module\nimport_module('iclgd.train')\n", True),
])
def test_walker_flags_an_offending_module(tmp_path, floor, source, flagged):
    (tmp_path / floor / "sub").mkdir(parents=True)
    path = tmp_path / floor / "sub" / "offender.py"
    path.write_text(source)
    violations = floor_violations(path, tmp_path)
    assert bool(violations) == flagged, violations
    if flagged:
        assert violations[0].startswith(f"{floor}/sub/offender.py:")


def test_relative_imports_resolve_to_their_package():
    names = [n for n, _ in imported_names("from . import a\nfrom ..b import c\n", "kernels.numba")]
    assert names == ["kernels.numba", "kernels.b"]


def test_modules_stay_under_the_line_limit():
    too_long = [f"{p.relative_to(ROOT).as_posix()}: {n} lines" for p in floor_modules(ROOT)
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not too_long, "\n".join(too_long)
