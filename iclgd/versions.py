"""Versions of the project and of its dependencies, recorded in every results and benchmark file.

The core dependencies are imported (a run has imported them already) and report their own
__version__. The optional frameworks (CuPy, JAX, PyTorch) are looked up in the installed package
metadata without importing them: importing JAX and PyTorch costs seconds, and a run that does not
use them should not pay that. Their entries then say "installed" or "not installed"."""
import importlib
import platform
import sys

CORE = ("numpy", "scipy", "matplotlib", "numba", "tqdm")
# optional module -> the distribution names that provide it, in the order tried
OPTIONAL = {"cupy": ("cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy"), "jax": ("jax",), "torch": ("torch",)}


def _version(module):
    try:
        return importlib.import_module(module).__version__
    except Exception as e:  # a dependency may fail in any way on import
        return f"not importable ({type(e).__name__})"


def _installed(distributions):
    from importlib.metadata import PackageNotFoundError, version
    for name in distributions:
        try:
            return f"{version(name)} ({name}, installed; not imported by this run)"
        except PackageNotFoundError:
            continue
    return "not installed"


def versions():
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for m in CORE:
        out[m] = _version(m)
    for m, dists in OPTIONAL.items():  # imported already (a benchmark of the peers): its own version
        out[m] = _version(m) if m in sys.modules else _installed(dists)
    try:
        from importlib.metadata import version
        out["iclgd"] = version("iclgd")
    except Exception:
        out["iclgd"] = "not installed (running from a source tree)"
    return out
