"""Process-level settings for long NumPy runs (called explicitly by the training loop and the
benchmarks; never at import).

A training step of the oracle allocates and frees dozens of temporaries of a few MB. With glibc's
default settings the freed memory goes back to the kernel and every new array pays its page faults
again, which costs more than the arithmetic. `keep_freed_memory` asks glibc to keep it.
"""
import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from <malloc.h>
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

_DONE = {"malloc": None}


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
