"""versions(): the core dependencies' own versions; the optional frameworks from the package
metadata without importing them, unless the process imported them already."""
import importlib.metadata
import subprocess
import sys

from iclgd.versions import versions


def test_optional_frameworks_are_not_imported_to_record_their_versions():
    code = ("import sys; from iclgd.versions import versions; v = versions(); "
            "print(sorted(m for m in ('jax', 'torch', 'cupy') if m in sys.modules)); print(v['numpy'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    import numpy
    assert out[1] == numpy.__version__


def test_an_installed_framework_is_named_with_its_version():
    v = versions()
    for module, dist in (("jax", "jax"), ("torch", "torch")):
        try:
            expected = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            assert v[module] == "not installed" or module in sys.modules
            continue
        assert v[module].startswith(expected)
