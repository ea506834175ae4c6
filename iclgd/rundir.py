"""The output folder of `iclgd run`: one run at a time, one experiment and config per folder.

    default              runs/EXPERIMENT (ignored by git); the committed results/ only on request
    lock                 DIR/.iclgd.lock, an exclusive flock held for the whole run (and by
                         `iclgd plot`), the holder's PID written in it, removed on release: a
                         second run on DIR is refused with that PID (the kernel drops the lock
                         when the holder dies, even by kill -9); its holder deletes temporary
                         files a killed writer left
    results.json there   of another experiment, or of another config (keys other than those a
                         resume may change): refused unless --force
    checkpoints there    a fresh run (no --resume) over them is refused unless --force; with
                         --force they are deleted first, so no stale one is resumed later
"""
import contextlib
import json
import os

from iclgd.checkpoint import identity_differences, read_meta
from iclgd.results import RESULTS_FILE

LOCK_FILE = ".iclgd.lock"
CHECKPOINTS = "checkpoints"


def default_out(experiment):
    return os.path.join("runs", experiment)


@contextlib.contextmanager
def locked(out, arg="--out"):
    """Hold DIR's lock for the block; ValueError naming the holder's PID when another run has it
    (`arg`: how the command names the folder). The lock file is removed on release, while still
    locked; a taker checks that the file it locked is still the one at the path (else retries)."""
    prepare(out, arg)
    path = os.path.join(out, LOCK_FILE)
    f = _take(path, out, arg)
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        remove_stale_temporaries(out)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        f.close()  # closing drops the lock


def _take(path, out, arg):
    import fcntl
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ValueError(f"{arg} {out}: in use by another run (PID {holder}); wait for it to finish"
                             f"{' or choose another --out' if arg == '--out' else ''}") from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()  # the holder removed it as we opened it: take the new one


def remove_stale_temporaries(out):
    """Delete the temporary files (refimpl.atomic's `.NAME.<random>.tmp`) that a killed writer left in
    DIR and DIR/checkpoints: safe under the lock, which no other writer of DIR holds."""
    for folder in (out, os.path.join(out, CHECKPOINTS)):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, name))


def prepare(out, arg="--out"):
    """Create DIR (and its parents); a one-line error when it is a file or cannot be written."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{arg} {out}: expected a folder, got a file")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{arg} {out}: cannot create the folder ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{arg} {out}: the folder is not writable")


def checkpoint_files(out):
    folder = os.path.join(out, CHECKPOINTS)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.endswith((".npz", ".json")) and not n.startswith("."))


def check_out(out, experiment, config, resume, force):
    """Refuse (ValueError) an --out that holds another run's work; see the module docstring."""
    _check_results(out, experiment, config, force)
    if resume or not checkpoint_files(out):
        return
    if not force:
        steps = last_checkpoints(out) or "GD++ fits"
        raise ValueError(f"--out {out}: holds checkpoints ({steps}); pass --resume to continue them, or "
                         f"--force to delete them and start over")
    for p in checkpoint_files(out):
        os.remove(p)


def _step(path):
    try:
        return read_meta(path)["step"]
    except ValueError:
        return "? (unreadable)"


def _check_results(out, experiment, config, force):
    path = os.path.join(out, RESULTS_FILE)
    if force or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
        old_experiment, old_config = old["experiment"], old["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--out {out}: its {RESULTS_FILE} is unreadable ({type(e).__name__}); choose "
                         f"another --out, or pass --force to overwrite it") from None
    if old_experiment != experiment:
        raise ValueError(f"--out {out}: holds results of experiment {old_experiment!r}, not "
                         f"{experiment!r}; choose another --out, or pass --force to overwrite them")
    diffs = [d.split(".", 1)[1] for d in identity_differences({"config": old_config}, {"config": config}, "there")]
    if diffs:
        raise ValueError(f"--out {out}: holds {experiment} results of another config ({'; '.join(diffs)}); "
                         f"choose another --out, or pass --force to overwrite them")


def last_checkpoints(out):
    """'lsa1_seed0.npz at step 300, ...' for the interruption message; '' when there are none."""
    return ", ".join(f"{os.path.basename(p)} at step {_step(p)}"
                     for p in checkpoint_files(out) if p.endswith(".npz"))
