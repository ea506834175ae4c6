"""`iclgd crosscheck` on files written to hurt: through the command line, in a subprocess.

Properties: an invalid file is exit status 2 with one line on stderr and, under --json, a JSON
object with an "error" key, whatever fails inside (not a zip, a missing path, a folder, a corrupt
member, an error while recomputing); status 1 is only a genuine FAIL. Sizes and the oracle's cost
are judged from the archive's headers before any array is read (a few kilobytes that declare
gigabytes are refused fast, without allocating). An object array (a pickle) is refused unrun. A
non-finite oracle value is a FAIL, never a pass; infinite, NaN or negative tolerances are errors.
"""
import json
import os
import shlex
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from iclgd.interop.crosscheck import crosscheck, crosscheck_file
from iclgd.interop.exchange import MAX_LAYERS, MAX_NUMBERS, export_oracle, load_exchange, save_exchange
from refimpl.config import ModelConfig, config_to_dict
from tests.conftest import cli_subprocess
from refimpl.params import init_params

pytestmark = pytest.mark.slow  # the fast subset leaves these out: each case runs the command line in a subprocess

ROOT = Path(__file__).resolve().parents[2]
CFG = ModelConfig(token_dim=4, num_layers=2, num_heads=2, key_size=3, init_scale=2.0)  # deep LSA
TIED = ModelConfig(token_dim=3, num_layers=2, weight_tied=True, key_size=3)


def iclgd(*argv):
    """`python -m iclgd ARGV` from this checkout: (status, stdout, stderr)."""
    done = cli_subprocess(*argv)
    return done.returncode, done.stdout, done.stderr


def strict_json(text):
    """json.loads that refuses NaN and Infinity (not JSON)."""
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def assert_invalid(path, *words, extra=()):
    """Exit status 2, one line on stderr naming `words`, and the JSON error object under --json."""
    status, out, err = iclgd("crosscheck", path, *extra)
    assert status == 2, (status, out, err)
    assert err.count("\n") == 1 and err.startswith("iclgd crosscheck: error: "), err
    assert all(w in err for w in words), err
    status, out, err = iclgd("crosscheck", path, "--json", *extra)
    report = strict_json(out)
    assert status == 2 and report["passed"] is False and report["tensors"] == []
    assert all(w in report["error"] for w in words), report
    return report["error"]


def oracle_file(path, cfg=CFG, rng=None, B=5, T=7):
    rng = rng or np.random.default_rng(0)
    params = init_params(cfg, rng)
    export_oracle(path, cfg, params, rng.uniform(-1, 1, (B, T, cfg.token_dim)), rng.standard_normal(B))
    return path


def write_members(path, members, compression=zipfile.ZIP_STORED):
    """An .npz by hand: {key: array} members, or {key: (dtype, shape)} members that are only a
    header declaring that array (its data absent) -- what a zip bomb shows before inflating."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for key, value in members.items():
            with archive.open(key + ".npy", "w", force_zip64=True) as f:
                if isinstance(value, tuple):
                    header = {"descr": np.dtype(value[0]).str, "fortran_order": False, "shape": value[1]}
                    np.lib.format.write_array_header_2_0(f, header)
                    declared = np.dtype(value[0]).itemsize * int(np.prod(value[1]))
                    f.write(bytes(min(1 << 16, declared // 2)))  # zeros, fewer than declared
                else:
                    np.lib.format.write_array(f, value)
    return path


def read_npz(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


# -- 11: sizes and cost from the headers, before any array is read ------------------------------
def test_a_declared_huge_array_is_refused_from_its_header_without_allocating(tmp_path):
    data = read_npz(oracle_file(tmp_path / "ok.npz"))
    data["tokens"] = ("<f8", (4096, 65536, 1))  # 2**28 numbers: 2 GiB once read
    path = write_members(tmp_path / "bomb.npz", data, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ValueError) as caught:
        load_exchange(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(caught.value) == (f"tokens: {2**28} numbers declared, the limit is {MAX_NUMBERS} "
                                 f"(MAX_NUMBERS in iclgd/interop/exchange.py)")
    assert peak < 4 << 20 and seconds < 2, (peak, seconds)
    assert_invalid(path, "tokens", "MAX_NUMBERS")


def test_a_declared_total_over_the_limit_is_refused(tmp_path):
    data = read_npz(oracle_file(tmp_path / "ok.npz"))
    data.update({f"params/x{i}": ("<f8", (MAX_NUMBERS,)) for i in range(9)})  # 9 x 128 MiB
    assert_invalid(write_members(tmp_path / "big.npz", data), "MAX_BYTES", "bytes declared")


def _with_config(path, cfg_dict, **members):
    data = read_npz(path)
    data["config"] = np.array(json.dumps(cfg_dict))
    data.update(members)
    return write_members(path, data)


def test_a_config_of_ten_million_layers_is_refused_at_once(tmp_path):
    path = oracle_file(tmp_path / "x.npz", TIED)
    _with_config(path, {**config_to_dict(TIED), "num_layers": 10**7})
    start = time.perf_counter()
    message = assert_invalid(path, "config.num_layers", f"the limit is {MAX_LAYERS}", "MAX_LAYERS")
    assert time.perf_counter() - start < 60
    assert str(10**7) in message


@pytest.mark.parametrize("change, tokens, limit", [
    ({"key_size": 10**5}, None, "MAX_WORK"),  # width 10**5: 7 10**11 multiply-adds
    ({}, ("<f8", (2048, 2048, 3)), "MAX_ACTIVATIONS"),  # B x T: 2**33 numbers kept by the forward
])
def test_a_costly_config_or_token_shape_is_refused_before_the_oracle_runs(tmp_path, change, tokens,
                                                                          limit):
    path = oracle_file(tmp_path / "x.npz", TIED)
    extra = {"tokens": tokens} if tokens else {}
    _with_config(path, {**config_to_dict(TIED), **change}, **extra)
    assert_invalid(path, "config, tokens", limit)


@pytest.mark.parametrize("dtype", ["object", "structured"])
def test_object_and_structured_arrays_are_refused_from_the_header_unrun(tmp_path, dtype):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    data = read_npz(oracle_file(tmp_path / "x.npz"))
    if dtype == "object":
        data["predictions"] = np.array([Payload()] * 5, dtype=object)
    else:
        data["predictions"] = np.zeros(5, dtype=[("a", "<f8"), ("b", "<f8")])
    np.savez(tmp_path / "x.npz", **data)
    assert_invalid(tmp_path / "x.npz", "predictions", "is refused")
    assert not marker.exists()


# -- 12: every invalid file is status 2, one line, JSON under --json -----------------------------
def test_a_text_file_named_npz_is_not_an_archive(tmp_path):
    (tmp_path / "x.npz").write_text("not an archive")
    assert_invalid(tmp_path / "x.npz", "not an .npz archive", str(tmp_path / "x.npz"))


def test_a_missing_file_and_a_folder_are_named(tmp_path):
    assert_invalid(tmp_path / "absent.npz", str(tmp_path / "absent.npz"), "no such file")
    assert_invalid(tmp_path, str(tmp_path), "is a directory")


def test_a_truncated_member_is_named(tmp_path):
    data = read_npz(oracle_file(tmp_path / "x.npz"))
    data["input_grads"] = ("<f8", data["input_grads"].shape)  # header, then too few bytes
    assert_invalid(write_members(tmp_path / "x.npz", data), "input_grads")


def test_a_corrupt_compressed_archive_is_status_2(tmp_path):
    data = read_npz(oracle_file(tmp_path / "x.npz"))
    np.savez_compressed(tmp_path / "x.npz", **data)
    raw = bytearray((tmp_path / "x.npz").read_bytes())
    start = raw.index(b"input_grads.npy") + 200  # inside the deflated data of one member
    raw[start:start + 64] = bytes(range(64))
    (tmp_path / "x.npz").write_bytes(bytes(raw))
    assert_invalid(tmp_path / "x.npz", str(tmp_path / "x.npz"))


def test_an_error_while_recomputing_is_status_2_with_json(tmp_path, monkeypatch, capsys):
    """Not a ValueError (here numpy's FloatingPointError): still status 2, never a crash."""
    from iclgd.cli import main
    path = oracle_file(tmp_path / "x.npz")

    def broken(*args):
        raise FloatingPointError("overflow encountered in matmul\nwith a second line")

    monkeypatch.setattr("iclgd.interop.crosscheck.oracle_results", broken)
    assert main(["crosscheck", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert "FloatingPointError" in strict_json(out)["error"] and err.count("\n") == 1


def test_a_genuine_fail_is_status_1(tmp_path):
    path = oracle_file(tmp_path / "x.npz")
    data = read_npz(path)
    data["loss"] = data["loss"] * (1 + 1e-6)
    np.savez(path, **data)
    status, out, err = iclgd("crosscheck", path, "--json")
    report = strict_json(out)
    assert status == 1 and report["passed"] is False and err == ""
    assert [t["name"] for t in report["tensors"] if not t["passed"]] == ["loss"]


# -- 10: a non-finite oracle value fails; tolerances are finite ---------------------------------
@pytest.mark.parametrize("num_layers", [1, 2])  # overflow in the output / in an inner layer
def test_an_oracle_that_overflows_is_a_fail_never_a_pass(tmp_path, num_layers):
    cfg = ModelConfig(token_dim=4, num_layers=num_layers, num_heads=2, key_size=3)
    rng = np.random.default_rng(1)
    params = {k: v * 1e80 for k, v in init_params(cfg, rng).items()}  # H overflows to inf
    tokens, targets = rng.uniform(-1, 1, (5, 7, cfg.token_dim)), rng.standard_normal(5)
    path = save_exchange(tmp_path / "x.npz", cfg, params, tokens, targets, {"loss": np.float64(0.123)})
    report = crosscheck_file(path)
    assert report["passed"] is False and "not finite" in report["tensors"][0]["note"]
    for extra in ((), ("--rtol", "1e300", "--atol", "1e300")):
        status, out, err = iclgd("crosscheck", path, "--json", *extra)
        row = strict_json(out)["tensors"][0]
        assert status == 1 and row["passed"] is False and "not finite" in row["note"], out
        assert "Warning" not in err
    status, out, _ = iclgd("crosscheck", path)
    assert status == 1 and "loss: the oracle's value is not finite" in out


@pytest.mark.parametrize("option, value", [("--rtol", "inf"), ("--atol", "inf"), ("--rtol", "nan"),
                                           ("--atol", "-1e-9")])
def test_an_infinite_nan_or_negative_tolerance_is_an_error(tmp_path, option, value):
    path = oracle_file(tmp_path / "x.npz")
    message = assert_invalid(path, option, extra=(f"{option}={value}",))
    assert message == f"{option}: expected a finite number >= 0, got {float(value)!r}"
    for name in ("rtol", "atol"):
        with pytest.raises(ValueError, match=f"^{name}: expected a finite number >= 0"):
            crosscheck(load_exchange(path), **{name: float(value)})


@pytest.mark.parametrize("key, bad", [("loss", np.inf), ("predictions", np.nan)])
def test_a_non_finite_value_in_the_file_is_an_error_naming_it(tmp_path, key, bad):
    path = oracle_file(tmp_path / "x.npz")
    data = read_npz(path)
    data[key] = np.full_like(data[key], bad)
    np.savez(path, **data)
    assert_invalid(path, key, "NaN or inf")


# -- 9: the config's JSON types are strict ------------------------------------------------------
def test_a_string_for_a_bool_config_field_is_refused(tmp_path):
    path = oracle_file(tmp_path / "x.npz")
    _with_config(path, {**config_to_dict(CFG), "weight_tied": "false"})
    assert_invalid(path, "weight_tied")


# -- the GPT-2 model (format version 2): the same limits, from its config and declared tokens ----
def gpt2_oracle_file(path):
    from tests.peers.cases import GPT2_CFG, gpt2_problem
    export_oracle(path, GPT2_CFG, *gpt2_problem(GPT2_CFG, np.random.default_rng(0)))
    return path


@pytest.mark.parametrize("change, tokens, words", [
    ({"num_layers": 10**7}, None, ("config.num_layers", str(10**7), "MAX_LAYERS")),
    ({"embed_dim": 2**16}, None, ("config, tokens", "embed_dim 65536", "MAX_WORK")),
    ({"embed_dim": 2**20}, None, ("config, tokens", "embed_dim 1048576", "MAX_ACTIVATIONS")),
    ({"mlp_widening": 2**12}, None, ("config, tokens", "MLP width 32768", "MAX_WORK")),
    ({"num_pairs": 2**11}, ("<f8", (4096, 4096, 1)), ("config, tokens", "T 4096", "MAX_ACTIVATIONS")),
])
def test_a_costly_gpt2_file_is_refused_before_any_big_allocation(tmp_path, change, tokens, words):
    """A GPT-2 config declaring millions of layers, a huge model or MLP width, or a token shape
    whose activations would not fit, is one line naming the field and the limit; loading it
    allocates almost nothing and takes no time (the oracle never runs)."""
    path = gpt2_oracle_file(tmp_path / "g.npz")
    data = read_npz(path)
    data["config"] = np.array(json.dumps({**json.loads(str(data["config"])), **change}))
    if tokens:
        data["tokens"] = tokens  # a header only, declaring 2**24 numbers
    write_members(path, data, zipfile.ZIP_DEFLATED)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ValueError) as caught:
        load_exchange(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert all(w in str(caught.value) for w in words), caught.value
    assert peak < 4 << 20 and seconds < 2, (peak, seconds)
    assert_invalid(path, *words)


def test_an_object_array_as_the_model_name_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    data = read_npz(gpt2_oracle_file(tmp_path / "g.npz"))
    data["model"] = np.array(Payload(), dtype=object)
    np.savez(tmp_path / "g.npz", **data)
    assert_invalid(tmp_path / "g.npz", "model", "is refused")
    assert not marker.exists()
