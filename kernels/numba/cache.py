"""Numba's on-disk cache, kept valid across this package's files.

Numba (`@njit(cache=True)`) stores each compiled kernel in `__pycache__` beside its source and
reuses it while *that* file is unchanged; a kernel that calls functions of other files
(cpu.task_kernel calls model.py, which calls ops.py) would keep stale machine code after an edit of
those. `invalidate_if_sources_changed()` keeps one stamp, a hash of every source file of this
package with the Python and Numba versions, and deletes the cached kernels when it differs, so the
next call recompiles them. kernels/numba/__init__.py calls it before any kernel can be loaded.

`missing_kernels(dispatchers)` names the kernels that have no cached machine code yet (the first
run compiles them, once).
"""
import glob
import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STAMP_NAME = "sources.sha256"


def sources_digest(folder=HERE):
    """sha256 over this package's *.py files (name and bytes, in name order), Python and Numba."""
    import numba
    h = hashlib.sha256(f"python {sys.version_info[:3]} numba {numba.__version__}\n".encode())
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _probe():
    return 0


def cache_folder():
    """Where Numba caches the kernels of this package's files: asked of Numba itself, through an
    uncompiled cached dispatcher of a function of this file (__pycache__ beside the sources, or
    NUMBA_CACHE_DIR's folder for them, or the user-wide cache when __pycache__ is not writable)."""
    from numba import njit
    return njit(cache=True)(_probe)._cache.cache_path


def invalidate_if_sources_changed(folder=HERE):
    """Delete the cached kernels (*.nbi, *.nbc) when the sources' stamp differs from the stored one;
    returns the number of files deleted. Never raises for an unwritable cache (Numba then compiles
    in memory anyway)."""
    cache = cache_folder()
    stamp = os.path.join(cache, STAMP_NAME)
    digest = sources_digest(folder)
    try:
        with open(stamp) as f:
            if f.read().strip() == digest:
                return 0
    except OSError:
        pass
    removed = 0
    try:
        os.makedirs(cache, exist_ok=True)
        for path in glob.glob(os.path.join(cache, "*.nbi")) + glob.glob(os.path.join(cache, "*.nbc")):
            os.remove(path)
            removed += 1
        tmp = f"{stamp}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(digest + "\n")
        os.replace(tmp, stamp)
    except OSError:
        pass
    return removed


def missing_kernels(dispatchers):
    """Names of the `@njit(cache=True)` dispatchers without a cache index on disk yet."""
    missing = []
    for d in dispatchers:
        cache = getattr(d, "_cache", None)
        path = getattr(cache, "cache_path", None)
        mod = d.py_func.__module__.rsplit(".", 1)[-1]
        if not path or not glob.glob(os.path.join(path, f"{mod}.{d.py_func.__name__}-*.nbi")):
            missing.append(f"{mod}.{d.py_func.__name__}")
    return missing
