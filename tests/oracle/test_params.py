"""Initialisation statistics (SPEC 3), the flat parameter mapping, save/load."""
import numpy as np
import pytest

from refimpl.config import ModelConfig
from refimpl.params import (fan_in_std, flatten, init_params, load_params, param_shapes, save_params,
                            truncated_normal, unflatten)


def test_truncated_normal_has_fan_in_std_and_is_truncated_at_two_sigma():
    """Haiku's law: sigma = sqrt(scale / fan_in) / 0.8796...; draws within +-2 sigma; the
    truncation shrinks the std back to sqrt(scale / fan_in)."""
    rng = np.random.default_rng(1)
    fan_in, scale = 11, 0.002
    sigma = fan_in_std(fan_in, scale)
    z = truncated_normal(rng, (400, 1000), sigma)
    assert np.abs(z).max() <= 2 * sigma
    assert np.abs(z).max() > 1.99 * sigma  # the tails are actually reached
    assert z.std() == pytest.approx(np.sqrt(scale / fan_in), rel=5e-3)
    assert abs(z.mean()) < 5e-3 * sigma * 10


def test_init_params_scale_by_layers_and_kinds():
    cfg = ModelConfig(num_layers=4, mlp=True, layernorm=True, init_scale=0.02, key_size=7)
    p = init_params(cfg, np.random.default_rng(0))
    assert list(p) == list(param_shapes(cfg))
    w = np.concatenate([p[f"layer{l}.attn.W_q"].ravel() for l in range(4)])
    assert np.abs(w).max() <= 2 * fan_in_std(11, 0.02 / 4)
    assert w.std() == pytest.approx(np.sqrt(0.02 / 4 / 11), rel=0.1)
    assert not p["layer1.mlp.b1"].any() and not p["layer1.ln2.offset"].any()
    np.testing.assert_array_equal(p["layer1.ln1.scale"], 1.0)
    assert p["layer2.attn.W_p"].shape == (7, 11)


def test_init_is_reproducible_from_the_generator():
    cfg = ModelConfig(num_layers=2)
    a = init_params(cfg, np.random.default_rng(3))
    b = init_params(cfg, np.random.default_rng(3))
    c = init_params(cfg, np.random.default_rng(4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layer0.attn.W_q"], c["layer0.attn.W_q"])


def test_float32_init():
    p = init_params(ModelConfig(), np.random.default_rng(0), dtype=np.float32)
    assert all(v.dtype == np.float32 for v in p.values())


def test_flatten_roundtrip(rng):
    p = init_params(ModelConfig(num_layers=2, mlp=True), rng)
    v = flatten(p)
    assert v.size == sum(x.size for x in p.values())
    q = unflatten(v, p)
    assert all(np.array_equal(p[k], q[k]) for k in p)


def test_save_load_roundtrip(tmp_path, rng):
    cfg = ModelConfig(num_layers=2, weight_tied=True, layernorm=True, dampening=0.75)
    p = init_params(cfg, rng)
    save_params(tmp_path / "p.npz", p, cfg)
    q, cfg2 = load_params(tmp_path / "p.npz")
    assert cfg2 == cfg
    assert all(np.array_equal(p[k], q[k]) for k in p)


def test_load_rejects_parameters_that_do_not_fit_the_config(tmp_path, rng):
    cfg = ModelConfig(num_layers=2)
    p = init_params(cfg, rng)
    p["layer1.attn.W_q"] = p["layer1.attn.W_q"][:, :5]
    save_params(tmp_path / "bad.npz", p, cfg)
    with pytest.raises(ValueError, match="layer1.attn.W_q"):
        load_params(tmp_path / "bad.npz")
