"""The exchange format's version 2 (a `model` key) and its GPT-2 files (SPEC 2.7), with the oracle's
own results (no optional packages).

Properties: a GPT-2 file of the oracle's results passes `iclgd crosscheck`, reports every tensor and
names its model; a perturbed tensor fails alone; a malformed GPT-2 file is an error naming the key
(exit status 2); a version-1 file still reads as the LSA file it always was, and the writers write
version 2 unless asked for 1.
"""
import json

import numpy as np
import pytest

from iclgd.cli import main
from iclgd.interop.crosscheck import crosscheck_file
from iclgd.interop.exchange import (FORMAT_VERSION, MAX_MODEL_CHARS, export_oracle, load_exchange,
                                    save_exchange)
from refimpl.config import config_to_dict
from refimpl.gpt2 import param_shapes
from refimpl.params import init_params
from tests.conftest import model_configs
from tests.peers.cases import GPT2_CFG, gpt2_problem

LSA_CFG = model_configs("deep_lsa")["deep_lsa"]


def gpt2_file(path, rng, cfg=GPT2_CFG):
    params, tokens, targets = gpt2_problem(cfg, rng)  # tokens (5, 6, 3): pos rows 6, 7 unused
    return export_oracle(path, cfg, params, tokens, targets)


def read_npz(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def run_cli(capsys, path, *extra):
    status = main(["crosscheck", str(path), "--json", *extra])
    out = capsys.readouterr()
    return status, json.loads(out.out), out.err


def test_a_gpt2_oracle_file_passes_and_every_tensor_is_reported(tmp_path, rng, capsys):
    path = gpt2_file(tmp_path / "g.npz", rng)
    data = read_npz(path)
    assert int(data["format_version"]) == FORMAT_VERSION == 2 and str(data["model"]) == "gpt2"
    assert json.loads(str(data["config"])) == config_to_dict(GPT2_CFG)
    status, report, _ = run_cli(capsys, path)
    assert status == 0 and report["passed"] is True and report["model"] == "gpt2"
    rows = {t["name"]: t for t in report["tensors"]}
    assert set(rows) == {"predictions", "loss", "input_grads"} | {"grads/" + n for n in param_shapes(GPT2_CFG)}
    assert rows["predictions"]["shape"] == [5, 3] and rows["input_grads"]["shape"] == [5, 6, 3]
    assert rows["grads/pos"]["shape"] == [8, 8] and np.all(data["grads/pos"][6:] == 0)
    assert main(["crosscheck", str(path)]) == 0
    assert "PASSED (model gpt2, 42 tensors" in capsys.readouterr().out


def test_the_gpt2_loss_is_the_mean_squared_error_without_a_half(tmp_path, rng):
    data = read_npz(gpt2_file(tmp_path / "g.npz", rng))
    assert data["loss"] == pytest.approx(np.mean((data["predictions"] - data["targets"]) ** 2), rel=1e-15)


@pytest.mark.parametrize("key", ["predictions", "loss", "input_grads", "grads/pos", "grads/read_in.b",
                                 "grads/block1.mlp.W2", "grads/ln_f.offset"])
def test_a_perturbed_gpt2_tensor_fails_and_is_named(tmp_path, rng, capsys, key):
    path = gpt2_file(tmp_path / "g.npz", rng)
    data = read_npz(path)
    value = data[key].copy()
    flat = value.reshape(-1)
    i = int(np.argmax(np.abs(flat)))
    flat[i] *= 1 + 1e-7
    data[key] = value
    np.savez(path, **data)
    status, report, _ = run_cli(capsys, path)
    assert status == 1 and report["passed"] is False
    assert [t["name"] for t in report["tensors"] if not t["passed"]] == [key]
    assert next(t for t in report["tensors"] if t["name"] == key)["worst_index"] == \
        list(np.unravel_index(i, value.shape))


def _set(key, fn):
    return lambda d: {**d, key: fn(d)}


def _config(**changes):
    def edit(d):
        cfg = {**json.loads(str(d["config"])), **changes}
        return {**d, "config": np.array(json.dumps({k: v for k, v in cfg.items() if v is not None}))}
    return edit


BAD_GPT2_FILES = {
    "missing model": (lambda d: {k: v for k, v in d.items() if k != "model"}, "model"),
    "unknown model": (_set("model", lambda d: np.array("gpt3")), "model"),
    "model not a string": (_set("model", lambda d: np.array(2)), "model"),
    "version 1 with a model key": (_set("format_version", lambda d: np.array(1)), "model"),
    "version 3": (_set("format_version", lambda d: np.array(3)), "format_version"),
    "version as text": (_set("format_version", lambda d: np.array("2")), "format_version"),
    "odd token count": (_set("tokens", lambda d: d["tokens"][:, :-1]), "tokens"),
    "more tokens than positions": (_set("tokens", lambda d: np.concatenate([d["tokens"]] * 2, axis=1)),
                                   "tokens"),
    "token width": (_set("tokens", lambda d: d["tokens"][..., :-1]), "tokens"),
    "LSA-shaped targets": (_set("targets", lambda d: d["targets"][:, -1]), "targets"),
    "LSA-shaped predictions": (_set("predictions", lambda d: d["predictions"][:, -1]), "predictions"),
    "readouts are no gpt2 result": (_set("readouts", lambda d: d["predictions"].T), "readouts"),
    "prediction_grads are no gpt2 result": (_set("prediction_grads", lambda d: d["input_grads"]),
                                            "prediction_grads"),
    "pos cut to the prompt": (_set("params/pos", lambda d: d["params/pos"][:6]), "params/pos"),
    "grads/pos cut to the prompt": (_set("grads/pos", lambda d: d["grads/pos"][:6]), "grads/pos"),
    "partial grads": (lambda d: {k: v for k, v in d.items() if not k.startswith("grads/block1")},
                      "grads/block1.ln1.scale"),
    "an LSA parameter name": (_set("params/layer0.attn.W_q", lambda d: d["params/block0.attn.W_q"]),
                              "params/layer0.attn.W_q"),
    "a GPT2Config field missing": (_config(init_std=None), "init_std"),
    "an LSA config": (lambda d: {**d, "config": np.array(json.dumps(config_to_dict(LSA_CFG)))},
                      "input_dim"),
    "heads that do not divide the width": (_config(num_heads=3), "embed_dim"),
    "a string for an int field": (_config(num_layers="2"), "num_layers"),
}


@pytest.mark.parametrize("case", sorted(BAD_GPT2_FILES))
def test_a_bad_gpt2_file_is_an_error_naming_the_key(tmp_path, rng, capsys, case):
    edit, key = BAD_GPT2_FILES[case]
    path = gpt2_file(tmp_path / "g.npz", rng)
    np.savez(path, **edit(read_npz(path)))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_exchange(path)
    status, report, err = run_cli(capsys, path)
    assert status == 2 and report["passed"] is False and report["tensors"] == []
    assert key in report["error"] and key in err and err.count("\n") == 1


def test_a_long_model_name_is_refused_from_its_header(tmp_path, rng):
    path = gpt2_file(tmp_path / "g.npz", rng)
    np.savez(path, **{**read_npz(path), "model": np.array("g" * (MAX_MODEL_CHARS + 1))})
    with pytest.raises(ValueError, match="model: 65 characters declared.*MAX_MODEL_CHARS"):
        load_exchange(path)


# -- format versions ---------------------------------------------------------------------------
def lsa_problem(rng, B=5, T=7):
    params = init_params(LSA_CFG, rng)
    return params, rng.uniform(-1, 1, (B, T, LSA_CFG.token_dim)), rng.standard_normal(B)


def test_a_version_1_file_reads_as_the_lsa_file_it_always_was(tmp_path, rng):
    """A version-1 file written key by key, as version-1 writers did, loads to the same model,
    arrays and report as the version-2 file of the same content."""
    params, tokens, targets = lsa_problem(rng)
    v2 = read_npz(export_oracle(tmp_path / "v2.npz", LSA_CFG, params, tokens, targets))
    assert int(v2["format_version"]) == 2 and str(v2["model"]) == "lsa"
    np.savez(tmp_path / "v1.npz", **{**{k: v for k, v in v2.items() if k != "model"},
                                     "format_version": np.array(1)})
    old, new = load_exchange(tmp_path / "v1.npz"), load_exchange(tmp_path / "v2.npz")
    assert (old["model"], old["format_version"], new["model"], new["format_version"]) == ("lsa", 1, "lsa", 2)
    assert old["cfg"] == new["cfg"] == LSA_CFG
    for group in ("params", "results"):
        assert list(old[group]) == list(new[group])
        assert all(np.array_equal(old[group][k], new[group][k]) for k in old[group])
    assert np.array_equal(old["tokens"], new["tokens"]) and np.array_equal(old["targets"], new["targets"])
    assert crosscheck_file(tmp_path / "v1.npz") == crosscheck_file(tmp_path / "v2.npz")


def test_save_exchange_writes_version_2_unless_asked_for_1(tmp_path, rng):
    params, tokens, targets = lsa_problem(rng)
    results = {"loss": np.float64(0.0)}
    old = read_npz(save_exchange(tmp_path / "v1", LSA_CFG, params, tokens, targets, results, format_version=1))
    assert int(old["format_version"]) == 1 and "model" not in old
    assert load_exchange(tmp_path / "v1.npz")["format_version"] == 1
    with pytest.raises(ValueError, match="format_version: 1 holds LSA models only"):
        save_exchange(tmp_path / "g", GPT2_CFG, *gpt2_problem(GPT2_CFG, rng), format_version=1)
    with pytest.raises(ValueError, match="format_version: expected one of"):
        save_exchange(tmp_path / "x", LSA_CFG, params, tokens, targets, results, format_version=3)


def test_save_exchange_refuses_a_result_the_model_does_not_have(tmp_path, rng):
    params, tokens, targets = gpt2_problem(GPT2_CFG, rng)
    with pytest.raises(ValueError, match="results: unknown name 'readouts' for model 'gpt2'"):
        save_exchange(tmp_path / "g", GPT2_CFG, params, tokens, targets, {"readouts": targets.T})
    with pytest.raises(ValueError, match="params"):
        save_exchange(tmp_path / "g", GPT2_CFG, init_params(LSA_CFG, rng), tokens, targets)
