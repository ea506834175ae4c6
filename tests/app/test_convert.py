"""Importers and exporters of parameters (iclgd/interop/convert.py), without optional packages.

Properties: export then import is the identity for every layout (Haiku nested, two-level and flat,
in .npz and pickle; torch state_dict; our .npz); the public names land on the right parameter; torch
weights are transposed; every malformed tree is an error naming the key.
"""
import pickle

import numpy as np
import pytest

from refimpl.config import ModelConfig
from tests.conftest import model_configs
from iclgd.interop.convert import (flatten_tree, from_haiku, from_torch_state_dict, load_tree, save_tree,
                             to_haiku, to_torch_state_dict)
from refimpl.params import init_params, load_params, save_params

CONFIGS = model_configs("deep_ln_mlp", "tied_ln_mlp", "deep_pre_ln", "sine")


def random_params(cfg, rng):
    """Distinct random values everywhere (init_params would give LN scales of 1, biases of 0)."""
    return {n: rng.standard_normal(v.shape) for n, v in init_params(cfg, rng).items()}


def assert_same(a, b):
    assert list(a) == list(b)
    for n in a:
        assert a[n].shape == b[n].shape and np.array_equal(a[n], b[n]), n


def nest(flat):
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    out = {}
    for path, v in flat.items():
        node = out
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = v
    return out


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_haiku_round_trip_in_every_layout(tmp_path, rng, case):
    cfg = CONFIGS[case]
    params = random_params(cfg, rng)
    tree = to_haiku(params, cfg)  # Haiku's own {module: {leaf: array}}
    flat = flatten_tree(tree)
    assert_same(from_haiku(tree, cfg), params)
    assert_same(from_haiku(flat, cfg), params)
    assert_same(from_haiku(nest(flat), cfg), params)
    save_tree(tmp_path / "t.npz", tree)
    assert_same(from_haiku(load_tree(tmp_path / "t.npz"), cfg), params)
    with open(tmp_path / "t.pkl", "wb") as f:
        pickle.dump(tree, f)
    assert_same(from_haiku(load_tree(tmp_path / "t.pkl"), cfg), params)


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_torch_round_trip_transposes_every_weight(rng, case):
    cfg = CONFIGS[case]
    params = random_params(cfg, rng)
    sd = to_torch_state_dict(params, cfg)
    assert_same(from_torch_state_dict(sd, cfg), params)
    W_q = params["layer0.attn.W_q"]  # (D, H*K), D != H*K in every case
    assert W_q.shape[0] != W_q.shape[1]
    assert np.array_equal(sd["blocks.0.attn.q_proj.weight"], W_q.T)
    assert np.array_equal(sd["blocks.0.attn.o_proj.weight"], params["layer0.attn.W_p"].T)


def test_our_npz_back_out(tmp_path, rng):
    cfg = CONFIGS["deep_ln_mlp"]
    params = from_haiku(to_haiku(random_params(cfg, rng), cfg), cfg)
    save_params(tmp_path / "p.npz", params, cfg)
    loaded, cfg2 = load_params(tmp_path / "p.npz")
    assert cfg2 == cfg
    assert_same(loaded, params)


def test_public_deep_names_land_on_the_right_parameter(rng):
    """Names typed as the public code creates them (deep model, LayerNorm, MLP, 3 layers)."""
    cfg = CONFIGS["deep_ln_mlp"]
    D, HK, F = 4, 6, 16
    tree, want = {}, {}
    for l in range(3):
        sfx = "" if l == 0 else f"_{l}"
        for h, ours in (("query", "W_q"), ("key", "W_k"), ("value", "W_v")):
            tree[f"transformer/layer_{l}/{h}"] = {"w": rng.standard_normal((D, HK))}
            want[f"layer{l}.attn.{ours}"] = tree[f"transformer/layer_{l}/{h}"]["w"]
        tree[f"transformer/layer_{l}/linear"] = {"w": rng.standard_normal((HK, D))}
        want[f"layer{l}.attn.W_p"] = tree[f"transformer/layer_{l}/linear"]["w"]
        if l > 0:
            tree[f"transformer/norm_{l}"] = {"scale": rng.standard_normal(D),
                                             "offset": rng.standard_normal(D)}
            want[f"layer{l}.ln1.scale"] = tree[f"transformer/norm_{l}"]["scale"]
            want[f"layer{l}.ln1.offset"] = tree[f"transformer/norm_{l}"]["offset"]
        tree[f"transformer/layer_norm{sfx}"] = {"scale": rng.standard_normal(D),
                                                "offset": rng.standard_normal(D)}
        want[f"layer{l}.ln2.scale"] = tree[f"transformer/layer_norm{sfx}"]["scale"]
        want[f"layer{l}.ln2.offset"] = tree[f"transformer/layer_norm{sfx}"]["offset"]
        for lin, w, b, shape in (("linear", "W1", "b1", (D, F)), ("linear_1", "W2", "b2", (F, D))):
            m = {"w": rng.standard_normal(shape), "b": rng.standard_normal(shape[1])}
            tree[f"transformer/mlp{sfx}/{lin}"] = m
            want[f"layer{l}.mlp.{w}"], want[f"layer{l}.mlp.{b}"] = m["w"], m["b"]
    params = from_haiku(tree, cfg)
    assert sorted(params) == sorted(want)
    for n in want:
        assert np.array_equal(params[n], want[n]), n


def test_public_tied_names_land_on_the_right_parameter(rng):
    cfg = CONFIGS["tied_ln_mlp"]
    params = random_params(cfg, rng)
    flat = flatten_tree(to_haiku(params, cfg, root="Transformer_gd"))
    pairs = {"Transformer_gd/multi_head_attention/query/w": "layer0.attn.W_q",
             "Transformer_gd/multi_head_attention/linear/w": "layer0.attn.W_p",
             "Transformer_gd/l_norm/layer_norm/scale": "layer0.ln1.scale",
             "Transformer_gd/l_norm_1/layer_norm/offset": "layer0.ln2.offset",
             "Transformer_gd/mlp/linear_1/w": "layer0.mlp.W2"}
    for path, ours in pairs.items():
        assert np.array_equal(flat[path], params[ours]), path
    emb = flatten_tree(to_haiku(random_params(CONFIGS["sine"], rng), CONFIGS["sine"]))
    assert {"transformer/emb/w", "transformer/input_mlp/linear/b",
            "transformer/input_mlp/linear_1/w"} <= set(emb)


def test_zero_biases_are_accepted_and_missing_mlp_biases_read_as_zero(rng):
    cfg = CONFIGS["tied_ln_mlp"]
    params = random_params(cfg, rng)
    flat = flatten_tree(to_haiku(params, cfg))
    for h in ("query", "key", "value", "linear"):  # use_bias_p=True, untouched zero biases
        flat[f"transformer/multi_head_attention/{h}/b"] = np.zeros(6 if h == "linear" else 5)
    del flat["transformer/mlp/linear/b"], flat["transformer/mlp/linear_1/b"]  # use_bias_p=False
    out = from_haiku(flat, cfg)
    assert np.all(out["layer0.mlp.b1"] == 0) and np.all(out["layer0.mlp.b2"] == 0)
    assert np.array_equal(out["layer0.attn.W_q"], params["layer0.attn.W_q"])


def _haiku_flat(rng, case="deep_ln_mlp"):
    cfg = CONFIGS[case]
    return cfg, flatten_tree(to_haiku(random_params(cfg, rng), cfg))


HAIKU_ERRORS = {
    "nonzero attention bias": (lambda f: {**f, "transformer/layer_1/key/b": np.ones(6)},
                               "transformer/layer_1/key/b"),
    "unknown name": (lambda f: {**f, "transformer/layer_3/query/w": np.ones((4, 6))},
                     "transformer/layer_3/query/w"),
    "missing weight": (lambda f: {k: v for k, v in f.items() if k != "transformer/norm_2/scale"},
                       "transformer/norm_2/scale"),
    "shape mismatch": (lambda f: {**f, "transformer/mlp_1/linear/w": np.ones((4, 15))},
                       "transformer/mlp_1/linear/w"),
    "integer values": (lambda f: {**f, "transformer/layer_0/value/w": np.ones((4, 6), dtype=int)},
                       "transformer/layer_0/value/w"),
    "NaN": (lambda f: {**f, "transformer/layer_2/linear/w": np.full((6, 4), np.nan)},
            "layer2.attn.W_p"),
    "two roots": (lambda f: {**f, "other/x/w": np.ones(2)}, "root"),
}


@pytest.mark.parametrize("case", sorted(HAIKU_ERRORS))
def test_a_bad_haiku_tree_is_an_error_naming_the_key(rng, case):
    edit, key = HAIKU_ERRORS[case]
    cfg, flat = _haiku_flat(rng)
    with pytest.raises(ValueError, match=key):
        from_haiku(edit(flat), cfg)


def test_root_picks_one_model_of_several(rng):
    cfg, flat = _haiku_flat(rng)
    both = {**flat, **{k.replace("transformer/", "Transformer_gd/"): v for k, v in flat.items()}}
    with pytest.raises(ValueError, match="root"):
        from_haiku(both, cfg)
    with pytest.raises(ValueError, match="not under root"):
        from_haiku(both, cfg, root="transformer")


def test_concatenated_positional_encoding_is_refused_by_name(rng):
    cfg = ModelConfig(token_dim=4, num_layers=1, key_size=3, pos_enc="concat", pos_enc_size=2)
    with pytest.raises(ValueError, match="pos_enc"):
        to_haiku(init_params(cfg, rng), cfg)


TORCH_ERRORS = {
    "unknown key": (lambda sd: {**sd, "blocks.3.attn.q_proj.weight": np.ones((6, 4))},
                    "blocks.3.attn.q_proj.weight"),
    "unexpected bias": (lambda sd: {**sd, "blocks.0.attn.q_proj.bias": np.ones(6)},
                        "blocks.0.attn.q_proj.bias"),
    "missing key": (lambda sd: {k: v for k, v in sd.items() if k != "blocks.2.ln1.bias"},
                    "blocks.2.ln1.bias"),
    "untransposed weight": (lambda sd: {**sd, "blocks.1.attn.k_proj.weight":
                                        sd["blocks.1.attn.k_proj.weight"].T},
                            "blocks.1.attn.k_proj.weight"),
}


@pytest.mark.parametrize("case", sorted(TORCH_ERRORS))
def test_a_bad_state_dict_is_an_error_naming_the_key(rng, case):
    edit, key = TORCH_ERRORS[case]
    cfg = CONFIGS["deep_ln_mlp"]
    sd = to_torch_state_dict(random_params(cfg, rng), cfg)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        from_torch_state_dict(edit(sd), cfg)


# ----------------------------------------------------------------------------------------------
def test_convert_command_round_trip_through_every_format(tmp_path, rng, capsys):
    import json

    from iclgd.cli import main
    from refimpl.config import config_to_dict
    cfg = CONFIGS["deep_ln_mlp"]
    params = random_params(cfg, rng)
    save_params(tmp_path / "p.npz", params, cfg)
    (tmp_path / "cfg.json").write_text(json.dumps({**config_to_dict(cfg), "num_layers": 1}))
    c = ["--config", str(tmp_path / "cfg.json"), "--set", "num_layers=3"]  # the override wins
    steps = [["p.npz", "h.pkl", "--from", "iclgd", "--to", "haiku", "--root", "Transformer_gd"],
             ["h.pkl", "t.npz", "--from", "haiku", "--to", "torch", *c],
             ["t.npz", "h.npz", "--from", "torch", "--to", "haiku", *c],
             ["h.npz", "back.npz", "--from", "haiku", "--to", "iclgd", *c]]
    for step in steps:
        argv = ["convert"] + [str(tmp_path / a) if a.endswith(("npz", "pkl")) else a for a in step]
        assert main(argv) == 0, capsys.readouterr().err
    back, cfg2 = load_params(tmp_path / "back.npz")
    assert cfg2 == cfg
    assert_same(back, params)
    assert main(["convert", str(tmp_path / "h.npz"), str(tmp_path / "x.npz"), "--from", "haiku",
                 "--to", "iclgd"]) == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize("source, layout", [("iclgd", "save_params"), ("iclgd", "exchange"),
                                            ("haiku", "flat npz"), ("torch", "pickle")])
def test_gpt2_parameters_are_refused_by_name_not_crashed_on(tmp_path, rng, capsys, source, layout):
    """The maps cover the LSA transformer only: GPT-2 parameters (refimpl/gpt2.py) in any input
    layout are one line saying so, exit status 2, and nothing is written."""
    from iclgd.cli import main
    from iclgd.interop.convert import save_pickle
    from iclgd.interop.exchange import export_oracle
    from tests.peers.cases import GPT2_CFG, gpt2_problem
    params, tokens, targets = gpt2_problem(GPT2_CFG, rng)
    path = tmp_path / ("in.pkl" if layout == "pickle" else "in.npz")
    {"save_params": lambda: save_params(path, params, GPT2_CFG),
     "exchange": lambda: export_oracle(path, GPT2_CFG, params, tokens, targets),
     "flat npz": lambda: save_tree(path, params),
     "pickle": lambda: save_pickle(path, params)}[layout]()
    status = main(["convert", str(path), str(tmp_path / "out.npz"), "--from", source, "--to", "iclgd",
                   "--set", "num_layers=2"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert f"IN {path}: holds the GPT-2 model's parameters" in err and "refimpl/gpt2.py" in err
    assert not (tmp_path / "out.npz").exists()
