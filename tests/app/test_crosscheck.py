"""`iclgd crosscheck` and the exchange format, with the oracle's own results (no optional packages).

Properties: a file of the oracle's results passes; changing any one tensor by a small relative
amount fails and names exactly that tensor; every malformed file is an error naming the key
(exit status 2), never a pass.
"""
import json

import numpy as np
import pytest

from iclgd.cli import main
from refimpl.config import config_to_dict
from tests.conftest import model_configs
from iclgd.interop.crosscheck import crosscheck_file
from iclgd.interop.exchange import export_oracle, load_exchange
from refimpl.params import init_params

CONFIGS = model_configs("deep_lsa", "tied_softmax_ln_mlp")


def write_oracle_file(path, cfg, rng, B=5, T=7):
    params = init_params(cfg, rng)
    tokens = rng.uniform(-1, 1, (B, T, cfg.token_dim))  # (B, T, D_in)
    targets = rng.standard_normal(B)  # (B,)
    export_oracle(path, cfg, params, tokens, targets)
    return path


def read_npz(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def run_cli(capsys, path, *extra):
    status = main(["crosscheck", str(path), "--json", *extra])
    out = capsys.readouterr()
    return status, json.loads(out.out), out.err


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_oracle_results_pass_and_every_tensor_is_reported(tmp_path, rng, capsys, name):
    cfg = CONFIGS[name]
    path = write_oracle_file(tmp_path / "x.npz", cfg, rng)
    status, report, _ = run_cli(capsys, path)
    assert status == 0 and report["passed"] is True
    names = {t["name"] for t in report["tensors"]}
    expected = {"predictions", "readouts", "loss", "input_grads", "prediction_grads"}
    expected |= {"grads/" + n for n in init_params(cfg, rng)}
    assert names == expected
    for t in report["tensors"]:
        assert {"name", "max_abs_err", "max_rel_err", "passed"} <= set(t)


@pytest.mark.parametrize("key", ["predictions", "readouts", "loss", "input_grads",
                                 "prediction_grads", "grads/layer0.attn.W_k", "grads/layer1.attn.W_p"])
def test_a_perturbed_tensor_fails_and_is_named(tmp_path, rng, capsys, key):
    path = write_oracle_file(tmp_path / "x.npz", CONFIGS["deep_lsa"], rng)
    data = read_npz(path)
    value = data[key].copy()
    flat = value.reshape(-1)
    i = int(rng.integers(flat.size))
    flat[i] += 1e-6 * max(abs(flat[i]), 1e-3)  # tiny: far below any plotting precision
    data[key] = value
    np.savez(path, **data)
    status, report, _ = run_cli(capsys, path)
    assert status == 1 and report["passed"] is False
    assert [t["name"] for t in report["tensors"] if not t["passed"]] == [key]
    bad = next(t for t in report["tensors"] if t["name"] == key)
    assert list(np.unravel_index(i, value.shape)) == bad["worst_index"]


def test_float32_results_need_a_float32_tolerance(tmp_path, rng, capsys):
    cfg = CONFIGS["deep_lsa"]
    path = write_oracle_file(tmp_path / "x.npz", cfg, rng)
    data = read_npz(path)
    for k in ("predictions", "readouts", "input_grads"):
        data[k] = data[k].astype(np.float32)
    np.savez(path, **data)
    assert crosscheck_file(path)["passed"] is False
    assert crosscheck_file(path, rtol=1e-5, atol=1e-7)["passed"] is True
    assert main(["crosscheck", str(path)]) == 1
    assert "--rtol 1e-4 --atol 1e-6" in capsys.readouterr().out


def test_the_table_names_the_failing_tensor(tmp_path, rng, capsys):
    path = write_oracle_file(tmp_path / "x.npz", CONFIGS["deep_lsa"], rng)
    data = read_npz(path)
    data["loss"] = data["loss"] * (1 + 1e-7)
    np.savez(path, **data)
    assert main(["crosscheck", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: loss" in out and "\nloss " in out


# ----------------------------------------------------------------------------------------------
def _drop(prefix):
    return lambda d: {k: v for k, v in d.items() if not k.startswith(prefix)}


def _set(key, fn):
    return lambda d: {**d, key: fn(d)}


def _config(**changes):
    def edit(d):
        cfg = json.loads(str(d["config"]))
        cfg.update(changes)
        for k, v in list(cfg.items()):
            if v is None:
                del cfg[k]
        return {**d, "config": np.array(json.dumps(cfg))}
    return edit


def _nan(key):
    def edit(d):
        v = d[key].copy()
        v.reshape(-1)[1] = np.nan
        return {**d, key: v}
    return edit


BAD_FILES = {
    "missing tokens": (_drop("tokens"), "tokens"),
    "missing targets": (_drop("targets"), "targets"),
    "missing config": (_drop("config"), "config"),
    "missing version": (_drop("format_version"), "format_version"),
    "wrong version": (_set("format_version", lambda d: np.array(7)), "format_version"),
    "missing a parameter": (_drop("params/layer1.attn.W_v"), "params/layer1.attn.W_v"),
    "unknown parameter": (_set("params/layer2.attn.W_q", lambda d: d["params/layer0.attn.W_q"]),
                          "params/layer2.attn.W_q"),
    "parameter shape": (_set("params/layer0.attn.W_q", lambda d: d["params/layer0.attn.W_q"][:, :-1]),
                        "params/layer0.attn.W_q"),
    "token width": (_set("tokens", lambda d: d["tokens"][..., :-1]), "tokens"),
    "target count": (_set("targets", lambda d: d["targets"][:-1]), "targets"),
    "readout shape": (_set("readouts", lambda d: d["readouts"][:1]), "readouts"),
    "grad shape": (_set("grads/layer0.attn.W_p", lambda d: d["grads/layer0.attn.W_p"].T),
                   "grads/layer0.attn.W_p"),
    "partial grads": (_drop("grads/layer1"), "grads/layer1.attn.W_q"),
    "unknown key": (_set("prediction", lambda d: d["predictions"]), "prediction"),
    "NaN parameter": (_nan("params/layer0.attn.W_k"), "params/layer0.attn.W_k"),
    "NaN token": (_nan("tokens"), "tokens"),
    "NaN prediction": (_nan("predictions"), "predictions"),
    "NaN gradient": (_nan("grads/layer1.attn.W_q"), "grads/layer1.attn.W_q"),
    "integer tokens": (_set("tokens", lambda d: d["tokens"].astype(np.int64)), "tokens"),
    "unsupported attention": (_config(attention="relu"), "attention"),
    "unsupported placement": (_config(ln_placement="post"), "ln_placement"),
    "unknown config field": (_config(use_bias=True), "use_bias"),
    "config field missing": (_config(token_clip=None), "token_clip"),
    "config with wrong width": (_config(token_dim=5), "params/layer0.attn.W_q"),
    "nothing to compare": (lambda d: {k: v for k, v in d.items()
                                      if k.startswith("params/") or k in ("format_version", "model",
                                                                          "config", "tokens", "targets")},
                           "nothing to compare"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_an_error_naming_the_key_never_a_pass(tmp_path, rng, capsys, case):
    edit, key = BAD_FILES[case]
    path = write_oracle_file(tmp_path / "x.npz", CONFIGS["deep_lsa"], rng)
    np.savez(path, **edit(read_npz(path)))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_exchange(path)
    status, report, err = run_cli(capsys, path)
    assert status == 2 and report["passed"] is False and report["tensors"] == []
    assert key in report["error"] and key in err


def test_a_file_that_is_not_npz_is_an_error(tmp_path, capsys):
    path = tmp_path / "x.npz"
    path.write_text("not an archive")
    assert main(["crosscheck", str(path)]) == 2
    assert "not an .npz archive" in capsys.readouterr().err


def test_config_json_names_every_field(tmp_path, rng):
    cfg = CONFIGS["tied_softmax_ln_mlp"]
    path = write_oracle_file(tmp_path / "x.npz", cfg, rng)
    assert json.loads(str(read_npz(path)["config"])) == config_to_dict(cfg)
    assert load_exchange(path)["cfg"] == cfg
