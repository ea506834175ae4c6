"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

    with atomic_write(path, "wb") as f:      a unique temporary file beside `path` (same folder,
        f.write(...)                          so the rename stays on one file system); on success
                                              it is flushed, fsynced and renamed over `path`; on any
                                              error (a full disk, Ctrl-C) it is removed and `path`
                                              is left as it was.
Unique names (tempfile.mkstemp) let two writers of one folder never share a temporary file.
"""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a unique temporary file for writing; replace `path` with it when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file an ordinary mode
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_save(path, save, mode="wb"):
    """Call save(file object) inside atomic_write(path): for writers that take a file, such as
    numpy.savez (given a file object it never appends '.npz' to the name) or json.dump."""
    with atomic_write(path, mode) as f:
        save(f)
    return os.fspath(path)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
