"""results.json: what an experiment writes and a plot reads (nothing else is needed to re-plot).

Keys (every experiment): experiment, figure, config (the full resolved config), seeds, backend,
versions, quick, runtime_s, steps_run, curves ({"step": [...], name: [...]} or one such dict per
model variant), final ({name: number}, or per variant), per_seed (the same per seed), notes. Runs since the Adam settings are recorded also hold
resolved ({"adam": AdamConfig as a dict}, per variant for fig3): lr and grad_clip as used.
Written atomically: a temporary file in the same folder, then a rename.
"""
import json
import os

import numpy as np

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


def write_results(out_dir, results):
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ValueError(f"results: missing key(s) {missing}; required: {list(REQUIRED_KEYS)}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RESULTS_FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_jsonable(results), f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_results(out_dir):
    path = os.path.join(out_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"DIR: expected a folder holding {RESULTS_FILE}, found none at {path}")
    with open(path) as f:
        results = json.load(f)
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; required: {list(REQUIRED_KEYS)}")
    return results
