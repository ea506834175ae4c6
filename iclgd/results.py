"""results.json: what an experiment writes and a plot reads (nothing else is needed to re-plot).

Keys (every experiment): experiment, figure, config (the full resolved config), seeds, backend,
versions, quick, runtime_s, steps_run, curves ({"step": [...], name: [...]} or one such dict per
model variant), final ({name: number}, or per variant), per_seed (the same per seed), notes. Runs since the Adam settings are recorded also hold
resolved ({"adam": AdamConfig as a dict}, per variant for fig3): lr and grad_clip as used.
status: "complete", or "diverged" with `diverged` = {step, tensor, model_tag, seed, checkpoint,
checkpoint_step} and the curves up to there (files written before status existed are complete).
Written atomically (refimpl.atomic): a unique temporary file in the same folder, fsync, a rename.
"""
import json
import os

import numpy as np

from refimpl.atomic import atomic_write

RESULTS_FILE = "results.json"
REQUIRED_KEYS = ("experiment", "figure", "config", "seeds", "backend", "versions", "quick",
                 "runtime_s", "steps_run", "curves", "final", "per_seed", "notes")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def read_status(path):
    """The status of the results file at `path`: "complete", "diverged", or None if unreadable/absent."""
    try:
        with open(path) as f:
            return json.load(f).get("status", "complete")
    except (OSError, ValueError, AttributeError):
        return None


def write_results(out_dir, results, name=RESULTS_FILE):
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ValueError(f"results: missing key(s) {missing}; required: {list(REQUIRED_KEYS)}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    text = json.dumps(_jsonable(results), indent=1) + "\n"  # serialised before the file is touched
    with atomic_write(path, "w") as f:
        f.write(text)
    return path


def read_results(out_dir):
    path = os.path.join(out_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"DIR: expected a folder holding {RESULTS_FILE}, found none at {path}")
    try:
        with open(path) as f:
            results = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(results).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; required: {list(REQUIRED_KEYS)}")
    return results


def null_finals(results):
    """The keys of `final` (per variant too) that hold null: a value that was not finite."""
    final = results.get("final") or {}
    nested = all(isinstance(v, dict) for v in final.values()) and final
    groups = final.items() if nested else [(None, final)]
    return [f"final[{g!r}][{k!r}]" if g else f"final[{k!r}]"
            for g, values in groups for k, v in values.items() if v is None]
