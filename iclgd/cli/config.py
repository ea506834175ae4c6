"""`iclgd config EXPERIMENT [--quick] [--set KEY=VALUE ...]`: the experiment's resolved config tree,
one key a line with its value, default, type and the comment that documents the field in the source
(the paper's value is in that comment). The keys are those `iclgd run --set` takes."""
import dataclasses
import inspect
import json
import re
import typing

FIELD_LINE = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+=[^#]*#\s?(.*)$")
COMMENT_LINE = re.compile(r"^\s+#\s?(.*)$")


def add_arguments(parser):
    parser.add_argument("experiment", help="experiment name (see `iclgd list`)")
    parser.add_argument("--quick", action="store_true", help="with the --quick overrides applied")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with an override applied, as `iclgd run` would (repeatable)")


def field_comments(cls):
    """{field: the comment after it in the class source, with any comment-only lines below it};
    a field a dataclass inherits has the comment of the class that declares it."""
    out = {}
    for base in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        out.update(_own_comments(base))
    return out


def _own_comments(cls):
    out, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        m = FIELD_LINE.match(line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and COMMENT_LINE.match(line):
            out[last] += " " + COMMENT_LINE.match(line).group(1).strip()
        else:
            last = None
    return out


def type_name(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_args(annotation) and len(args) == 1:
        return f"{type_name(args[0])} or null"
    return {tuple: "list"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def rows(config, default, prefix=""):
    """[(key, value, default, type, comment)] for every leaf field, depth first."""
    out, comments = [], field_comments(type(config))
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, base = getattr(config, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            out += rows(value, base, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, _show(value), _show(base), type_name(hints[f.name]),
                        comments.get(f.name, "")))
    return out


def _show(v):
    """A value as --set takes it: JSON for null, booleans and lists."""
    return json.dumps(list(v) if isinstance(v, tuple) else v) if v is None or isinstance(v, (bool, tuple)) else str(v)


def run(args):
    from iclgd.cli.run import resolve_config
    from iclgd.experiments import EXPERIMENTS
    mod, cfg = resolve_config(args.experiment, args.quick, args.overrides)
    table = rows(cfg, mod.Config())
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    print(f"{args.experiment} ({EXPERIMENTS[args.experiment][1]}): the resolved config"
          f"{' with the --quick overrides' if args.quick else ''}; `iclgd run --set KEY=VALUE` changes a key")
    head = ("key", "value", "default", "type")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  what it is")
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0
