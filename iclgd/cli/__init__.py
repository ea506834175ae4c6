"""Command line: `iclgd COMMAND ...`. Each command lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> exit status`; modules are imported only when used."""
import argparse
import importlib
import sys

from iclgd import __version__

DESCRIPTION = ("Reproduce 'Transformers learn in-context by gradient descent' with a float64 NumPy oracle "
               "and fast CPU/GPU backends. `iclgd COMMAND --help` explains each command.")

# command -> (module, one-line help)
COMMANDS = {
    "info": ("iclgd.cli.info", "versions, and which backends are available (and why not)"),
    "gradcheck": ("iclgd.cli.gradcheck", "check every hand-written backward against finite differences"),
    "crosscheck": ("iclgd.cli.crosscheck", "compare another implementation's results with the oracle"),
    "convert": ("iclgd.cli.convert", "parameters between Haiku trees, a torch state_dict and our .npz"),
    "list": ("iclgd.cli.list", "the experiments, with the paper figure each reproduces"),
    "run": ("iclgd.cli.run", "train and evaluate one experiment; write results.json and its figure"),
    "plot": ("iclgd.cli.plot", "re-render an experiment's figure from its results.json alone"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="iclgd", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"iclgd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args)
    except ValueError as e:
        print(f"iclgd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
