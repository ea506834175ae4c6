"""fig13 (GD++ conditioning) and the softmax / LayerNorm experiments on quick settings: their
documented keys, the properties their figures show, re-plotting, and errors for bad input."""
import json
import os
import pathlib

import numpy as np
import pytest

from iclgd import cli
from iclgd.results import REQUIRED_KEYS
from tests.conftest import ROOT, cli_subprocess

ROOT_PATH = pathlib.Path(ROOT)


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


def test_fig13_refuses_the_gammas_of_a_quick_fig3_run(tmp_path, capsys):
    r = json.loads((ROOT_PATH / "results" / "fig3" / "results.json").read_text())
    r["quick"] = True
    (tmp_path / "results.json").write_text(json.dumps(r))
    assert _run(["run", "fig13", "--out", tmp_path / "out", "--set", f"gammas_from={tmp_path / 'results.json'}"]) == 2
    assert "is a --quick fig3 run; name a full run, or 'fit'" in capsys.readouterr().err


def test_fig13_names_a_missing_gamma_file(tmp_path):
    proc = cli_subprocess("run", "fig13", "--out", tmp_path / "out", "--set", "gammas_from=nowhere/results.json")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("iclgd run: error: gammas_from: expected a fig3 results.json or 'fit', "
                                   "found no file at 'nowhere/results.json'")


TINY = ["--quick", "--no-progress", "--set", "task.eval_tasks=300", "--set", "train.steps=40",
        "--set", "gdpp.steps_tied=20"]


@pytest.fixture(scope="module")
def fig12_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig12")
    assert _run(["run", "fig12", "--out", out, *TINY]) == 0
    return out


@pytest.mark.slow
def test_fig12_writes_both_variants_with_per_head_products(fig12_dir):
    r = _results(fig12_dir)
    assert all(k in r for k in REQUIRED_KEYS) and set(r["final"]) == {"softmax1", "softmax2"}
    for name, heads in (("softmax1", 1), ("softmax2", 2)):
        f, c = r["final"][name], r["curves"][name]
        assert f["heads"] == heads and c["step"][-1] == 40
        assert all(np.isfinite(f[k]) for k in ("loss_tf", "loss_gd", "loss_gdpp", "model_cos", "model_cos_gdpp"))
        w = r["per_seed"][0]["weights"][name]
        assert np.shape(w["scaled_W_KQ"]) == (heads, 11, 11)
        np.testing.assert_allclose(np.sum(w["scaled_W_KQ"], axis=0), w["scaled_W_KQ_sum"], rtol=1e-12, atol=1e-15)
    assert r["final"]["softmax1"]["offdiag_cancellation"] == 1.0  # one head: the sum is the head
    os.remove(fig12_dir / "fig12.png")
    assert _run(["plot", fig12_dir]) == 0 and os.path.isfile(fig12_dir / "fig12.png")


@pytest.mark.slow
def test_fig11_reads_the_two_head_layer_of_a_full_fig12_run_and_refuses_a_quick_one(fig12_dir, tmp_path):
    proc = cli_subprocess("run", "fig11", "--out", tmp_path / "q", "--set", f"weights_from={fig12_dir / 'results.json'}")
    assert proc.returncode == 2 and "is a --quick fig12 run" in proc.stderr
    full = _results(fig12_dir)
    full["quick"] = False
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text(json.dumps(full))
    assert _run(["run", "fig11", "--no-progress", "--out", tmp_path / "out",
                 "--set", f"weights_from={tmp_path / 'full' / 'results.json'}"]) == 0
    r = _results(tmp_path / "out")
    assert r["final"] == full["final"]["softmax2"] and r["steps_run"] == 0
    assert r["per_seed"][0]["weights"] == full["per_seed"][0]["weights"]["softmax2"]
    assert os.path.isfile(tmp_path / "out" / "fig11.png")
    missing = cli_subprocess("run", "fig11", "--out", tmp_path / "m", "--set", "weights_from=nowhere.json")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "iclgd run: error: weights_from: expected a fig12 results.json or 'train', found no file at 'nowhere.json'")


@pytest.mark.slow
def test_fig14_places_layernorm_as_the_public_code_and_compares_with_l_step_gd(tmp_path):
    assert _run(["run", "fig14", "--out", tmp_path, *TINY, "--set", "deep_steps=40"]) == 0
    r = _results(tmp_path)
    f = r["final"]
    assert f["ln1"]["layers"] == 1 and f["ln2"]["layers"] == 2 and f["ln2"]["steps"] == 40
    assert f["ln2"]["loss_gd"] < f["ln1"]["loss_gd"]  # two GD steps beat one
    assert f["ln2"]["loss_gdpp"] <= f["ln2"]["loss_gd"] * 1.05  # GD++ (fitted from GD's eta) is no worse
    assert r["config"]["deep_steps"] == 40 and os.path.isfile(tmp_path / "fig14.png")


def test_layernorm_placements_of_fig14():
    """ln1 has a LayerNorm before its one layer, ln2 none before layer 0 and one before layer 1."""
    from refimpl.params import param_shapes
    from iclgd.experiments.fig14 import VARIANTS, Config
    from iclgd.experiments.variants import variant_model
    cfgs = {n: variant_model(Config().model, L, **opts) for n, (L, opts, _, _) in VARIANTS.items()}
    assert [cfgs["ln1"].layer_has_ln(0)] == [True]
    assert [cfgs["ln2"].layer_has_ln(l) for l in range(2)] == [False, True]
    assert "layer0.ln1.scale" not in param_shapes(cfgs["ln2"]) and "layer1.ln1.scale" in param_shapes(cfgs["ln2"])


@pytest.mark.slow
def test_fig5_records_the_copy_analysis_over_training(tmp_path):
    assert _run(["run", "fig5", "--out", tmp_path, "--quick", "--no-progress", "--set", "task.eval_tasks=200",
                 "--set", "train.steps=100", "--set", "train.eval_every=50"]) == 0
    r = _results(tmp_path)
    c, f = r["curves"], r["final"]
    assert c["step"] == [0, 50, 100] and r["layout"] == "back"
    # at the small initialisation layer 0 is close to the identity: own = sqrt(d), next and other ~ 0
    assert abs(c["copy_own"][0] - np.sqrt(10)) < 0.01 and c["copy_next"][0] < 0.01 and c["copy_other"][0] < 0.01
    assert np.shape(r["per_seed"][0]["attention"]["layer0"]) == (1, 21, 20)
    assert all(np.isfinite(f[k]) for k in ("loss_tf", "loss_gd", "copy_own", "copy_next", "copy_other"))
    os.remove(tmp_path / "fig5.png")
    assert _run(["plot", tmp_path]) == 0 and os.path.isfile(tmp_path / "fig5.png")


def test_fig5_model_options_come_from_set_model(capsys):
    from iclgd.cli.run import resolve_config
    _, cfg = resolve_config("fig5", False, ["model.num_heads=2", "pos_enc_concat=front"])
    assert cfg.model.num_heads == 2 and cfg.model.first_layer_softmax and cfg.pos_enc_concat == "front"
    assert _run(["config", "fig5", "--set", "model.softmax=true"]) == 2
    assert "unknown config key 'model.softmax'" in capsys.readouterr().err
    assert _run(["config", "fig5", "--set", "model.token_dim=11"]) == 2
    assert "model.token_dim: expected task.input_dim + pos_enc_size = 20, got 11" in capsys.readouterr().err
    assert _run(["config", "fig5", "--set", "pos_enc_concat=middle"]) == 2
    assert "pos_enc_concat: expected one of ('back', 'front'), got 'middle'" in capsys.readouterr().err


def test_the_variant_experiments_take_model_options_and_refuse_the_keys_their_variants_set():
    """fig11, fig12 and fig14 build every variant from their `model` section (`--set model.*`):
    an option reaches each variant's model, the keys a variant sets itself are refused when changed,
    and the token width must fit the task."""
    from refimpl.config import apply_overrides
    from iclgd.experiments import fig11, fig12, fig14
    from iclgd.experiments.variants import variant_model
    for mod, fixed in ((fig12, ("num_heads", "attention", "num_layers")), (fig11, ("num_heads",)),
                       (fig14, ("layernorm", "ln_placement", "num_layers"))):
        cfg = apply_overrides(mod.Config(), ["model.key_size=7", "model.include_query=true"])
        m = variant_model(cfg.model, 2, num_heads=2)
        assert (m.key_size, m.include_query, m.num_layers, m.num_heads, m.token_dim) == (7, True, 2, 2, 11)
        for key in fixed:
            value = {"num_heads": "3", "attention": "linear", "num_layers": "2", "layernorm": "true",
                     "ln_placement": "pre"}[key]
            with pytest.raises(ValueError, match=f"^model.{key}: set by each variant"):
                apply_overrides(mod.Config(), [f"model.{key}={value}"])
        with pytest.raises(ValueError, match=r"^model.token_dim: expected task.input_dim \+ 1 = 6, got 11$"):
            apply_overrides(mod.Config(), ["task.input_dim=5"])
        cfg = apply_overrides(mod.Config(), ["task.input_dim=5", "model.token_dim=6", "model.key_size=6"])
        assert cfg.model.token_dim == 6


@pytest.mark.slow
def test_a_model_option_reaches_the_trained_variants(tmp_path):
    """`--set model.key_size=5` on fig14: both variants' checkpoints hold key size 5 projections."""
    out = tmp_path / "k5"
    assert _run(["run", "fig14", "--quick", "--no-progress", "--out", out, "--set", "model.key_size=5",
                 "--set", "train.steps=20", "--set", "deep_steps=20", "--set", "task.eval_tasks=200",
                 "--set", "gdpp.steps_tied=10"]) == 0
    for name in ("ln1", "ln2"):
        with np.load(out / "checkpoints" / f"{name}_seed0.npz") as z:
            shapes = {k: z[k].shape for k in z.files if k.startswith("param/") and k.endswith("W_q")}
        assert shapes and all(s[-1] == 5 for s in shapes.values()), shapes
