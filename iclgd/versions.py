"""Versions of the project and of its dependencies, recorded in every results and benchmark file."""
import importlib
import platform


def _version(module):
    try:
        return importlib.import_module(module).__version__
    except Exception as e:  # an optional dependency may fail in any way on import
        return f"not importable ({type(e).__name__})"


def versions():
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for m in ("numpy", "scipy", "matplotlib", "numba", "tqdm", "cupy", "jax", "torch"):
        out[m] = _version(m)
    try:
        from importlib.metadata import version
        out["iclgd"] = version("iclgd")
    except Exception:
        out["iclgd"] = "not installed (running from a source tree)"
    return out
