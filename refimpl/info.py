"""`iclgd info`: versions of the project and its dependencies, and which backends can run."""
import importlib
import platform


def add_arguments(parser):
    pass


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


def run(args):
    from kernels import availability, backend_names
    print("versions:")
    for k, v in versions().items():
        print(f"  {k:12s} {v}")
    print("backends:")
    for name in backend_names():
        ok, reason = availability(name)
        print(f"  {name:12s} {'available' if ok else 'unavailable'}: {reason}")
    return 0
