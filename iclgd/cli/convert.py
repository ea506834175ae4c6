"""`iclgd convert IN OUT --from F --to G`: parameters between the public notebooks' Haiku trees,
a PyTorch state_dict and our own .npz (iclgd/interop/convert.py has the name maps).

Formats and files:
    iclgd   .npz of save_params (carries its config)
    haiku   .npz with '/'-joined keys, or a pickle (.pkl) of a nested dict
    torch   .npz or .pkl of the state_dict; .pt/.pth through torch (if installed)
The config comes from an iclgd input file, else from --config (a JSON object of ModelConfig fields;
fields left out take their defaults) and --set key=value overrides. The maps cover the LSA
transformer (refimpl/params.py): an input holding the GPT-2 model's parameters (refimpl/gpt2.py)
is refused with one line saying so.

Pickles (.pkl and torch's .pt/.pth) can run code when loaded. By default a .pkl is read by a
restricted unpickler that admits only containers and NumPy arrays, and a .pt/.pth by
torch.load(weights_only=True); any other global in the file is an error naming it, and nothing in
the file runs. --trust-pickle reads them with plain pickle / torch.load(weights_only=False), for
files you trust (a pickle of JAX arrays, say). Every output is written atomically; an .npz name
without the suffix gets '.npz' appended (for --to iclgd, and for .npz outputs), and the line
printed names the file written.
"""
import json
import os
import pickle
import re
import warnings
import zipfile

from refimpl.atomic import atomic_save
from refimpl.config import ModelConfig, apply_overrides, config_from_dict
from iclgd.interop.convert import (check_not_gpt2, flatten_tree, from_haiku, from_torch_state_dict,
                                   load_tree, save_pickle, save_tree, to_haiku, to_torch_state_dict)
from iclgd.interop.npz_headers import read_npz_headers
from refimpl.params import load_params, save_params

FORMATS = ("iclgd", "haiku", "torch")


def add_arguments(parser):
    parser.add_argument("input", metavar="IN")
    parser.add_argument("output", metavar="OUT")
    parser.add_argument("--from", dest="source", choices=FORMATS, required=True,
                        help="the input's format: iclgd (.npz of save_params), haiku or torch")
    parser.add_argument("--to", dest="target", choices=FORMATS, required=True,
                        help="the output's format: iclgd, haiku or torch")
    parser.add_argument("--config", help="JSON file of ModelConfig fields (not needed from iclgd); "
                                          "without it, --set overrides the ModelConfig defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. --set num_layers=2 --set weight_tied=true (repeatable)")
    parser.add_argument("--root", default=None,
                        help="Haiku top module: inferred on input when unique; 'transformer' on output")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="read a pickle input (.pkl, .pt, .pth) with plain pickle / torch.load("
                             "weights_only=False), which runs any code the file names; only for a "
                             "file you trust. Without it, a pickle may hold only containers and "
                             "NumPy arrays (torch: tensors) and anything else is refused unrun")


def _config(args, from_file=None):
    if from_file is not None and args.config is None:
        cfg = from_file
    elif args.config is None and not args.set:
        raise ValueError(f"--config: expected a JSON file of ModelConfig fields (or --set KEY=VALUE "
                         f"overrides of the defaults) for --from {args.source}")
    elif args.config is None:
        cfg = ModelConfig()  # the defaults, with the --set overrides below
    else:
        with open(args.config) as f:
            cfg = config_from_dict(ModelConfig, json.load(f), "--config")
    return apply_overrides(cfg, args.set)


def _torch(label):
    """The torch module, or a one-line error: a .pt/.pth file needs PyTorch."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{label}: a .pt/.pth file needs PyTorch (pip install torch), which is not "
                         f"installed; use .npz or .pkl instead") from None
    return torch


def _is_torch_file(path):
    return str(path).endswith((".pt", ".pth"))


def read(args):
    """(params, cfg) from the input file; a file of GPT-2 parameters is refused by name."""
    label = f"IN {args.input}"
    if args.source == "iclgd":
        if os.path.isfile(args.input) and zipfile.is_zipfile(args.input):
            check_not_gpt2(read_npz_headers(args.input, label), label)
        params, cfg = load_params(args.input)
        return params, _config(args, cfg)
    if args.source == "torch" and _is_torch_file(args.input):
        tree = _torch_load(args.input, args.trust_pickle)  # the state_dict
    else:
        tree = load_tree(args.input, args.trust_pickle)
    check_not_gpt2(flatten_tree(tree), label)
    cfg = _config(args)
    if args.source == "haiku":
        return from_haiku(tree, cfg, root=args.root), cfg
    return from_torch_state_dict(tree, cfg), cfg


def _torch_load(path, trust):
    """torch.load(weights_only=not trust), its errors as one line naming the refused global."""
    import pickle

    torch = _torch(f"IN {path}")
    label = f"IN {path}"
    try:
        with warnings.catch_warnings():  # torch warns, over several lines, about old protocols
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found and not trust:
            raise ValueError(f"{label}: refused to load global '{found.group(1)}' from a pickle "
                             f"(torch.load with weights_only=True admits only tensors and "
                             f"containers; pass --trust-pickle for a file you trust)") from None
        paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.startswith("Check the")]
        detail = " ".join(paragraphs[-1].split()) if paragraphs else ""
        hint = "" if trust else "; pass --trust-pickle for a file you trust"
        raise ValueError(f"{label}: torch.load could not read the file ({type(e).__name__}: "
                         f"{detail}){hint}") from None


def write(args, params, cfg):
    """Write the output file atomically; returns the path written."""
    if args.target == "iclgd":
        return save_params(args.output, params, cfg)
    if args.target == "haiku":
        tree = to_haiku(params, cfg, root=args.root or "transformer")
    else:
        tree = to_torch_state_dict(params, cfg)
        if _is_torch_file(args.output):
            torch = _torch(f"OUT {args.output}")
            tensors = {k: torch.from_numpy(v) for k, v in tree.items()}
            return atomic_save(args.output, lambda f: torch.save(tensors, f))
    if str(args.output).endswith(".npz"):
        return save_tree(args.output, tree)
    return save_pickle(args.output, tree)


def run(args):
    try:
        params, cfg = read(args)
    except OSError as e:
        raise ValueError(f"IN {e.filename or args.input}: {e.strerror or e}") from None
    except (EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError) as e:  # a malformed archive
        raise ValueError(f"IN {args.input}: not a readable {args.source} file ({type(e).__name__}: {e})") from None
    try:
        written = write(args, params, cfg)
    except OSError as e:
        raise ValueError(f"OUT {e.filename or args.output}: {e.strerror or e}") from None
    print(f"wrote {written} ({args.target}: {len(params)} parameters, "
          f"{sum(v.size for v in params.values())} numbers)")
    return 0
