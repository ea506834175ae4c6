"""fig13 (GD++ conditioning) and the softmax / LayerNorm experiments on quick settings: their
documented keys, the properties their figures show, re-plotting, and errors for bad input."""
import json
import os

import numpy as np
import pytest

from iclgd import cli
from iclgd.results import REQUIRED_KEYS
from tests.conftest import ROOT, cli_subprocess


def _run(argv):
    return cli.main([str(a) for a in argv])


def _results(path):
    with open(os.path.join(path, "results.json")) as f:
        return json.load(f)


def test_fig13_reads_the_gammas_that_reach_the_readout():
    from iclgd.experiments.fig13 import fitted_gammas
    r = {"final": {"tied2": {"gdpp_gamma": [0.2], "layers": 2, "weight_tied": True},
                   "tied3": {"gdpp_gamma": [0.1], "layers": 3, "weight_tied": True},
                   "deep3": {"gdpp_gamma": [0.3, 0.4, 0.05], "layers": 3, "weight_tied": False}}}
    assert fitted_gammas(r) == {"tied2": [0.2], "tied3": [0.1, 0.1], "deep3": [0.3, 0.4]}


@pytest.mark.slow
def test_fig13_quick_run_lowers_the_condition_numbers(tmp_path):
    assert _run(["run", "fig13", "--quick", "--no-progress", "--out", tmp_path]) == 0
    r = _results(tmp_path)
    assert all(k in r for k in REQUIRED_KEYS) and r["experiment"] == "fig13"
    f = r["final"]
    assert list(r["gammas"]) == ["tied2"] and len(r["gammas"]["tied2"]) == 1
    assert f["kappa_median_tied2_all"] < f["kappa_median_before"]
    assert f["kappa_median_tied2_all_fitlaw"] < f["kappa_median_before_fitlaw"]
    assert f["kappa_bound_opt"] < f["kappa_extremes"]
    hist = r["curves"]["hist"]
    assert sum(hist["eval"]["before"]) == sum(hist["eval"]["tied2_all"]) == r["config"]["task"]["eval_tasks"]
    assert os.path.isfile(tmp_path / "fig13.png") and os.path.isfile(tmp_path / "fig13.pdf")
    os.remove(tmp_path / "fig13.png")
    assert _run(["plot", tmp_path]) == 0 and os.path.isfile(tmp_path / "fig13.png")


def test_fig13_names_a_missing_gamma_file(tmp_path):
    proc = cli_subprocess("run", "fig13", "--out", tmp_path / "out", "--set", "gammas_from=nowhere/results.json")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("iclgd run: error: gammas_from: expected a fig3 results.json or 'fit', "
                                   "found no file at 'nowhere/results.json'")
