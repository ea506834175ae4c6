"""Strict checks of a config dataclass's fields: the type its annotation declares and a range.

Every config calls `check_fields(self, section, RULES)` in `__post_init__`, so a config is checked
wherever it is built: defaults, `--set` overrides (dataclasses.replace), config JSON files,
checkpoints and exchange files. A bad field raises one ValueError naming the key, the expectation
and the value: `train.b2: expected a number in [0, 1), got 1.0`.

Types, from the annotation (no coercion: the JSON string "false" is not a bool, true is not 1):
    bool                 True or False
    int                  an integer (not a bool)
    float                a finite number (an integer is accepted; not a bool, not NaN or inf)
    str                  a string
    tuple                a tuple (a JSON list); its items are checked by the config itself
    Optional[X]          None or an X
Range rules: "> a", ">= a", "< a", "<= a", or an interval "[a, b]", "[a, b)", "(a, b]", "(a, b)".
"""
import dataclasses
import math
import types
import typing

import numpy as np


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v):
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


def _optional(annotation):
    """(X, True) for Optional[X], else (annotation, False)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return inner[0], True
    return annotation, False


TYPES = {
    bool: (lambda v: isinstance(v, bool), "a boolean (true/false)"),
    int: (_is_int, "an integer"),
    float: (_is_number, "a finite number"),
    str: (lambda v: isinstance(v, str), "a string"),
    tuple: (lambda v: isinstance(v, tuple), "a list"),
}


def in_range(value, rule):
    """Whether `value` satisfies a range rule (see the module docstring)."""
    rule = rule.strip()
    if rule[0] in "[(":
        lo, hi = (float(x) for x in rule[1:-1].split(","))
        above = value >= lo if rule[0] == "[" else value > lo
        below = value <= hi if rule[-1] == "]" else value < hi
        return above and below
    op, bound = rule.split()
    bound = float(bound)
    return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]


def describe(kind, rule):
    """'an integer >= 1', 'a number in [0, 1)' ..."""
    if rule is None:
        return kind
    kind = "a number" if kind == "a finite number" else kind
    return f"{kind} in {rule}" if rule.strip()[0] in "[(" else f"{kind} {rule}"


def check_value(key, value, annotation, rule=None):
    """Raise ValueError unless `value` has the annotated type and satisfies `rule`."""
    inner, optional = _optional(annotation)
    if optional and value is None:
        return value
    is_type, kind = TYPES.get(inner, (lambda v: True, getattr(inner, "__name__", str(inner))))
    want = describe(kind, rule) + (" or null" if optional else "")
    if not is_type(value) or (rule is not None and not in_range(value, rule)):
        raise ValueError(f"{key}: expected {want}, got {value!r}")
    return value


def check_fields(cfg, section, rules=None):
    """Check every field of the dataclass `cfg` (nested dataclasses check themselves)."""
    rules = rules or {}
    hints = typing.get_type_hints(type(cfg))
    prefix = f"{section}." if section else ""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                raise ValueError(f"{prefix}{f.name}: expected a section of keys, got {value!r}")
            continue
        check_value(prefix + f.name, value, hints[f.name], rules.get(f.name))


def check_items(key, values, item_type, rule=None, length=None):
    """Each item of the tuple field `key` has `item_type` and satisfies `rule`; optional length."""
    if length is not None and len(values) != length:
        raise ValueError(f"{key}: expected a list of {length} items, got {list(values)!r}")
    if not values:
        raise ValueError(f"{key}: expected a non-empty list, got {list(values)!r}")
    for v in values:
        is_type, kind = TYPES[item_type]
        if not is_type(v) or (rule is not None and not in_range(v, rule)):
            raise ValueError(f"{key}: expected a list whose items are each {describe(kind, rule)}, "
                             f"got {list(values)!r}")
    return values
