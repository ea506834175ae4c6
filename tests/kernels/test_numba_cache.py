"""Numba's on-disk cache is kept valid across the package's files, a first run says that it
compiles, and the compile warm-up of a run changes nothing in it."""
import types

import numpy as np

from kernels.numba import cache


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_cached_kernels_are_deleted_when_any_source_file_changes(tmp_path, monkeypatch):
    src, store = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    store.mkdir()
    (src / "model.py").write_text("x = 1\n")
    (src / "cpu.py").write_text("y = 2\n")
    monkeypatch.setattr(cache, "cache_folder", lambda: str(store))

    def compiled():  # what Numba leaves after compiling a kernel of cpu.py
        for name in ("cpu.task_kernel-75.py311.nbi", "cpu.task_kernel-75.py311.1.nbc"):
            (store / name).write_bytes(b"machine code")

    compiled()
    assert cache.invalidate_if_sources_changed(str(src)) == 2  # no stamp yet: nothing is trusted
    assert _files(store) == [cache.STAMP_NAME]
    compiled()
    assert cache.invalidate_if_sources_changed(str(src)) == 0  # same sources: the cache stays
    assert len(_files(store)) == 3
    (src / "model.py").write_text("x = 3\n")  # an edit of a file that the kernel calls into
    assert cache.invalidate_if_sources_changed(str(src)) == 2
    assert _files(store) == [cache.STAMP_NAME]
    compiled()
    (src / "ops.py").write_text("")  # a new source file changes the stamp too
    assert cache.invalidate_if_sources_changed(str(src)) == 2


def test_missing_kernels_names_the_ones_without_a_cache_index(tmp_path):
    def dispatcher(name):
        def f():
            pass
        f.__name__ = name
        f.__module__ = "kernels.numba.cpu"
        return types.SimpleNamespace(py_func=f, _cache=types.SimpleNamespace(cache_path=str(tmp_path)))

    (tmp_path / "cpu.task_kernel-75.py311.nbi").write_bytes(b"")
    assert cache.missing_kernels([dispatcher("task_kernel"), dispatcher("reduce_rows")]) == ["cpu.reduce_rows"]


def test_the_cache_folder_is_numbas_own_for_this_package():
    import os
    folder = cache.cache_folder()
    assert os.path.isdir(folder)
    with open(os.path.join(folder, cache.STAMP_NAME)) as f:
        assert f.read().strip() == cache.sources_digest()


def test_a_first_run_says_that_it_compiles(capsys):
    from iclgd.cli.run import announce_compilation
    announce_compilation(types.SimpleNamespace(name="numba-cpu", kernels_to_compile=lambda cfg=None: ["cpu.x"]))
    assert "not cached yet and are compiled on first use" in capsys.readouterr().err
    announce_compilation(types.SimpleNamespace(name="numba-cpu", kernels_to_compile=lambda cfg=None: []))
    announce_compilation(types.SimpleNamespace(name="numpy"))
    assert capsys.readouterr().err == ""


def test_the_compile_warm_up_leaves_the_run_unchanged(monkeypatch, capsys):
    """numba-cpu warms up on a copy of the next batch and copies of the parameters before the
    progress bar: the run equals one without the warm-up bit for bit, and says what it compiles."""
    from kernels import get_backend
    from refimpl.config import TaskConfig
    from refimpl.tasks import TaskSource
    from iclgd.experiments.common import lsa_config
    from iclgd.train import TrainConfig, train
    be = get_backend("numba-cpu")
    task = TaskConfig(input_dim=3, num_context=5)
    cfg, tc = lsa_config(task), TrainConfig(steps=6, batch=16)
    monkeypatch.setattr(be, "kernels_to_compile", lambda cfg=None: ["lsa_kernels.lsa_kernel"])
    warmed = train(cfg, tc, TaskSource(task, 16), 3, be, progress=False)
    err = capsys.readouterr().err
    assert "compiling 1 kernels" in err and "compiled in" in err
    monkeypatch.delattr(be, "kernels_to_compile")
    plain = train(cfg, tc, TaskSource(task, 16), 3, be, progress=False)
    for k in plain.params:
        np.testing.assert_array_equal(warmed.params[k], plain.params[k])
    assert not np.array_equal(plain.params["layer0.attn.W_q"], train(cfg, tc, TaskSource(task, 16), 4, be,
                                                                      progress=False).params["layer0.attn.W_q"])
