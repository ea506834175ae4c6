"""Bad input raises a ValueError that names the argument, the expectation and what was given."""
import numpy as np
import pytest

from refimpl import attention, layers
from iclgd.cli import main
from refimpl.config import AdamConfig, ModelConfig, apply_overrides, config_from_dict
from refimpl.data import linear_regression_tasks
from refimpl.loss import mse_forward
from refimpl.model import model_backward, model_forward
from refimpl.params import init_params


@pytest.fixture
def model(rng):
    cfg = ModelConfig(token_dim=5, key_size=3, num_heads=2)
    return cfg, init_params(cfg, rng), rng.standard_normal((3, 6, 5))


def test_wrong_token_width(model):
    cfg, p, x = model
    with pytest.raises(ValueError, match=r"tokens: expected token width token_dim = 5, got shape \(3, 6, 4\)"):
        model_forward(p, x[..., :4], cfg)


def test_wrong_rank_and_type(model):
    cfg, p, x = model
    with pytest.raises(ValueError, match="tokens: expected 3 dimensions"):
        model_forward(p, x[0], cfg)
    with pytest.raises(ValueError, match="tokens: expected a numpy.ndarray, got list"):
        model_forward(p, x.tolist(), cfg)
    with pytest.raises(ValueError, match="tokens: expected dtype float32 or float64, got int64"):
        model_forward(p, x.astype(np.int64), cfg)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_data_or_parameters(model, bad):
    cfg, p, x = model
    x = x.copy()
    x[1, 2, 3] = bad
    with pytest.raises(ValueError, match="tokens: contains 1 NaN or inf"):
        model_forward(p, x, cfg)
    q = dict(p)
    q["layer0.attn.W_v"] = p["layer0.attn.W_v"].copy()
    q["layer0.attn.W_v"][0, 0] = bad
    with pytest.raises(ValueError, match=r"params\['layer0.attn.W_v'\]: contains 1 NaN"):
        model_forward(q, np.nan_to_num(x), cfg)


def test_parameter_shape_and_names(model):
    cfg, p, x = model
    q = dict(p)
    q["layer0.attn.W_p"] = p["layer0.attn.W_p"][:5]
    with pytest.raises(ValueError, match=r"layer0.attn.W_p'\]: expected shape \(6, 5\), got \(5, 5\)"):
        model_forward(q, x, cfg)
    with pytest.raises(ValueError, match="missing"):
        model_forward({k: v for k, v in p.items() if k != "layer0.attn.W_k"}, x, cfg)
    with pytest.raises(ValueError, match="unknown name"):
        model_forward({**p, "layer7.attn.W_k": p["layer0.attn.W_k"]}, x, cfg)


def test_mixed_dtypes(model):
    cfg, p, x = model
    with pytest.raises(ValueError, match="dtype mismatch"):
        model_forward(p, x.astype(np.float32), cfg)


def test_attention_op_argument_errors(rng):
    x = rng.standard_normal((2, 5, 4))
    p = {"W_q": rng.standard_normal((4, 6)), "W_k": rng.standard_normal((4, 6)),
         "W_v": rng.standard_normal((4, 6)), "W_p": rng.standard_normal((6, 4))}
    with pytest.raises(ValueError, match="W_q: 6 columns are not num_heads = 4 heads"):
        attention.lsa_forward(x, p, num_heads=4)
    with pytest.raises(ValueError, match="num_heads: expected an integer >= 1, got 0"):
        attention.lsa_forward(x, p, num_heads=0)
    with pytest.raises(ValueError, match="num_keys: expected at most T = 5 tokens, got 9"):
        attention.softmax_attention_forward(x, p, num_keys=9)
    with pytest.raises(ValueError, match=r"W_q: expected 5 rows"):
        attention.lsa_forward(rng.standard_normal((2, 5, 5)), p)
    with pytest.raises(ValueError, match=r"x: expected last axis of size 4"):
        layers.linear_forward(rng.standard_normal((2, 3)), p["W_q"])
    with pytest.raises(ValueError, match=r"scale: expected shape \(4\)"):
        layers.layernorm_forward(x, np.ones(3), np.zeros(4))


@pytest.mark.parametrize("field,value,message", [
    ("key_size", 0, "key_size: expected an integer >= 1, got 0"),
    ("num_heads", -1, "num_heads: expected an integer >= 1"),
    ("attention", "relu", "attention: expected one of"),
    ("pos_enc", "rotary", "pos_enc: expected one of"),
    ("input_mlp", True, "input_mlp: expected False unless embed_dim > 0"),
    ("token_clip", -1.0, "token_clip: expected a number >= 0"),
    ("dampening", float("nan"), "dampening: expected a finite number"),
])
def test_config_that_cannot_work(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{field: value})


def test_unknown_config_keys_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown config key 'num_layer'.*num_layers"):
        apply_overrides(ModelConfig(), ["num_layer=3"])
    with pytest.raises(ValueError, match="expected an integer, got 'three'"):
        apply_overrides(ModelConfig(), ["num_layers=three"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\]"):
        config_from_dict(AdamConfig, {"lr": 0.1, "bogus": 1})
    assert apply_overrides(ModelConfig(), {"num_layers": "3", "y_update": "true"}).num_layers == 3


def test_backward_checks_upstream_shape(model):
    cfg, p, x = model
    _, cache = model_forward(p, x, cfg)
    with pytest.raises(ValueError, match=r"dreadouts: expected shape \(1, 3\)"):
        model_backward(np.ones(3), cache)


def test_loss_and_data_errors(rng):
    with pytest.raises(ValueError, match=r"y: expected shape \(3\)"):
        mse_forward(rng.standard_normal(3), rng.standard_normal(4))
    with pytest.raises(ValueError, match="distractors"):
        linear_regression_tasks(rng, 4, num_context=3, distractors=5)
    with pytest.raises(ValueError, match="batch: expected an integer >= 1, got 0"):
        linear_regression_tasks(rng, 0)


def test_cli_rejects_unknown_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["gradcheck", "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    assert "invalid choice" in capsys.readouterr().err


def test_overrides_of_an_optional_number_follow_its_declared_type():
    """A field declared Optional[float] parses "null" as None and any number as a float, also when
    its current value is a float (back to null) or None (to a number); other text is an error."""
    import dataclasses
    from typing import Optional

    @dataclasses.dataclass(frozen=True)
    class Section:
        rate: Optional[float] = None
        count: Optional[int] = 3

    assert type(apply_overrides(Section(), ["rate=0"]).rate) is float
    assert apply_overrides(Section(rate=0.5), ["rate=null"]).rate is None
    assert apply_overrides(Section(), ["count=none"]).count is None and apply_overrides(Section(count=None), ["count=7"]).count == 7
    with pytest.raises(ValueError, match="rate: expected a number"):
        apply_overrides(Section(), ["rate=fast"])
