"""`iclgd sweep`'s parts without training: seeds and grid parsing, the plan, the merge's statistics
against NumPy, the executor loop's retry of a job whose worker died (a real process pool whose
worker exits), its handling of a job that raised, and one-device-per-worker pinning."""
import concurrent.futures as cf
import importlib.util
import json
import os

import numpy as np
import pytest

from iclgd import sweep as sw
from iclgd import sweep_merge as sm
from iclgd.cli import main
from tests.conftest import TOL


# ----------------------------------------------------------------------------- parsing and the plan
@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("0,3,7", [0, 3, 7]), ("4", [4]),
                                         ("0-1, 5", [0, 1, 5])])
def test_seeds_parse_ranges_and_lists(text, seeds):
    assert sw.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a", "3-1", "-1", "0,,1", "1-2,2", "1.5"])
def test_bad_seeds_name_the_flag(text):
    with pytest.raises(ValueError, match="--seeds"):
        sw.parse_seeds(text)


def test_grid_splits_at_top_level_commas_only():
    grid = sw.parse_grid(["sizes=[16, 64],[256]", "train.lr=0.001,0.002"])
    assert grid == [("sizes", ["[16, 64]", "[256]"]), ("train.lr", ["0.001", "0.002"])]
    points = sw.grid_points(grid)
    assert len(points) == 4 and points[0] == [("sizes", "[16, 64]"), ("train.lr", "0.001")]
    assert points[1] == [("sizes", "[16, 64]"), ("train.lr", "0.002")]  # the last key varies fastest
    assert sw.point_name(points[0]) == "sizes=_16_64___train.lr=0.001"
    assert sw.grid_points([]) == [[]] and sw.point_name([]) == "base"


@pytest.mark.parametrize("items, overrides", [(["lr"], []), (["a=1,1"], []), (["a=1", "a=2"], []),
                                              (["train.lr=1,2"], ["train.lr=3"]), (["a=1,"], [])])
def test_bad_grid_names_the_flag(items, overrides):
    with pytest.raises(ValueError, match="--grid"):
        sw.parse_grid(items, overrides)


def test_plan_resolves_every_point_and_names_its_folders(tmp_path):
    grid = sw.parse_grid(["train.lr=0.001,0.002"])
    jobs = sw.plan("fig2", [0, 3], grid, ["train.steps=7"], "numpy", True, str(tmp_path))
    assert [(j.point, j.seed) for j, _ in jobs] == [("train.lr=0.001", 0), ("train.lr=0.001", 3),
                                                   ("train.lr=0.002", 0), ("train.lr=0.002", 3)]
    assert [c["train"]["lr"] for _, c in jobs] == [0.001, 0.001, 0.002, 0.002]
    assert all(c["train"]["steps"] == 7 for _, c in jobs)
    assert jobs[1][0].out == os.path.join(str(tmp_path), "train.lr=0.001", "seed3")
    with pytest.raises(ValueError, match="unknown config key 'train.nope'"):
        sw.plan("fig2", [0], sw.parse_grid(["train.nope=1,2"]), [], "numpy", True, str(tmp_path))
    with pytest.raises(ValueError, match="share the folder name"):
        sw.plan("fig16", [0], sw.parse_grid(["sizes=[16,64],[16, 64]"]), [], "numpy", True, str(tmp_path))


def test_is_complete_needs_the_same_config_seed_and_status(tmp_path):
    (job, config), = sw.plan("fig2", [2], [], [], "numpy", True, str(tmp_path))
    os.makedirs(job.out)
    results = {"status": "complete", "experiment": "fig2", "seeds": [2], "backend": "numpy", "quick": True,
               "config": config}
    for change, expected in [({}, True), ({"seeds": [0]}, False), ({"status": "diverged"}, False),
                             ({"quick": False}, False), ({"config": {**config, "task": {}}}, False)]:
        with open(os.path.join(job.out, "results.json"), "w") as f:
            json.dump({**results, **change}, f)
        assert sw.is_complete(job, config) is expected, change


# ----------------------------------------------------------------------------- the merge
def _run_results(rng, n_eval):
    return {"final": {"loss_tf": float(rng.random()), "label": "x", "A": {"m": float(rng.random())},
                      "layers": list(rng.random(3)), "loss_gd": float(rng.random()),
                      "fit": {"step": [0, 1, 2], "loss_gd": list(rng.random(3))}},
            "curves": {"step": list(range(0, 10 * n_eval, 10)), "loss_tf": list(rng.random(n_eval)),
                       "A": {"step": [0, 5], "loss": list(rng.random(2))}}}


def test_stats_tree_equals_numpy_mean_and_sample_std():
    rng = np.random.default_rng(0)
    runs = [_run_results(rng, 13) for _ in range(3)]
    final = sm.stats_tree([r["final"] for r in runs])
    vals = [r["final"]["loss_tf"] for r in runs]
    np.testing.assert_allclose(final["loss_tf"]["mean"], np.mean(vals), **TOL["float64_reordered"])
    np.testing.assert_allclose(final["loss_tf"]["std"], np.std(vals, ddof=1), **TOL["float64_reordered"])
    assert final["loss_tf"]["per_seed"] == vals and final["label"] == "x"
    assert final["A"]["m"]["per_seed"] == [r["final"]["A"]["m"] for r in runs]
    np.testing.assert_allclose(final["layers"]["mean"], np.mean([r["final"]["layers"] for r in runs], 0),
                               **TOL["float64_reordered"])
    curves = sm.stats_tree([r["curves"] for r in runs])
    stack = np.array([r["curves"]["loss_tf"] for r in runs])  # (seeds, evaluations)
    np.testing.assert_allclose(curves["loss_tf"]["mean"], stack.mean(0), **TOL["float64_reordered"])
    np.testing.assert_allclose(curves["loss_tf"]["std"], stack.std(0, ddof=1), **TOL["float64_reordered"])
    assert curves["step"] == runs[0]["curves"]["step"] and curves["A"]["step"] == [0, 5]


def test_stats_of_one_seed_or_a_null_value():
    one = sm.stats_tree([{"a": 2.0}])
    assert one["a"] == {"mean": 2.0, "std": None, "per_seed": [2.0]}
    assert sm.stats_tree([{"a": 1.0}, {"a": None}])["a"]["mean"] is None
    c = sm.stats_tree([{"l": [1.0, None]}, {"l": [3.0, 4.0]}])["l"]
    assert c["mean"] == [2.0, None]


def test_tail_median_is_the_median_of_the_last_tenth():
    curve = list(np.arange(25.0))  # the last ceil(2.5) = 3 entries: 22, 23, 24
    assert sm.tail_median(curve) == 23.0
    assert sm.tail_median([5.0, 1.0]) == 1.0  # at least one entry
    assert sm.tail_median([1.0, None]) is None
    tails = sm.tail_medians({"step": [0, 1], "loss": [3.0, 1.0], "v": {"step": [0], "loss": [2.0]}})
    assert tails == {"loss": 1.0, "v": {"loss": 2.0}}
    final = {"deep5": {"loss_tf": 0.1, "layers_loss": [1.0, 2.0], "fit": {"step": [0, 1], "loss_gdpp": [4.0, 3.0]}}}
    assert sm.tail_medians(final) == {"deep5": {"fit": {"loss_gdpp": 3.0}}}  # curves kept in finals only


def test_merge_reads_each_complete_seed_and_marks_the_rest(tmp_path):
    rng = np.random.default_rng(1)
    runs = {s: _run_results(rng, 11) for s in (0, 1, 2)}
    for s in (0, 2):
        folder = tmp_path / "p" / f"seed{s}"
        folder.mkdir(parents=True)
        body = {"experiment": "fig2", "figure": "F", "config": {}, "seeds": [s], "backend": "numpy",
                "versions": {}, "quick": True, "runtime_s": 1.0, "steps_run": 1, "per_seed": [], "notes": "",
                **runs[s]}
        (folder / "results.json").write_text(json.dumps(body))
    jobs = {0: {"status": "complete"}, 1: {"status": "failed", "error": "E"}, 2: {"status": "skipped"}}
    merged = sm.merge({"experiment": "fig2", "seeds": [0, 1, 2]}, [("p", str(tmp_path), {"k": "v"}, [0, 1, 2], jobs)])
    assert merged["status"] == "incomplete"
    point, = merged["points"]
    assert point["seeds"] == [0, 2] and point["settings"] == {"k": "v"}
    assert point["final"]["loss_tf"]["per_seed"] == [runs[0]["final"]["loss_tf"], runs[2]["final"]["loss_tf"]]
    assert point["tail_median"]["loss_tf"]["per_seed"] == [sm.tail_median(runs[s]["curves"]["loss_tf"]) for s in (0, 2)]
    lines = sm.summary_lines({**merged, "backend": "numpy"})
    assert any("seed 1 failed: E" in line for line in lines)
    row = next(line.strip() for line in lines if line.strip().startswith("loss: trained TF vs 1 GD step:"))
    tf, gd = ([sm.tail_median(runs[s]["curves"]["loss_tf"]) for s in (0, 2)],
              [runs[s]["final"]["fit"]["loss_gd"][-1] for s in (0, 2)])  # a baseline's curve kept in final
    final_tf, final_gd = [runs[s]["final"]["loss_tf"] for s in (0, 2)], [runs[s]["final"]["loss_gd"] for s in (0, 2)]
    assert row == (f"loss: trained TF vs 1 GD step: final {np.mean(final_tf):.4g} +- {np.std(final_tf, ddof=1):.2g}, "
                   f"tail {np.mean(tf):.4g} +- {np.std(tf, ddof=1):.2g} (baseline final {np.mean(final_gd):.4g} +- "
                   f"{np.std(final_gd, ddof=1):.2g}, tail {np.mean(gd):.4g} +- {np.std(gd, ddof=1):.2g}; "
                   f"paper: ~0.205, equal to one GD step)")
    (tmp_path / "sweep.json").write_text(json.dumps({**merged, "backend": "numpy", "quick": True}))
    assert main(["show", str(tmp_path)]) == 0 and main(["plot", str(tmp_path)]) == 0  # from sweep.json alone
    assert os.path.getsize(tmp_path / "sweep.png") > 0 and os.path.getsize(tmp_path / "sweep.pdf") > 0


def test_merge_carries_the_ood_curves_over_seeds_and_keeps_their_axes(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    axes = {"alpha": {"input": [0.5, 1.0, 2.0]}, "k": [0, 1], "law_tasks": {"normal": 3}}
    oods = [{"deep5": {**axes, "input": {"tf": list(rng.random(3)), "gd": [1.0, None, 2.0]},
                       "by_law": {"normal": {"tf": list(rng.random(3))}}}} for _ in range(2)]
    for s, ood in enumerate(oods):
        folder = tmp_path / "p" / f"seed{s}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({
            "experiment": "fig7", "figure": "F", "config": {}, "seeds": [s], "backend": "numpy", "versions": {},
            "quick": True, "runtime_s": 1.0, "steps_run": 1, "per_seed": [], "notes": "",
            "final": {"deep5": {"loss_tf": float(s)}}, "curves": {"deep5": {"step": [0], "loss_tf": [1.0]}},
            "ood": ood}))
    jobs = {0: {"status": "complete"}, 1: {"status": "complete"}}
    point, = sm.merge({"experiment": "fig7", "seeds": [0, 1]}, [("p", str(tmp_path), {}, [0, 1], jobs)])["points"]
    o = point["ood"]["deep5"]
    assert {k: o[k] for k in axes} == axes  # the axes as they are, not averaged
    stack = np.array([ood["deep5"]["input"]["tf"] for ood in oods])  # (seeds, alphas)
    np.testing.assert_allclose(o["input"]["tf"]["mean"], stack.mean(0), **TOL["float64_reordered"])
    np.testing.assert_allclose(o["input"]["tf"]["std"], stack.std(0, ddof=1), **TOL["float64_reordered"])
    assert o["input"]["gd"]["mean"] == [1.0, None, 2.0]  # a diverged point stays null
    assert o["by_law"]["normal"]["tf"]["per_seed"] == [ood["deep5"]["by_law"]["normal"]["tf"] for ood in oods]
    merged = sm.merge({"experiment": "fig7", "seeds": [0, 1]}, [("p", str(tmp_path), {}, [0, 1], jobs)])
    import iclgd.plots as plots
    figures = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda r, fig, *a: (figures.append(fig), real(r, fig, *a))[1])
    sm.plot_sweep({**merged, "quick": True}, str(tmp_path))  # a panel of the OOD curves beside the training curve's
    panel, = [a for a in figures[0].axes if a.get_title() == "ood / deep5 / input"]
    assert [list(line.get_xdata()) for line in panel.lines[:2]] == [axes["alpha"]["input"]] * 2
    np.testing.assert_allclose(panel.lines[0].get_ydata(), stack.mean(0), **TOL["float64_reordered"])
    del oods[1]["deep5"]["k"]
    (tmp_path / "p" / "seed1" / "results.json").write_text(json.dumps({
        **json.loads((tmp_path / "p" / "seed1" / "results.json").read_text()), "ood": oods[1]}))
    point, = sm.merge({"experiment": "fig7", "seeds": [0, 1]}, [("p", str(tmp_path), {}, [0, 1], jobs)])["points"]
    assert "k" not in point["ood"]["deep5"] and "input" in point["ood"]["deep5"]  # only what every seed has


def test_show_and_plot_name_a_bad_sweep_file(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text(json.dumps({"experiment": "fig2"}))
    for command in ("show", "plot"):
        assert main([command, str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "sweep.json: missing key(s)" in err


# ----------------------------------------------------------------------------- the executor loop
def _job(tmp_path, seed):
    return sw.Job("fig2", "p", (), (), seed, "numpy", True, str(tmp_path / f"seed{seed}"))


def die_once(job):
    """A job whose worker process dies on its first attempt (marked by a file), then completes."""
    marker = job.out + ".died"
    if job.seed == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return {"status": "complete", "pid": os.getpid()}


def always_die(job):
    os._exit(1)


def test_a_job_whose_worker_died_is_retried_on_a_new_pool(tmp_path):
    jobs = [_job(tmp_path, s) for s in range(3)]
    progress = sw.Progress(3, 0, "t", False)
    out = sw.execute(jobs, lambda: sw.local_executor(2), lambda: 2, retries=1, progress=progress, poll_s=0.05,
                     fn=die_once)
    assert all(o.status == "complete" for o in out.values())
    assert out[jobs[1]].attempts == 2 and progress.retried >= 1 and progress.failed == 0


def test_a_worker_that_always_dies_fails_after_its_retries(tmp_path):
    job = _job(tmp_path, 0)
    out = sw.execute([job], lambda: sw.local_executor(1), lambda: 1, retries=1, poll_s=0.05, fn=always_die)
    assert out[job].status == "failed" and out[job].attempts == 2 and "died 2 times" in out[job].error


def test_a_pool_found_broken_at_submission_is_replaced(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    class BrokenAtSubmit(cf.ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            raise BrokenProcessPool("a worker died")
    made = []

    def make():
        made.append(BrokenAtSubmit(1) if not made else cf.ThreadPoolExecutor(1))
        return made[-1]
    job = _job(tmp_path, 0)
    out = sw.execute([job], make, lambda: 1, poll_s=0.05, fn=lambda j: {"status": "complete"})
    assert out[job].status == "complete" and out[job].attempts == 1 and len(made) == 2


def raise_bad(job):
    raise ValueError(f"bad seed {job.seed}")


def test_a_job_that_raised_fails_once_with_its_message(tmp_path):
    jobs = [_job(tmp_path, s) for s in range(2)]
    out = sw.execute(jobs, lambda: cf.ThreadPoolExecutor(2), lambda: 2, retries=3, poll_s=0.05, fn=raise_bad)
    assert [(o.status, o.attempts, o.error) for o in out.values()] == [
        ("failed", 1, "ValueError: bad seed 0"), ("failed", 1, "ValueError: bad seed 1")]


def device_and_pid(_job):
    import time
    time.sleep(0.3)  # both workers busy at once
    return {"status": "complete", "pid": os.getpid(), "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": os.environ.get("OPENBLAS_NUM_THREADS")}


def test_local_pool_gives_each_worker_its_own_device_and_one_thread(tmp_path):
    with sw.local_executor(2, devices=["3", "5"]) as ex:
        got = list(ex.map(device_and_pid, range(4)))
    by_pid = {g["pid"]: g["device"] for g in got}
    assert set(by_pid.values()) <= {"3", "5"}
    assert len(set(by_pid.values())) == len(by_pid)  # distinct workers, distinct devices
    assert all(g["threads"] == "1" for g in got)


# ----------------------------------------------------------------------------- the command line
def test_cli_bad_flags_are_one_line_errors(capsys, tmp_path):
    for argv, what in [(["--seeds", "2-1"], "--seeds"), (["--grid", "train.lr"], "--grid"),
                       (["--jobs", "0"], "--jobs"), (["--retries", "-1"], "--retries"),
                       (["--cluster-option", "queue=x"], "--cluster-option"),
                       (["--grid", "train.nope=1,2"], "train.nope"),
                       *([(["--scheduler", "not-an-address"], "--scheduler not-an-address")]
                         if importlib.util.find_spec("distributed") else [])]:
        assert main(["sweep", "fig2", "--quick", "--out", str(tmp_path), *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and what in err, (argv, err)


def test_cli_dry_run_lists_the_runs(capsys, tmp_path):
    assert main(["sweep", "fig2", "--quick", "--seeds", "0-1", "--grid", "train.lr=0.001,0.002", "--out",
                 str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.endswith(": to run") for line in lines)
    assert lines[3].startswith(os.path.join(str(tmp_path), "train.lr=0.002", "seed1"))


def test_slurm_job_script_has_the_options_and_one_thread_each():
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    from iclgd.cli.sweep import slurm_options
    options = slurm_options(["queue=gpu", "memory=8GB", 'job_extra_directives=["--gres=gpu:1"]'])
    with dask_jobqueue.SLURMCluster(**options) as cluster:  # starts no job until scaled
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH --mem=8G", "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=1",
                 "export OPENBLAS_NUM_THREADS=1", "export NUMBA_NUM_THREADS=1"):
        assert line in script, line
    assert "--nthreads 1" in script
    with pytest.raises(ValueError, match="--cluster-option"):
        slurm_options(["queue"])


def test_a_second_sweep_on_a_folder_in_use_is_refused(capsys, tmp_path):
    from iclgd import rundir
    with rundir.locked(str(tmp_path)):
        assert main(["sweep", "fig2", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"PID {os.getpid()}" in err


def test_gpu_backends_get_one_worker_per_visible_device(monkeypatch):
    import argparse
    from iclgd.cli.sweep import executor_for
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    assert sw.gpu_devices() == ["2", "5", "7"]
    args = argparse.Namespace(scheduler=None, cluster=None, backend="cupy", jobs=None)
    _, capacity, _ = executor_for(args, n_todo=10)
    assert capacity() == 3  # one run per GPU, not one per core
    _, capacity, _ = executor_for(argparse.Namespace(**{**vars(args), "backend": "numpy"}), n_todo=1)
    assert capacity() == 1  # never more workers than runs
    with pytest.raises(ValueError, match="--jobs: expected at most 3 with backend cupy"):
        executor_for(argparse.Namespace(**{**vars(args), "jobs": 4}), n_todo=10)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="--backend cupy: expected a visible GPU"):
        executor_for(args, n_todo=10)


def _ctrl_c(*_, **__):
    raise KeyboardInterrupt


def test_ctrl_c_outside_the_executors_handler_still_merges_and_says_how_to_continue(monkeypatch, capsys, tmp_path):
    """A Ctrl-C that reaches the sweep outside execute's own handler (the pool stopping, say) still
    writes sweep.json with the runs as they are and prints how to continue; exit 130."""
    monkeypatch.setattr(sw, "execute", _ctrl_c)
    argv = ["sweep", "fig2", "--quick", "--seeds", "0-1", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted; 0 of 2 runs complete" in err and "the same command continues" in err, err
    merged = json.loads((tmp_path / "sweep.json").read_text())
    assert merged["status"] == "interrupted" and merged["points"][0]["seeds"] == []


def test_ctrl_c_while_merging_leaves_the_runs_and_says_how_to_continue(monkeypatch, capsys, tmp_path):
    from iclgd.cli import sweep as cli_sweep
    monkeypatch.setattr(sw, "execute", lambda jobs, *a, **k: {job: sw.Outcome("failed", 1, "E") for job in jobs})
    monkeypatch.setattr(cli_sweep, "write_sweep", _ctrl_c)
    assert main(["sweep", "fig2", "--quick", "--seeds", "0", "--out", str(tmp_path), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted while merging into" in err and "the same command continues" in err, err
    assert not (tmp_path / "sweep.json").exists()
