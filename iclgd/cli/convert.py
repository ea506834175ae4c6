"""`iclgd convert IN OUT --from F --to G`: parameters between the public notebooks' Haiku trees,
a PyTorch state_dict and our own .npz (iclgd/interop/convert.py has the name maps).

Formats and files:
    iclgd   .npz of save_params (carries its config)
    haiku   .npz with '/'-joined keys, or a pickle (.pkl) of a nested dict
    torch   .npz or .pkl of the state_dict; .pt/.pth through torch (if installed)
The config comes from an iclgd input file, else from --config (a JSON object of ModelConfig fields;
fields left out take their defaults) and --set key=value overrides.
"""
import json
import pickle

from refimpl.config import ModelConfig, apply_overrides, config_from_dict
from iclgd.interop.convert import (from_haiku, from_torch_state_dict, load_tree, save_tree, to_haiku,
                      to_torch_state_dict)
from refimpl.params import load_params, save_params

FORMATS = ("iclgd", "haiku", "torch")


def add_arguments(parser):
    parser.add_argument("input", metavar="IN")
    parser.add_argument("output", metavar="OUT")
    parser.add_argument("--from", dest="source", choices=FORMATS, required=True)
    parser.add_argument("--to", dest="target", choices=FORMATS, required=True)
    parser.add_argument("--config", help="JSON file of ModelConfig fields (not needed from iclgd)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. num_layers=2 weight_tied=true")
    parser.add_argument("--root", default=None,
                        help="Haiku top module: inferred on input when unique; 'transformer' on output")


def _config(args, from_file=None):
    if from_file is not None and args.config is None:
        cfg = from_file
    elif args.config is None:
        raise ValueError(f"--config: expected a JSON file of ModelConfig fields for --from {args.source}")
    else:
        with open(args.config) as f:
            cfg = config_from_dict(ModelConfig, json.load(f), "--config")
    return apply_overrides(cfg, args.set)


def _is_torch_file(path):
    return str(path).endswith((".pt", ".pth"))


def read(args):
    """(params, cfg) from the input file."""
    if args.source == "iclgd":
        params, cfg = load_params(args.input)
        return params, _config(args, cfg)
    cfg = _config(args)
    if args.source == "haiku":
        return from_haiku(load_tree(args.input), cfg, root=args.root), cfg
    if _is_torch_file(args.input):
        import torch
        state_dict = torch.load(args.input, map_location="cpu", weights_only=True)
    else:
        state_dict = load_tree(args.input)
    return from_torch_state_dict(state_dict, cfg), cfg


def write(args, params, cfg):
    if args.target == "iclgd":
        save_params(args.output, params, cfg)
        return
    if args.target == "haiku":
        tree = to_haiku(params, cfg, root=args.root or "transformer")
    else:
        tree = to_torch_state_dict(params, cfg)
        if _is_torch_file(args.output):
            import torch
            torch.save({k: torch.from_numpy(v) for k, v in tree.items()}, args.output)
            return
    if str(args.output).endswith(".npz"):
        save_tree(args.output, tree)
    else:
        with open(args.output, "wb") as f:
            pickle.dump(tree, f)


def run(args):
    try:
        params, cfg = read(args)
        write(args, params, cfg)
    except OSError as e:
        raise ValueError(f"{e.filename}: {e.strerror}") from None
    print(f"wrote {args.output} ({args.target}: {len(params)} parameters, "
          f"{sum(v.size for v in params.values())} numbers)")
    return 0
