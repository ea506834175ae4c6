"""benchmarks/fig2_end_to_end.py: the copy it times is a fresh checkout that really runs, and its
comparison of final numbers catches a disagreement (no timing is asserted)."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import fig2_end_to_end as bench  # noqa: E402


def test_the_copy_has_no_caches_and_the_launcher_runs_the_copy(tmp_path):
    root = str(tmp_path / "checkout")
    bench.copy_sources(root)
    assert sorted(os.listdir(root)) == sorted(bench.PACKAGES)
    caches = [d for d, _, files in os.walk(root) if d.endswith("__pycache__") or
              any(f.endswith((".nbi", ".nbc")) for f in files)]
    assert caches == []
    env = dict(os.environ, PYTHONPATH=root)
    probe = bench.LAUNCH.replace("from iclgd.cli import main; sys.exit(main())", "print(iclgd.__file__)")
    out = subprocess.run([sys.executable, "-c", probe, root], env=env, capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(root + os.sep)
    # a launcher pointed at another folder than the one imported refuses to run
    other = str(tmp_path / "elsewhere")
    os.makedirs(other)
    bad = subprocess.run([sys.executable, "-c", bench.LAUNCH, other, "list"], capture_output=True, text=True,
                         cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=""))
    assert bad.returncode != 0 and "not the copy" in bad.stderr


def test_numbers_and_deviation_catch_a_disagreement():
    ref = bench.numbers({"loss": 0.2, "etas": [1.0, 2.0], "name": "x", "flag": True})
    assert ref == {"loss": 0.2, "etas[0]": 1.0, "etas[1]": 2.0}
    same = dict(ref, loss=0.2 * (1 + 1e-13))
    worst, bad = bench.deviation(same, ref, 1e-10)
    assert bad == [] and 0 < worst < 1
    off = dict(ref, **{"etas[1]": 2.0 + 1e-8})
    assert bench.deviation(off, ref, 1e-10)[1] == ["etas[1]"]
    assert bench.deviation({"loss": 0.2}, ref, 1e-10)[1] == ["etas[0]", "etas[1]"]
