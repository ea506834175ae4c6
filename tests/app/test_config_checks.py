"""Every config field is checked where the config is built, from every source (--set, a config
JSON, a checkpoint's or exchange file's config): strict types, ranges, finite numbers, size bounds."""
import re

import pytest

from refimpl.config import AdamConfig, ModelConfig, TaskConfig, apply_overrides, config_from_dict
from iclgd.cli.run import resolve_config

BAD_OVERRIDES = [
    ("train.lr=nan", "train.lr: expected a number > 0 or null, got nan"),
    ("train.lr=-1", "train.lr: expected a number > 0 or null, got -1.0"),
    ("train.lr=inf", "train.lr: expected a number > 0 or null, got inf"),
    ("train.grad_clip=nan", "train.grad_clip: expected a number >= 0 or null, got nan"),
    ("train.b1=1", "train.b1: expected a number in [0, 1), got 1.0"),
    ("train.b2=1", "train.b2: expected a number in [0, 1), got 1.0"),
    ("train.eps=0", "train.eps: expected a number > 0, got 0.0"),
    ("train.eval_every=0", "train.eval_every: expected an integer >= 1, got 0"),
    ("train.checkpoint_every=0", "train.checkpoint_every: expected an integer >= 1, got 0"),
    ("train.steps=-5", "train.steps: expected an integer >= 1, got -5"),
    ("train.batch=0", "train.batch: expected an integer in [1, 1048576], got 0"),
    ("train.fixed_tasks=-1", "train.fixed_tasks: expected an integer >= 0, got -1"),
    ("task.eval_tasks=1000000000", "task.eval_tasks: expected an integer <= 1109237"),
    ("task.input_range=nan", "task.input_range: expected a number > 0, got nan"),
    ("task.weight_scale=-2", "task.weight_scale: expected a number > 0, got -2.0"),
    ("task.distractors=11", "task.distractors: expected an integer in [0, num_context = 10], got 11"),
    ("task.eval_seed=-1", "task.eval_seed: expected an integer >= 0, got -1"),
    ("gdpp.b2=1", "gdpp.b2: expected a number in [0, 1), got 1.0"),
    ("gdpp.eval_every=0", "gdpp.eval_every: expected an integer >= 1, got 0"),
    ("deep_layers=5", "deep_layers: expected a list, got 5"),
    ("deep_layers=[2, 0]", "deep_layers: expected a list whose items are each an integer >= 1, got [2, 0]"),
    ("deep_layers=[2.5]", "deep_layers: expected a list whose items are each an integer >= 1"),
    ("deep_steps=[1, 2]", "deep_steps: expected one entry or one per depth of deep_layers"),
    ("workers=0", "workers: expected an integer >= 1, got 0"),
    ("deep_layers=[2", "deep_layers: expected a JSON value"),
]


@pytest.mark.parametrize("override,message", BAD_OVERRIDES)
def test_a_bad_value_names_the_key_the_range_and_the_value(override, message):
    with pytest.raises(ValueError) as e:
        resolve_config("fig3", False, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("experiment,override,message", [
    ("fig1", "repeats=0", "repeats: expected an integer >= 1, got 0"),
    ("fig1", "sweep=[0.5, NaN]", "sweep: expected a list whose items are each a number > 0"),
    ("fig1", "dampening=true", "dampening: expected a number, got 'true'"),
    ("fig6", "input_grid=[0.5, 2.0]", "input_grid: expected a list of 3 items"),
    ("fig6", "input_grid=[2.0, 0.5, 0.1]", "input_grid: expected [start, stop, step] with start <= stop"),
    ("fig6", "input_grid=[0.5, 2.0, 1e-9]", "at most 10000 steps"),
    ("fig16", "sizes=[16, -1]", "sizes: expected a list whose items are each an integer >= 1"),
])
def test_experiment_fields_are_checked(experiment, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_config(experiment, False, [override])


def test_overrides_may_come_in_any_order():
    a = resolve_config("fig3", False, ["deep_steps=[10, 20]", "deep_layers=[2, 3]"])[1]
    b = resolve_config("fig3", False, ["deep_layers=[2, 3]", "deep_steps=[10, 20]"])[1]
    assert a == b and a.deep_steps == (10, 20)
    c = resolve_config("fig2", False, ["task.distractors=15", "task.num_context=20"])[1]
    assert c.task.distractors == 15


@pytest.mark.parametrize("field,value,message", [
    ("weight_tied", "false", "ModelConfig.weight_tied: expected a boolean (true/false), got 'false'"),
    ("dampening", True, "ModelConfig.dampening: expected a finite number, got True"),
    ("num_layers", 2.0, "ModelConfig.num_layers: expected an integer, got 2.0"),
    ("num_heads", True, "ModelConfig.num_heads: expected an integer, got True"),
    ("attention", 1, "ModelConfig.attention: expected a string, got 1"),
    ("token_clip", float("nan"), "ModelConfig.token_clip: expected a finite number, got nan"),
])
def test_config_json_has_strict_types(field, value, message):
    with pytest.raises(ValueError) as e:
        config_from_dict(ModelConfig, {field: value})
    assert message in str(e.value)


def test_integers_are_numbers_and_json_lists_are_tuples():
    assert config_from_dict(ModelConfig, {"dampening": 1}).dampening == 1
    assert config_from_dict(TaskConfig, {"input_range": 2}).input_range == 2
    with pytest.raises(ValueError, match="task.input_dim: expected an integer >= 1, got '10'"):
        config_from_dict(TaskConfig, {"input_dim": "10"})


def test_adam_config_is_checked():
    with pytest.raises(ValueError, match=r"adam.b2: expected a number in \[0, 1\), got 1"):
        AdamConfig(b2=1)
    with pytest.raises(ValueError, match="adam.lr: expected a number > 0"):
        AdamConfig(lr=float("nan"))


def test_a_section_cannot_be_replaced_by_a_value():
    with pytest.raises(ValueError, match="names a section"):
        apply_overrides(resolve_config("fig2", False, [])[1], ["train=3"])
