"""`iclgd convert` on hostile pickles, and every file writer of the application under failure.

Properties: a pickle whose payload would run code (here: create a marker file) is refused by
name, unrun, through both entry points (--from haiku, --from torch; .pkl and .pt), exit status 2
with one stderr line; genuine trees of containers and NumPy arrays still convert, in every pickle
protocol; --trust-pickle reads what the restricted reader refuses. A writer that fails midway
leaves the target as it was and no temporary file beside it; '.npz' is appended to a name without
it (as numpy.savez does) and the path written is returned and printed.
"""
import collections
import json
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest

from iclgd.cli import main
from iclgd.interop.convert import flatten_tree, load_tree, save_tree, to_haiku
from iclgd.interop.exchange import load_exchange, save_exchange
from refimpl.config import ModelConfig, config_to_dict
from tests.conftest import cli_subprocess
from refimpl.params import init_params, load_params, save_params

pytestmark = pytest.mark.slow  # the fast subset leaves these out: subprocess runs and PyTorch imports

ROOT = Path(__file__).resolve().parents[2]
CFG = ModelConfig(token_dim=4, num_layers=2, key_size=3, layernorm=True, mlp=True)


def iclgd(*argv):
    """`python -m iclgd ARGV` from this checkout: (status, stdout, stderr)."""
    done = cli_subprocess(*argv)
    return done.returncode, done.stdout, done.stderr


def random_params(rng):
    return {n: rng.standard_normal(v.shape) for n, v in init_params(CFG, rng).items()}


def config_file(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps(config_to_dict(CFG)))
    return ["--config", tmp_path / "cfg.json"]


class Payload:
    """Unpickled by plain pickle, this creates `marker` (through a shell, as an attack would)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def refused_message(path):
    return (f"iclgd convert: error: IN {path}: refused to load global '{os.system.__module__}.system' "
            f"from a pickle")


# -- 1: pickles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["haiku", "torch"])
def test_a_payload_pickle_is_refused_by_name_and_never_runs(tmp_path, source):
    marker, path = tmp_path / "ran", tmp_path / "x.pkl"
    blob = pickle.dumps({"transformer": {"layer_0": {"w": Payload(marker)}}})
    pickle.loads(blob)  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    path.write_bytes(blob)
    status, out, err = iclgd("convert", path, tmp_path / "out.npz", "--from", source, "--to", "iclgd",
                             *config_file(tmp_path))
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(refused_message(path)) and "--trust-pickle" in err, err
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


def test_a_torch_file_with_a_payload_is_refused_unrun(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    torch.save({"blocks.0.ln1.weight": Payload(marker)}, tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(pickle.dumps({"w": Payload(marker)}))  # a plain pickle as .pt
    for name in ("x.pt", "y.pt"):
        status, _, err = iclgd("convert", tmp_path / name, tmp_path / "out.npz", "--from", "torch",
                               "--to", "iclgd", *config_file(tmp_path))
        assert status == 2 and err.count("\n") == 1 and f"IN {tmp_path / name}: " in err, err
        assert "--trust-pickle" in err
        if name == "x.pt":
            assert err.startswith(refused_message(tmp_path / name)), err
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_genuine_pickle_of_containers_and_arrays_loads(tmp_path, rng, protocol):
    tree = to_haiku(random_params(rng), CFG)  # {module path: {leaf: array}}
    tree = collections.OrderedDict((k, {**v, "n": np.float64(1.5)}) for k, v in tree.items())
    with open(tmp_path / "t.pkl", "wb") as f:
        pickle.dump({"top": tree, "meta": [1, 2.0, "s", None, True, (3,)]}, f, protocol=protocol)
    loaded = flatten_tree(load_tree(tmp_path / "t.pkl"))
    for path, value in flatten_tree({"top": tree}).items():
        assert np.array_equal(loaded[path], value) and np.asarray(loaded[path]).dtype == value.dtype


@pytest.mark.slow
def test_convert_round_trips_through_pickles_and_torch_files(tmp_path, rng):
    params = random_params(rng)
    save_params(tmp_path / "p.npz", params, CFG)
    steps = [("p.npz", "h.pkl", "iclgd", "haiku"), ("h.pkl", "t.pkl", "haiku", "torch"),
             ("t.pkl", "back.npz", "torch", "iclgd")]
    try:
        import torch  # noqa: F401
        steps += [("back.npz", "t.pt", "iclgd", "torch"), ("t.pt", "back.npz", "torch", "iclgd")]
    except ImportError:
        pass
    for src, dst, a, b in steps:
        status, out, err = iclgd("convert", tmp_path / src, tmp_path / dst, "--from", a, "--to", b,
                                 *config_file(tmp_path))
        assert status == 0 and f"wrote {tmp_path / dst} " in out, err
    back, cfg = load_params(tmp_path / "back.npz")
    assert cfg == CFG and all(np.array_equal(back[n], params[n]) for n in params)


def test_trust_pickle_reads_what_the_restricted_reader_refuses(tmp_path, rng):
    flat = flatten_tree(to_haiku(random_params(rng), CFG))
    with open(tmp_path / "h.pkl", "wb") as f:
        pickle.dump(collections.defaultdict(dict, flat), f)  # a global outside the allowed set
    with pytest.raises(ValueError, match="refused to load global 'collections.defaultdict'"):
        load_tree(tmp_path / "h.pkl")
    argv = ["convert", tmp_path / "h.pkl", tmp_path / "p.npz", "--from", "haiku", "--to", "iclgd",
            *config_file(tmp_path)]
    assert iclgd(*argv)[0] == 2
    status, _, err = iclgd(*argv, "--trust-pickle")
    assert status == 0, err
    status, out, _ = iclgd("convert", "--help")
    assert "--trust-pickle" in out and "runs any code" in " ".join(out.split())


# -- 6: writers -----------------------------------------------------------------------------------
def fail_midway(monkeypatch, target_module, name):
    """Replace target_module.name by a writer that writes some bytes, then fails (a full disk)."""
    real = getattr(target_module, name)
    calls = []

    def partial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1 and name == "write_array":
            return real(*args, **kwargs)  # the first member goes through
        f = args[0] if name == "write_array" else args[1]  # write_array(fp, a); dump/save(obj, f)
        if isinstance(f, (str, os.PathLike)):
            f = open(f, "wb")
        f.write(b"PARTIAL" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(target_module, name, partial)


WRITERS = {
    "save_params": lambda tmp, p: save_params(tmp / "out.npz", p, CFG),
    "save_tree": lambda tmp, p: save_tree(tmp / "out.npz", to_haiku(p, CFG)),
    "save_exchange": lambda tmp, p: save_exchange(tmp / "out.npz", CFG, p, np.zeros((2, 3, 4)),
                                                  np.zeros(2), {"loss": np.float64(0.0)}),
    "convert pickle": lambda tmp, p: main(["convert", str(tmp / "in.npz"), str(tmp / "out.pkl"),
                                           "--from", "iclgd", "--to", "haiku"]),
    "convert torch": lambda tmp, p: main(["convert", str(tmp / "in.npz"), str(tmp / "out.pt"),
                                          "--from", "iclgd", "--to", "torch"]),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_writer_that_fails_midway_leaves_the_target_and_no_temporary_file(tmp_path, rng,
                                                                            monkeypatch, writer):
    params = random_params(rng)
    save_params(tmp_path / "in.npz", params, CFG)
    targets = {"out.npz": b"old", "out.pkl": b"old", "out.pt": b"old"}
    for name, content in targets.items():
        (tmp_path / name).write_bytes(content)
    if writer == "convert torch":
        torch = pytest.importorskip("torch")
        fail_midway(monkeypatch, torch, "save")
    elif writer == "convert pickle":
        fail_midway(monkeypatch, pickle, "dump")
    else:
        fail_midway(monkeypatch, np.lib.format, "write_array")
    try:
        status = WRITERS[writer](tmp_path, params)
    except OSError:
        status = 2
    assert status == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["in.npz", *targets])
    for name, content in targets.items():
        assert (tmp_path / name).read_bytes() == content, name


def test_npz_names_get_the_suffix_and_the_path_written_is_returned(tmp_path, rng):
    params = random_params(rng)
    assert save_params(tmp_path / "p", params, CFG) == str(tmp_path / "p.npz")
    assert save_params(tmp_path / "q.npz", params, CFG) == str(tmp_path / "q.npz")
    assert load_params(tmp_path / "p.npz")[1] == CFG
    assert save_tree(tmp_path / "t", to_haiku(params, CFG)) == str(tmp_path / "t.npz")
    written = save_exchange(tmp_path / "x", CFG, params, np.zeros((2, 3, 4)), np.zeros(2),
                            {"loss": np.float64(0.0)})
    assert written == str(tmp_path / "x.npz") and load_exchange(written)["cfg"] == CFG
    status, out, _ = iclgd("convert", tmp_path / "q.npz", tmp_path / "out", "--from", "iclgd",
                           "--to", "iclgd")
    assert status == 0 and out.startswith(f"wrote {tmp_path / 'out.npz'} ")
    status, out, _ = iclgd("convert", tmp_path / "q.npz", tmp_path / "h", "--from", "iclgd",
                           "--to", "haiku")  # no .npz: a pickle, named exactly
    assert status == 0 and out.startswith(f"wrote {tmp_path / 'h'} ")
    assert sorted(os.listdir(tmp_path)) == ["h", "out.npz", "p.npz", "q.npz", "t.npz", "x.npz"]


def test_convert_set_is_repeatable_and_needs_no_config_file(tmp_path):
    """--set takes one KEY=VALUE and repeats, so it never swallows IN and OUT; without --config the
    overrides apply to the ModelConfig defaults."""
    cfg = ModelConfig(token_dim=4, num_layers=2, key_size=3)
    params = init_params(cfg, np.random.default_rng(0))
    save_params(tmp_path / "p.npz", params, cfg)
    status, _, err = iclgd("convert", tmp_path / "p.npz", tmp_path / "h.npz", "--from", "iclgd", "--to", "haiku")
    assert status == 0, err
    status, out, err = iclgd("convert", "--set", "token_dim=4", "--set", "num_layers=2", "--set", "key_size=3",
                             tmp_path / "h.npz", tmp_path / "back.npz", "--from", "haiku", "--to", "iclgd")
    assert status == 0, err
    back, back_cfg = load_params(tmp_path / "back.npz")
    assert back_cfg == cfg and all(np.array_equal(back[k], params[k]) for k in params)
    status, _, err = iclgd("convert", tmp_path / "h.npz", tmp_path / "x.npz", "--from", "haiku", "--to", "iclgd")
    assert status == 2 and "--config: expected a JSON file of ModelConfig fields (or --set" in err


def test_a_torch_file_without_torch_is_one_line(tmp_path):
    cfg = ModelConfig(token_dim=4, num_layers=1, key_size=3)
    save_params(tmp_path / "p.npz", init_params(cfg, np.random.default_rng(0)), cfg)
    no_torch = "import sys\nsys.modules['torch'] = None"  # import torch then raises ImportError
    for argv in ([tmp_path / "p.npz", tmp_path / "o.pt", "--from", "iclgd", "--to", "torch"],
                 [tmp_path / "o.pt", tmp_path / "o.npz", "--from", "torch", "--to", "iclgd", "--set", "token_dim=4"]):
        (tmp_path / "o.pt").write_bytes(b"not read")
        proc = cli_subprocess("convert", *argv, prelude=no_torch)
        assert proc.returncode == 2, proc.stderr
        assert "needs PyTorch (pip install torch)" in proc.stderr and "Traceback" not in proc.stderr
