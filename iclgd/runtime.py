"""Process-level settings for long NumPy runs (called explicitly by the training loop and the
benchmarks; never at import). `tune_for_small_matrices()` applies both and reports what it did.

- A training step of the oracle allocates and frees dozens of temporaries of a few MB. With glibc's
  default settings the freed memory goes back to the kernel and every new array pays its page faults
  again, which costs more than the arithmetic. `keep_freed_memory` asks glibc to keep it.
- The oracle's matrix products are (B*T, 11) x (11, 11): too small to share between threads. A
  multi-threaded OpenBLAS spends its time waking threads, and far more when another process holds a
  core. `single_threaded_blas` sets NumPy's OpenBLAS to one thread.
"""
import re
import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from <malloc.h>
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

_DONE = {"malloc": None, "blas": None}


def keep_freed_memory(pad_bytes=256 << 20):
    """Keep up to `pad_bytes` of freed heap in the process (glibc only). Returns True if applied."""
    if _DONE["malloc"] is not None:
        return _DONE["malloc"]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
                      and libc.mallopt(M_TRIM_THRESHOLD, 2 * pad_bytes)
                      and libc.mallopt(M_TOP_PAD, pad_bytes))
        except (OSError, AttributeError):
            ok = False
    _DONE["malloc"] = ok
    return ok


def single_threaded_blas():
    """Set every loaded OpenBLAS to one thread. Returns True if one was found and set."""
    if _DONE["blas"] is not None:
        return _DONE["blas"]
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that it can be found below)
    ok = False
    try:
        with open("/proc/self/maps") as f:
            libs = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read())))
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                       "openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
            if hasattr(lib, symbol):
                getattr(lib, symbol)(1)
                ok = True
                break
    _DONE["blas"] = ok
    return ok


def tune_for_small_matrices():
    """Both settings above; returns {"malloc_keeps_freed_memory": bool, "blas_threads_1": bool}."""
    return {"malloc_keeps_freed_memory": keep_freed_memory(), "blas_threads_1": single_threaded_blas()}
