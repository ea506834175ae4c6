"""Checkpoints of the training loop: everything it carries, and what it was started with.

One .npz per trained model (DIR/checkpoints/TAG_seedS.npz), written atomically (refimpl.atomic):
    param/<name>, adam_m/<name>, adam_v/<name>     the parameters and Adam's moments
    meta                                           JSON: step, adam_t, the Generator's state, the
                                                   curves so far and `identity`
`identity` is the run's whole resolved setup: experiment, model tag, seed, backend, the experiment's
config tree, the model config and the training config actually used. A resume whose identity differs
in any key but those in RESUMABLE (how long to train, how often to save, how many processes) is
refused with every differing key and both values: a run never mixes two setups.
"""
import json
import zipfile

import numpy as np

from refimpl.atomic import atomic_save

# keys of the flattened identity that may change between a run and its resumption; deep_layers
# names which models a run trains, not how one is trained, so a resume may add depths to it
RESUMABLE = ("train.steps", "train.checkpoint_every", "config.train.steps", "config.train.checkpoint_every",
             "config.deep_steps", "config.deep_layers", "config.workers")
SECTIONS = ("param", "adam_m", "adam_v")


def flatten(tree, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def identity_differences(saved, current, where="checkpoint"):
    """['key: WHERE A, this run B', ...] for every key that differs (RESUMABLE ones aside)."""
    a, b = flatten(json.loads(json.dumps(saved))), flatten(json.loads(json.dumps(current)))
    keys = sorted(set(a) | set(b))
    return [f"{k}: {where} {a.get(k, '(absent)')!r}, this run {b.get(k, '(absent)')!r}"
            for k in keys if k not in RESUMABLE and a.get(k, "(absent)") != b.get(k, "(absent)")]


def save_checkpoint(path, host_params, host_state, rng_state, curves, step, identity):
    """Write one checkpoint atomically (host arrays; state = {"t", "m", "v"})."""
    arrays = {f"param/{k}": v for k, v in host_params.items()}
    arrays.update({f"adam_m/{k}": v for k, v in host_state["m"].items()})
    arrays.update({f"adam_v/{k}": v for k, v in host_state["v"].items()})
    meta = {"step": int(step), "adam_t": int(host_state["t"]), "rng": rng_state, "curves": curves,
            "identity": identity}
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_save(path, lambda f: np.savez(f, **arrays))


def read_meta(path):
    """The checkpoint's meta dict (no arrays); ValueError naming the file when it is unreadable."""
    return _read(path, arrays=False)[0]


def load_checkpoint(path, identity):
    """(host params, {"t", "m", "v"} host state, rng state, curves, step); refuses another setup."""
    meta, part = _read(path, arrays=True)
    if "identity" not in meta:
        raise ValueError(f"checkpoint {path}: written without its full config (an older version), so a "
                         f"resume could mix two setups; start over with --force")
    diffs = identity_differences(meta["identity"], identity)
    if diffs:
        raise ValueError(f"checkpoint {path}: made with another setup, refusing to resume; differing: "
                         f"{'; '.join(diffs)}. Resume with the checkpoint's values, or start over with --force")
    state = {"t": meta["adam_t"], "m": part["adam_m"], "v": part["adam_v"]}
    return part["param"], state, meta["rng"], meta["curves"], meta["step"]


def _read(path, arrays):
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            part = ({pre: {k[len(pre) + 1:]: data[k] for k in data.files if k.startswith(pre + "/")}
                     for pre in SECTIONS} if arrays else None)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path}: unreadable ({type(e).__name__}: {e}); delete it, or start "
                         f"over with --force") from None
    if not isinstance(meta, dict) or not {"step", "adam_t", "rng", "curves"} <= set(meta):
        raise ValueError(f"checkpoint {path}: its meta lacks step/adam_t/rng/curves; delete it, or start "
                         f"over with --force")
    return meta, part
