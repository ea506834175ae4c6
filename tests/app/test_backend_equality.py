"""`iclgd run` trains and evaluates on numba-cpu by default: every experiment's --quick results
(final numbers, curves and, where written, the out-of-distribution curves `ood`) on it equal the
float64 oracle's (--backend numpy) to 1e-10."""
import json
import os

import numpy as np
import pytest

from iclgd import cli
from iclgd.experiments import EXPERIMENTS
from kernels import DEFAULT_BACKEND

RTOL = 1e-10  # SPEC 7, float64 against the oracle
ATOL = 1e-12  # quantities that are zero up to rounding (GD's deviation from its exact s^2 law)


def _numbers(tree, path=""):
    """{path: value} of every number (None kept: a diverged entry) in a nested dict / list."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_numbers(v, f"{path}.{k}"))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.update(_numbers(v, f"{path}[{i}]"))
    elif tree is None or (isinstance(tree, (int, float)) and not isinstance(tree, bool)):
        out[path] = tree
    return out


def _quick(name, backend, out):
    argv = ["run", name, "--quick", "--no-progress", "--out", str(out)]
    if backend is not None:
        argv += ["--backend", backend]
    assert cli.main(argv) == 0
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_the_default_backend_is_numba_cpu():
    assert DEFAULT_BACKEND == "numba-cpu"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_quick_results_on_the_default_backend_equal_the_oracles(name, tmp_path):
    fast = _quick(name, None, tmp_path / "default")
    oracle = _quick(name, "numpy", tmp_path / "oracle")
    assert fast["backend"] == DEFAULT_BACKEND and oracle["backend"] == "numpy"
    a = _numbers({"final": oracle["final"], "curves": oracle["curves"], "ood": oracle.get("ood")})
    b = _numbers({"final": fast["final"], "curves": fast["curves"], "ood": fast.get("ood")})
    assert a.keys() == b.keys()
    assert len(a) > 10
    for k, x in a.items():
        y = b[k]
        assert (x is None) == (y is None), (k, x, y)
        if x is not None:
            assert abs(x - y) <= ATOL + RTOL * abs(x), (k, x, y)
