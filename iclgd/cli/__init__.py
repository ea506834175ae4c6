"""Command line: `iclgd COMMAND ...`. Each command lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> exit status`; modules are imported only when used.

Exit status (the README's table): 0 ok; 1 a check failed (crosscheck FAIL, gradcheck FAIL, a run
that diverged); 2 bad input (a flag, a config key or value, a file, an --out in use or holding other
work, an unwritable folder or a full disk: one line on stderr naming what and what to do); 3 an
internal error (a bug: the traceback, then one line); 130 interrupted (Ctrl-C).
"""
import argparse
import errno
import importlib
import sys
import traceback

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
    "config": ("iclgd.cli.config", "an experiment's resolved config: each key's value, default, type and meaning"),
    "run": ("iclgd.cli.run", "train and evaluate one experiment; write results.json and its figure"),
    "sweep": ("iclgd.cli.sweep", "one run per (grid point, seed) on a local pool or a Dask cluster, merged"),
    "plot": ("iclgd.cli.plot", "re-render an experiment's figure from its results.json alone"),
    "show": ("iclgd.cli.show", "print a run's summary again from its results.json alone"),
    "report": ("iclgd.cli.report", "one self-contained HTML page of runs: figures, summaries, configs"),
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


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _os_error_line(e):
    what = f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or str(e))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{what}; free some space, then rerun (`iclgd run` with --resume keeps its checkpoints)"
    return what


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args)
    except ValueError as e:
        print(f"iclgd {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"iclgd {args.command}: error: {_os_error_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"iclgd {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001  a bug: show where, then one line
        traceback.print_exc()
        print(f"iclgd {args.command}: internal error ({type(e).__name__}: {e}); please report it with the "
              f"traceback above", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
