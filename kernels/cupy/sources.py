"""The CUDA sources of kernels/cupy/cuda/*.cu as the host sees them: their text (headers inlined),
the templated kernels each defines, the NVRTC options, the kernels' parameter lists read from the
source. Re-exported by kernels/cupy/build.py (whose nvrtc_compile compiles them without a GPU).
"""
import os
import re

import numpy as np

CUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")

# source -> the templated kernels it defines (each instantiated for float and double)
KERNELS = {
    "tasks.cu": ("draw_tasks",),
    "model_step.cu": ("model_step",),
    "block.cu": ("block_forward", "block_backward"),
    "adam.cu": ("adam_sumsq", "adam_apply"),
}
REAL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def source(name):
    """The text of kernels/cupy/cuda/`name` with its local #include "x.cuh" headers inlined (once each),
    so that the text handed to NVRTC (and CuPy's compile cache key) is the whole program."""
    if name not in KERNELS:
        raise ValueError(f"name: expected one of {sorted(KERNELS)}, got {name!r}")
    return _inline(name, set())


def _inline(name, seen):
    with open(os.path.join(CUDA_DIR, name)) as f:
        text = f.read()
    out = []
    for line in text.splitlines():
        m = re.match(r'\s*#include "([\w.]+)"', line)
        if m:
            if m.group(1) not in seen:
                seen.add(m.group(1))
                out.append(_inline(m.group(1), seen))
        elif line.strip() != "#pragma once":
            out.append(line)
    return "\n".join(out) + "\n"


def compile_options(arch=None):
    """NVRTC options as CuPy's RawModule passes them (it adds -arch=sm_XX and -ftz=true itself)."""
    return ("-std=c++17",) + ((f"-arch=sm_{arch}", "-ftz=true") if arch is not None else ())


def name_expressions(src_name, dtypes=(np.float32, np.float64)):
    return [f"{k}<{REAL_TYPES[np.dtype(dt)]}>" for k in KERNELS[src_name] for dt in dtypes]


def real_type(dtype):
    dt = np.dtype(dtype)
    if dt not in REAL_TYPES:
        raise ValueError(f"dtype: expected float32 or float64, got {dt}")
    return REAL_TYPES[dt]


# ----------------------------------------------------------------------------------------------
def kernel_signature(src, kernel_name):
    """[(C type, name)] of the parameters of `kernel_name` in kernels/cupy/cuda/`src`, macros expanded,
    `const` and `__restrict__` dropped (pointer types end in '*')."""
    text = source(src)
    for name, body in re.findall(r"#define (\w+_ARGS)\s*\\\n((?:.*\\\n)*.*)\n", text):
        text = text.replace(name, body.replace("\\\n", " "))
    text = re.sub(r"//[^\n]*", "", text)
    m = re.search(r"__global__ void " + kernel_name + r"\s*\((.*?)\)\s*\{", text, re.S)
    if m is None:
        raise ValueError(f"kernel_name: {kernel_name!r} is not a kernel of {src}")
    params = []
    for p in m.group(1).split(","):
        p = p.replace("__restrict__", "").replace("const ", "").split()
        params.append((" ".join(p[:-1]) + ("*" if p[-1].startswith("*") else ""), p[-1].lstrip("*")))
    return params
