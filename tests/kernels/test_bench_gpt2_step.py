"""benchmarks/gpt2_step.py: the nominal operation count, and one small run that times the oracle and
numba-cpu in the same file and records how far numba-cpu's numbers are from the oracle's (no
timing is asserted)."""
import json
import os
import sys

from refimpl.gpt2 import GPT2Config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from benchmarks import gpt2_step  # noqa: E402


def test_nominal_flops_counts_read_in_products_attention_mlp_and_read_out():
    cfg = GPT2Config(input_dim=3, num_pairs=4, embed_dim=8, num_layers=2, num_heads=2, mlp_widening=4)
    T, E, F = 6, 8, 32
    block = 4 * 2 * T * E * E + 2 * 2 * T * T * E + 2 * 2 * T * E * F
    assert gpt2_step.nominal_flops(cfg, T, 5) == 3 * 5 * (2 * T * 3 * E + 2 * block + T * E)


def test_one_run_times_both_backends_and_records_their_gap(tmp_path):
    out = tmp_path / "gpt2.json"
    assert gpt2_step.main(["--cases", "tiny", "--dtypes", "float64", "--batch", "4", "--warmup", "1",
                           "--repeats", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    runs = {(r["backend"], r.get("numba_threads")) for r in data["results"]}
    assert ("numpy", None) in runs and ("numba-cpu", 1) in runs and len(runs) >= 2
    for r in data["results"]:
        assert r["step_median_ms"] > 0 and r["case"] == "tiny" and r["dtype"] == "float64"
        if r["backend"] == "numba-cpu":
            assert r["loss_gap_vs_oracle"] < 1e-12 and r["params_gap_vs_oracle"] < 1e-12
    assert data["shapes"]["tiny"]["tokens"] == 22 and "cpu_model" in data["machine"]
