"""Numba backends: numba-cpu (cpu.py) and numba-cuda (gpu.py). Importing the package first makes
sure that Numba's on-disk cache matches every source file of it (cache.py): no kernel is ever
loaded from a cache compiled from older sources."""
from kernels.numba.cache import invalidate_if_sources_changed

invalidate_if_sources_changed()
