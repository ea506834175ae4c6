"""The list / run / plot commands on quick settings: documented result keys, re-plotting without
training, resumption through the command line, clear errors for bad input."""
import json
import os
import shutil
import time

import numpy as np
import pytest

from iclgd import cli
from iclgd.results import REQUIRED_KEYS
from tests.conftest import TOL

FIG2_FINAL = ("loss_tf", "loss_gd", "loss_interp", "model_cos", "model_diff", "preds_diff", "gd_eta",
              "gd_eta_closed_form")
TINY = ["--quick", "--no-progress", "--set", "task.eval_tasks=300"]


def _run(argv):
    return cli.main([str(a) for a in argv])


def _results(path):
    with open(os.path.join(path, "results.json")) as f:
        return json.load(f)


def test_list_names_every_experiment(capsys):
    from iclgd.experiments import EXPERIMENTS
    assert _run(["list"]) == 0
    out = capsys.readouterr().out
    for name, (_, figure, _) in EXPERIMENTS.items():
        assert name in out and figure in out


@pytest.fixture(scope="module")
def fig2_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig2")
    assert _run(["run", "fig2", "--out", out, *TINY, "--set", "train.steps=120"]) == 0
    return out


@pytest.mark.slow
def test_fig2_results_have_the_documented_keys(fig2_dir):
    r = _results(fig2_dir)
    assert all(k in r for k in REQUIRED_KEYS)
    assert r["experiment"] == "fig2" and r["seeds"] == [0] and r["backend"] == "numba-cpu"
    assert r["config"]["train"]["steps"] == 120 and r["quick"] is True
    for k in FIG2_FINAL:
        assert np.isfinite(r["final"][k]), k
    c = r["curves"]
    assert c["step"][0] == 0 and c["step"][-1] == 120
    for k in ("loss_tf", "model_cos", "model_diff", "preds_diff"):
        assert len(c[k]) == len(c["step"])
    assert os.path.isfile(os.path.join(fig2_dir, "fig2.png")) and os.path.isfile(os.path.join(fig2_dir, "fig2.pdf"))


@pytest.mark.slow
def test_plot_rerenders_from_results_alone_without_training(fig2_dir, tmp_path, monkeypatch):
    import iclgd.train

    def no_training(*a, **k):
        raise AssertionError("plot must not train")

    monkeypatch.setattr(iclgd.train, "train", no_training)
    monkeypatch.setattr(iclgd.experiments.common, "train", no_training)
    shutil.copy(os.path.join(fig2_dir, "results.json"), tmp_path / "results.json")
    assert _run(["plot", tmp_path]) == 0
    assert sorted(os.listdir(tmp_path)) == ["fig2.pdf", "fig2.png", "results.json"]
    assert os.path.getsize(tmp_path / "fig2.png") > 1000


@pytest.mark.slow
def test_replotting_writes_the_same_bytes(fig2_dir, tmp_path, monkeypatch):
    """A re-plot of the same results.json gives byte-identical PNG and PDF files, also a second
    later (a PDF creation date would differ), so re-plotting a committed figure changes nothing."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    shutil.copy(os.path.join(fig2_dir, "results.json"), tmp_path / "results.json")
    assert _run(["plot", tmp_path]) == 0
    first = {ext: (tmp_path / f"fig2.{ext}").read_bytes() for ext in ("png", "pdf")}
    time.sleep(1.1)
    assert _run(["plot", tmp_path]) == 0
    for ext, data in first.items():
        assert (tmp_path / f"fig2.{ext}").read_bytes() == data, ext


@pytest.mark.slow
def test_run_resume_reaches_the_uninterrupted_final_state(tmp_path):
    base = ["run", "fig2", *TINY, "--set", "train.checkpoint_every=40"]
    assert _run([*base, "--out", tmp_path / "full", "--set", "train.steps=80"]) == 0
    # an interrupted run: stopped after 40 steps (its checkpoint), then resumed to 80
    assert _run([*base, "--out", tmp_path / "cut", "--set", "train.steps=40"]) == 0
    assert _run([*base, "--out", tmp_path / "cut", "--set", "train.steps=80", "--resume"]) == 0
    full, cut = _results(tmp_path / "full"), _results(tmp_path / "cut")
    assert cut["steps_run"] == 40
    assert full["final"] == cut["final"]
    a = np.load(tmp_path / "full" / "checkpoints" / "lsa1_seed0.npz")
    b = np.load(tmp_path / "cut" / "checkpoints" / "lsa1_seed0.npz")
    for k in a.files:
        if k.startswith("param/"):
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fig1", "fig3", "fig6", "fig8", "fig16"])
def test_other_experiments_write_their_keys(tmp_path, name):
    extra = {"fig1": ["--set", "train.steps=60", "--set", "repeats=7"],
             "fig3": ["--set", "train.steps=30", "--set", "deep_steps=[30]", "--set", "deep_layers=[2,4]"],
             "fig8": ["--set", "train.steps=30", "--set", "deep_steps=[30]", "--set", "deep_layers=[2]",
                      "--set", "heads=3"],
             "fig6": ["--set", "train.steps=60"],
             "fig16": ["--set", "train.steps=60"]}[name]
    assert _run(["run", name, "--out", tmp_path, *TINY, *extra]) == 0
    r = _results(tmp_path)
    assert all(k in r for k in REQUIRED_KEYS) and r["experiment"] == name
    assert os.path.isfile(tmp_path / f"{name}.png") and os.path.isfile(tmp_path / f"{name}.pdf")
    if name == "fig1":
        assert len(r["curves"]["loss_tf"]) == 7 and len(r["curves"]["loss_gd"]) == 7
        assert len(r["curves"]["median_tf_other_row"]) == 7 and r["final"]["query_label_row_norm"] > 0
    if name == "fig3":
        assert set(r["final"]) == {"tied2", "deep2", "deep4"}
        for v in r["final"].values():
            assert all(np.isfinite(v[k]) for k in ("loss_tf", "loss_gd", "loss_gdpp"))
            assert len(v["loss_tf_layers"]) == v["layers"]
        assert r["final"]["deep4"]["token_clip"] == 10.0 and r["final"]["deep4"]["lr"] == 5e-4
        for v in r["final"].values():  # the GD++ fit's curve ends at the fitted scalars' loss
            fit = v["gdpp_fit"]
            assert fit["step"][0] == 0 and fit["step"][-1] == int(r["config"]["gdpp"]["steps_tied" if v["weight_tied"] else "steps_deep"])
            rtol = TOL["recomputed_scalar"]["rtol"]
            assert abs(fit["loss_gdpp"][-1] - v["loss_gdpp"]) <= rtol * v["loss_gdpp"]
    if name in ("fig3", "fig8"):  # fig3: one head, no MLP; fig8: its heads (key size D each) and MLPs
        from iclgd.summary import REFERENCE
        heads, mlp = (1, False) if name == "fig3" else (3, True)
        p = np.load(tmp_path / "checkpoints" / "deep2_seed0.npz")
        assert p["param/layer1.attn.W_q"].shape == (11, 11 * heads)
        assert ("param/layer1.mlp.W1" in p.files) is mlp
        assert all(key in r["final"]["deep2"] for _, key, _, _ in REFERENCE[name])
    if name == "fig8":  # and fig7's out-of-distribution curves of each variant, in a second figure
        assert set(r["ood"]) == set(r["final"]) == {"tied2", "deep2"}
        for fam in ("input", "weight", "laws"):
            assert all(len(r["ood"]["deep2"][fam][m]) == len(r["ood"]["deep2"]["alpha"][fam]) for m in ("tf", "gd", "gdpp"))
        assert os.path.getsize(tmp_path / "fig8-ood.png") > 1000 and os.path.isfile(tmp_path / "fig8-ood.pdf")
    if name == "fig6":
        for fam in ("input", "weight", "laws"):
            assert len(r["ood"][fam]["tf"]) == len(r["ood"]["alpha"][fam])
        # the laws family split by law: its task-weighted mean is the mixed family's loss
        n = r["ood"]["law_tasks"]
        assert set(n) == {"exponential", "normal", "laplace"} and min(n.values()) > 0
        assert sum(n.values()) == r["config"]["task"]["eval_tasks"]
        for model in ("tf", "gd", "gdpp", "interp"):
            mixed = sum(n[law] * np.array(r["ood"]["by_law"][law][model]) for law in n) / sum(n.values())
            np.testing.assert_allclose(mixed, r["ood"]["laws"][model], **TOL["float64_reordered"])
        # GD's loss is exactly quadratic in the scale
        assert r["final"]["weight_scale_law_dev_gd"] < TOL["recomputed_scalar"]["rtol"]
        # the closed-form curves: one per eta, named with that eta
        closed, eta = r["ood"]["input_closed_form"], r["ood"]["eta_over_n"]
        assert len(closed["gd"]) == len(closed["gd_opt"]) == len(r["ood"]["alpha"]["input"])
        assert eta["gd"] == r["final"]["gd_eta_over_n"] and eta["gd_closed_form_opt"] == r["final"]["gd_eta_over_n_opt"]
    if name == "fig16":
        assert set(r["final"]) == {"B16", "B256"}


def test_bad_inputs_give_clear_errors(capsys, tmp_path):
    assert _run(["run", "fig99", "--out", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "fig99" in err and "fig2" in err
    assert _run(["run", "fig2", "--out", tmp_path, "--set", "train.stpes=5"]) == 2
    err = capsys.readouterr().err
    assert "train.stpes" in err and "train.steps" in err
    assert _run(["run", "fig2", "--out", tmp_path, "--set", "train.steps=many"]) == 2
    assert "expected an integer" in capsys.readouterr().err
    assert _run(["run", "fig2", "--out", tmp_path, "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert _run(["plot", tmp_path / "nowhere"]) == 2
    assert "results.json" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "results.json")


@pytest.mark.slow
def test_resume_with_another_depth_reads_back_the_finished_models(tmp_path):
    base = ["run", "fig3", "--out", tmp_path, *TINY, "--set", "train.steps=20", "--set", "deep_steps=[30]"]
    assert _run([*base, "--set", "deep_layers=[2]"]) == 0
    first = _results(tmp_path)
    stamp = os.path.getmtime(tmp_path / "checkpoints" / "deep2_seed0.npz")
    assert _run([*base, "--set", "deep_layers=[2,4]", "--resume"]) == 0
    r = _results(tmp_path)
    assert set(r["final"]) == {"tied2", "deep2", "deep4"} and r["config"]["deep_layers"] == [2, 4]
    assert r["final"]["deep2"] == first["final"]["deep2"] and r["final"]["tied2"] == first["final"]["tied2"]
    assert os.path.getmtime(tmp_path / "checkpoints" / "deep2_seed0.npz") == stamp  # not retrained
    # another setting than the resumable ones is still refused
    assert _run([*base, "--set", "deep_layers=[2,4]", "--set", "train.lr=0.002", "--resume"]) == 2
