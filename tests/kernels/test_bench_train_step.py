"""benchmarks/train_step.py: the nominal operation count, the peer ratios, and one tiny run that
times a backend and the peers in the same file (no timing is asserted)."""
import json
import os
import sys

import pytest

from refimpl.config import ModelConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import train_step  # noqa: E402


def test_nominal_flops_counts_projections_attention_and_mlp():
    cfg = ModelConfig(token_dim=3, key_size=2, num_heads=1, num_layers=2)  # T = 5 below
    T, D, K = 5, 3, 2
    per_layer = 4 * 2 * T * D * K + 2 * 2 * T * T * K
    assert train_step.nominal_flops(cfg, T, 7) == 3 * 7 * 2 * per_layer
    mlp = ModelConfig(token_dim=3, key_size=2, num_heads=2, mlp=True, mlp_widening=4)
    assert train_step.nominal_flops(mlp, T, 1) == 3 * (4 * 2 * T * D * 4 + 2 * 2 * T * T * 4 + 2 * 2 * T * D * 12)


def test_ratios_compare_numba_cpu_with_the_fastest_peer_and_its_own_float64():
    results = [{"backend": "numba-cpu", "case": "a", "dtype": "float64", "step_median_s": 2.0},
               {"backend": "numba-cpu", "case": "a", "dtype": "float32", "step_median_s": 1.0},
               {"backend": "jax-jit", "case": "a", "dtype": "float32", "step_median_s": 30.0},
               {"backend": "torch-eager", "case": "a", "dtype": "float32", "step_median_s": 20.0},
               {"backend": "jax-jit", "case": "a", "dtype": "float64", "available": False}]
    r = train_step.ratios_vs_peers(results)
    assert r["a/float32"] == {"jax-jit_over_numba-cpu": 30.0, "torch-eager_over_numba-cpu": 20.0,
                              "fastest_peer_over_numba-cpu": 20.0, "numba-cpu_float64_over_float32": 2.0}
    assert r["a/float64"] == {}


def test_one_run_times_the_backend_and_the_peers_side_by_side(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    assert train_step.main(["--backends", "numpy", "--cases", "a_lsa_1layer,c_softmax_2head_ln_mlp",
                            "--dtypes", "float64", "--batch", "16", "--warmup", "1", "--repeats", "2",
                            "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    timed = {(x["backend"], x["case"]) for x in r["results"] if "step_median_s" in x}
    assert timed == {(b, c) for b in ("numpy", "jax-jit", "torch-eager")
                     for c in ("a_lsa_1layer", "c_softmax_2head_ln_mlp")}  # the peers have LN and MLP too
    assert not [x for x in r["results"] if x.get("available") is False]
    assert r["peak_gemm"]["float64"]["all_cores_gflops"] > 0 and "versions" in r and "machine" in r
    assert all(x["achieved_gflops"] > 0 for x in r["results"] if "step_median_s" in x)
    # float64 means float64: JAX computes in float32 unless its 64-bit mode is on
    assert {x["computed_dtype"] for x in r["results"] if x["backend"] != "numpy"} == {"float64"}


def test_a_peer_computing_in_another_precision_is_refused():
    import numpy as np
    with pytest.raises(ValueError, match="dtype: expected the peer's loss in float64, got float32"):
        train_step.check_dtype(np.float32(1.0), np.float64)
    assert train_step.check_dtype(np.float64(1.0), np.float64) == "float64"


def test_steppers_are_timed_in_turn_over_the_same_rounds():
    """After each stepper's own warm-up, every round runs each stepper once, in turn: a slow minute
    of the machine lands on all of them alike."""
    calls = []

    def stepper(name, seconds, kernel):
        def step():
            calls.append(name)
            return seconds, kernel, float(len(calls))
        return step
    out, losses = train_step.time_interleaved(
        {"a": stepper("a", 2.0, 1.0), "b": stepper("b", 3.0, None)}, warmup=2, repeats=3, settle=1)
    assert calls == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] * 3  # settling step, timed step
    assert out["a"]["step_median_s"] == 2.0 and out["a"]["train_step_only_median_s"] == 1.0
    assert out["b"]["step_median_s"] == 3.0 and "train_step_only_median_s" not in out["b"]
    assert out["a"]["repeats"] == 3  # timed steps only
    assert (out["a"]["final_loss"], out["b"]["final_loss"]) == (14.0, 16.0) == (losses["a"], losses["b"])
