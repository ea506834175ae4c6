"""What a run tells its user: the summary at its end and from `iclgd show`, the QUICK marker on a
reduced run's summary and figure, and `iclgd config` documenting every key (through the command
line in a subprocess)."""
import dataclasses
import json

import pytest

from iclgd.cli.config import field_comments, rows
from iclgd.experiments import EXPERIMENTS, get_experiment
from iclgd.summary import REFERENCE, summary_lines
from tests.conftest import cli_subprocess

# experiments whose paper-settings results are not committed yet (the README says so): the tests of
# the committed results skip them, and fail once their results land, until taken off this list
NOT_RUN_YET = ()  # every registered experiment has a committed run
COMMITTED = [name for name in EXPERIMENTS if name not in NOT_RUN_YET]

TINY = ["--quick", "--no-progress", "--set", "task.eval_tasks=200", "--set", "train.steps=20",
        "--set", "train.batch=64"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("run")
    proc = cli_subprocess("run", "fig2", "--out", "q", *TINY, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "q", proc.stdout


@pytest.mark.slow
def test_a_run_ends_with_its_summary_and_show_prints_it_again(quick_run):
    out, stdout = quick_run
    r = json.loads((out / "results.json").read_text())
    shown = cli_subprocess("show", out)
    assert shown.returncode == 0
    summary = shown.stdout.strip().splitlines()
    assert stdout.strip().splitlines()[-len(summary):] == summary  # the run printed the same lines
    loss_row = next(line for line in summary if line.startswith("loss: trained TF vs 1 GD step"))
    assert f"{r['final']['loss_tf']:.4g}" in loss_row and f"{r['final']['loss_gd']:.4g}" in loss_row
    assert "~0.205" in loss_row  # the paper's value, SPEC 6
    assert "paper (SPEC 6)" in summary[1]


@pytest.mark.slow
def test_a_quick_run_is_marked_in_results_summary_and_figure(quick_run, tmp_path, monkeypatch):
    out, stdout = quick_run
    r = json.loads((out / "results.json").read_text())
    assert r["quick"] is True and "QUICK run: reduced settings, not the paper's" in stdout
    assert figure_title(r, tmp_path, monkeypatch).startswith("fig2: QUICK run, reduced settings")
    r["quick"] = False
    assert "QUICK" not in figure_title(r, tmp_path, monkeypatch)


def figure_title(r, folder, monkeypatch):
    """The title iclgd.plots gives the figure of results r."""
    from iclgd import plots
    titles = []
    real = plots._plt().Figure.suptitle
    monkeypatch.setattr(plots._plt().Figure, "suptitle", lambda self, t, **k: (titles.append(t), real(self, t, **k))[1])
    plots.plot_results(r, str(folder))
    return titles[-1]


def test_a_full_run_is_not_marked(quick_run):
    out, _ = quick_run
    r = json.loads((out / "results.json").read_text())
    r["quick"] = False
    assert not any("QUICK" in line for line in summary_lines(r))


def test_every_experiment_has_summary_rows_that_name_real_keys():
    """Each reference row names a key the experiment writes (checked on the committed results)."""
    import os
    from tests.conftest import ROOT
    for name in COMMITTED:
        path = os.path.join(ROOT, "results", name, "results.json")
        with open(path) as f:
            final = json.load(f)["final"]
        if all(isinstance(v, dict) for v in final.values()):  # per-variant finals: each row in the first,
            groups = [next(iter(final.values()))]  # unless the variants differ in kind (fig15's grokking block)
            if name == "fig15":
                groups = list(final.values())
        else:  # plain numbers, maybe beside variants (fig4): each row in one of them
            groups = [final] + [v for v in final.values() if isinstance(v, dict)]
        for label, key, base, _ in REFERENCE[name]:
            home = [g for g in groups if key in g]
            assert home, (name, key)
            assert base is None or base.lstrip("-") in home[0], (name, base)


def test_show_of_a_diverged_run_says_so():
    r = {"experiment": "fig2", "figure": "Figure 2", "backend": "numpy", "seeds": [0], "steps_run": 3,
         "status": "diverged", "diverged": {"step": 3, "tensor": "loss", "reason": "the loss is nan",
                                            "model_tag": "lsa1", "seed": 0, "checkpoint_step": 0}}
    assert "DIVERGED at step 3 (lsa1, seed 0): the loss is nan" in summary_lines(r)[1]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_config_documents_every_key_with_value_default_type_and_comment(name):
    mod = get_experiment(name)
    table = rows(mod.Config(), mod.Config())
    from refimpl.config import valid_keys
    assert [r[0] for r in table] == valid_keys(mod.Config())
    for key, value, default, type_, comment in table:
        assert value == default and type_ and comment, key


def test_config_command_shows_overrides_and_the_workers_key():
    proc = cli_subprocess("config", "fig3", "--set", "workers=3")
    assert proc.returncode == 0
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("workers "))
    assert line.split()[1:3] == ["3", "1"] and "parallel processes" in line
    bad = cli_subprocess("config", "fig3", "--set", "deep_steps=8000")
    assert bad.returncode == 2 and bad.stderr.strip() == "iclgd config: error: deep_steps: expected a list, got 8000"


def test_field_comments_follow_continuation_lines():
    from refimpl.config import ModelConfig
    comment = field_comments(ModelConfig)["ln_placement"]
    assert comment.startswith('"public"') and '"pre": before every attention and MLP' in comment
    assert set(field_comments(ModelConfig)) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_experiments_not_run_yet_have_no_results_and_the_readme_says_so():
    import os
    from tests.conftest import ROOT
    readme = open(os.path.join(ROOT, "README.md")).read()
    for name in NOT_RUN_YET:
        assert not os.path.exists(os.path.join(ROOT, "results", name, "results.json")), name
        assert f"`{name}` is registered but not run at the paper's settings yet" in readme, name


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMITTED)
def test_every_panel_of_every_figure_is_labelled_and_drawn(name, tmp_path, monkeypatch):
    """Structure of each committed figure: every panel has data, an x label and a y label; the
    title names the seeds without Python list brackets."""
    import os
    import shutil

    from iclgd import plots
    from tests.conftest import ROOT
    shutil.copy(os.path.join(ROOT, "results", name, "results.json"), tmp_path / "results.json")
    r = json.loads((tmp_path / "results.json").read_text())
    figures = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda r_, fig, *a: (figures.append(fig), real(r_, fig, *a))[1])
    plots.plot_results(r, str(tmp_path))
    fig = figures[0]
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>" and a.get_subplotspec() is not None]
    assert panels
    for a in panels:
        assert a.lines or a.images or a.collections, (name, a.get_title())
        assert a.get_xlabel() and a.get_ylabel(), (name, a.get_title())
    assert "[" not in fig._suptitle.get_text()
