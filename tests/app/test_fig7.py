"""fig7 (out-of-distribution behaviour of figure 3's multi-layer models) on quick settings through
the command line: its documented keys, the exact weight-scale law of unclipped GD, the curves at
alpha = 1 against fig3's in-distribution losses of the same models, GD clipped as the deep TF is,
the summary, the re-plot from results alone, and one-line errors for bad config values."""
import json
import os
import shutil

import numpy as np
import pytest

from iclgd import cli
from iclgd.cli.run import resolve_config
from iclgd.results import REQUIRED_KEYS
from refimpl import baselines, metrics
from refimpl.tasks import eval_tasks, scale_inputs, scale_weights
from tests.conftest import TOL

MODELS = ("tf", "gd", "gdpp")
FAMILIES = ("input", "weight", "laws")
FIG3_KEYS = ("loss_tf", "loss_gd", "loss_gdpp", "loss_tf_layers", "loss_gd_layers", "loss_gdpp_layers", "gd_eta",
             "gdpp_eta", "gdpp_gamma", "layers", "weight_tied", "token_clip", "model_cos_gdpp")
RTOL = TOL["recomputed_scalar"]["rtol"]  # the same loss computed twice (two kernels of a backend)


def _run(argv):
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig7")
    assert _run(["run", "fig7", "--quick", "--no-progress", "--out", out]) == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


def _index(alphas, value):
    i = int(np.argmin(np.abs(np.asarray(alphas) - value)))
    assert alphas[i] == value, (alphas, value)
    return i


def _finite(values):
    return all(v is not None and np.isfinite(v) for v in np.ravel(values))


@pytest.mark.slow
def test_quick_run_writes_the_documented_keys_all_finite(quick):
    out, r = quick
    assert all(k in r for k in REQUIRED_KEYS) and r["experiment"] == "fig7" and r["quick"] is True
    assert r["backend"] == "numba-cpu"
    assert set(r["final"]) == set(r["curves"]) == set(r["ood"]) == {"tied2", "deep5"}
    for name, f in r["final"].items():
        o = r["ood"][name]
        for key in FIG3_KEYS + ("ood_gd_token_clip", "loss_gd_ood"):
            assert key in f and _finite(f[key]), (name, key)
        for fam in FAMILIES:
            end = f"{o['alpha'][fam][-1]:.2f}"
            for m in MODELS:
                assert len(o[fam][m]) == len(o["alpha"][fam]) and _finite(o[fam][m]), (name, fam, m)
                assert f[f"loss_{m}_{fam}_{end}"] == o[fam][m][-1]
            for ref in ("gd", "gdpp"):
                assert _finite(f[f"ood_rel_dev_{ref}_{fam}"])
        for m in MODELS:
            assert _finite(f[f"weight_scale_law_dev_{m}"])
            assert len(o["distractors"][m]) == len(o["k"]) == r["config"]["task"]["num_context"] + 1
            # the laws family split by law: its task-weighted mean is the mixed family's loss
            n = o["law_tasks"]
            mixed = sum(n[law] * np.array(o["by_law"][law][m]) for law in n) / sum(n.values())
            np.testing.assert_allclose(mixed, o["laws"][m], **TOL["float64_reordered"])
    assert os.path.getsize(out / "fig7.png") > 1000 and os.path.isfile(out / "fig7.pdf")


@pytest.mark.slow
def test_unclipped_gd_loss_is_alpha_squared_times_under_weight_scale(quick):
    """Exact for GD (and GD++: both linear in the labels) where no token is clipped: tied2."""
    _, r = quick
    f, o = r["final"]["tied2"], r["ood"]["tied2"]
    assert f["ood_gd_token_clip"] == 0
    alpha = np.array(o["alpha"]["weight"])
    one = _index(o["alpha"]["weight"], 1.0)
    for m in ("gd", "gdpp"):
        curve = np.array(o["weight"][m])
        np.testing.assert_allclose(curve, alpha ** 2 * curve[one], rtol=RTOL)
        assert f[f"weight_scale_law_dev_{m}"] < RTOL


@pytest.mark.slow
def test_at_alpha_one_the_curves_equal_fig3s_in_distribution_losses(quick):
    """Input scale 1, weight scale 1 and no distractors are the evaluation set fig3's code scores
    the same models on: loss_tf, loss_gdpp and loss_gd (equal to the clipped GD's loss_gd_ood while
    no token reaches the clip, as at alpha = 1 here)."""
    _, r = quick
    for name, f in r["final"].items():
        o = r["ood"][name]
        assert f["loss_gd_ood"] == pytest.approx(f["loss_gd"], rel=RTOL)
        expected = {"tf": f["loss_tf"], "gd": f["loss_gd"], "gdpp": f["loss_gdpp"]}
        for m, loss in expected.items():
            for fam in ("input", "weight"):
                assert o[fam][m][_index(o["alpha"][fam], 1.0)] == pytest.approx(loss, rel=RTOL), (name, fam, m)
            assert o["distractors"][m][0] == pytest.approx(loss, rel=RTOL), (name, m)


@pytest.mark.slow
def test_deep_gd_curves_clip_tokens_as_the_deep_tf_does(quick):
    """deep5's TF clips tokens at +-10 (SPEC 3); its GD curve is L-step GD with the same clip,
    recomputed here with the oracle, which bounds the loss where unclipped GD diverges (input scale
    2) and breaks GD's exact alpha^2 law (weight scale 5)."""
    _, r = quick
    f, o = r["final"]["deep5"], r["ood"]["deep5"]
    assert f["token_clip"] == f["ood_gd_token_clip"] == 10.0
    task = resolve_config("fig7", True, [])[1].task
    d, N = task.input_dim, task.num_context
    tokens, targets = eval_tasks(task)
    gd = baselines.gd_params(d, f["gd_eta"], N)
    for fam, scale in (("input", scale_inputs), ("weight", scale_weights)):
        alpha = o["alpha"][fam][-1]
        t, y = scale(tokens, targets, alpha)
        clipped = metrics.losses(gd, t, y, baselines.gd_model_config(d, 5, token_clip=10.0))[0]
        plain = metrics.losses(gd, t, y, baselines.gd_model_config(d, 5))[0]
        assert o[fam]["gd"][-1] == pytest.approx(clipped, rel=1e-10)  # numba-cpu against the oracle
        assert abs(clipped / plain - 1) > 0.01, (fam, clipped, plain)
        if fam == "input":
            assert clipped < 1e-3 * plain
        else:
            assert plain == pytest.approx(alpha ** 2 * f["loss_gd"], rel=RTOL)
    assert f["weight_scale_law_dev_gd"] > 0.01


@pytest.mark.slow
def test_summary_and_replot_read_the_results_alone(quick, tmp_path):
    from iclgd.summary import summary_lines
    out, r = quick
    lines = summary_lines(r)
    assert "tied2:" in lines and "deep5:" in lines
    row = next(line for line in lines if line.startswith("input scale 2: TF vs GD++"))
    assert f"{r['final']['tied2']['loss_tf_input_2.00']:.4g}" in row
    shutil.copy(out / "results.json", tmp_path / "results.json")
    assert _run(["plot", tmp_path]) == 0
    assert sorted(os.listdir(tmp_path)) == ["fig7.pdf", "fig7.png", "results.json"]


@pytest.mark.parametrize("override,message", [
    ("input_grid=[0.5, 2.0]", "input_grid: expected a list of 3 items"),
    ("weight_grid=[5.0, 0.5, 0.1]", "weight_grid: expected [start, stop, step] with start <= stop"),
    ("law_grid=[0.5, 5.0, 0]", "law_grid: expected a list whose items are each a number > 0"),
    ("input_grid=[0.5, 2.0, 1e-9]", "input_grid: expected [start, stop, step] with start <= stop and at most 10000 steps"),
    ("deep_layers=[0]", "deep_layers: expected a list whose items are each an integer >= 1"),
    ("deep_steps=[1, 2]", "deep_steps: expected one entry or one per depth of deep_layers"),
])
def test_bad_config_values_give_one_line_errors(override, message, tmp_path, capsys):
    with pytest.raises(ValueError) as e:
        resolve_config("fig7", False, [override])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert _run(["run", "fig7", "--out", tmp_path / "x", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("iclgd run: error: ") and message in err and "\n" not in err
    assert not os.path.exists(tmp_path / "x" / "results.json")
