"""The GPU benchmark refuses to run without a GPU: a clear reason and exit status 2, no JSON."""
import kernels
import pytest

from benchmarks import bench_cupy


def test_benchmark_fails_clearly_without_a_gpu(tmp_path, capsys):
    ok, _ = kernels.availability("cupy")
    if ok:
        pytest.skip("a GPU is available: run the benchmark itself (bash benchmarks/gpu_check.sh OUTDIR)")
    out = tmp_path / "bench.json"
    assert bench_cupy.main(["--out", str(out), "--steps", "10"]) == 2
    err = capsys.readouterr().err
    assert "cannot benchmark without a usable GPU" in err
    assert ("no CUDA device" in err or "cupy not installed" in err) and "pip install -e \".[gpu]\"" in err
    assert not out.exists()


def test_compile_stage_fails_clearly_without_a_gpu(capsys):
    ok, _ = kernels.availability("cupy")
    if ok:
        pytest.skip("a GPU is available: the compile stage runs for real (bash benchmarks/gpu_check.sh OUTDIR)")
    from benchmarks import gpu_compile
    assert gpu_compile.main([]) == 2
    assert "gpu_compile: the cupy backend cannot run" in capsys.readouterr().err
