"""The CUDA sources of kernels/cupy/cuda/*.cu as the host sees them: their text (headers inlined),
the templated kernels each defines, the NVRTC options, the kernels' parameter lists read from the
source, and two compiles that need no GPU: nvrtc_compile (as CuPy compiles) and nvcc_compile (plain
nvcc, as a profiler's source build). Re-exported by kernels/cupy/build.py.
"""
import os
import re

import numpy as np

CUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")

# source -> the templated kernels it defines (each instantiated for float and double)
KERNELS = {
    "tasks.cu": ("draw_tasks",),
    "model_step.cu": ("model_step", "model_step_finish"),
    "block.cu": ("block_forward", "block_backward", "block_add_partials"),
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


# ----------------------------------------------------------------------------------------------
def nvcc_compile(src_name, arch, workdir, dtypes=(np.float32, np.float64), nvcc="nvcc",
                 include_dir=CUDA_DIR, defines=()):
    """Compile `include_dir`/`src_name` (kernels/cupy/cuda/ by default) with plain nvcc (no NVRTC
    definitions: what a profiler's source build sees) to a cubin for sm_`arch`, its templates
    instantiated for `dtypes` by taking their addresses. Returns the cubin's path; ValueError with
    nvcc's output on failure."""
    import subprocess
    refs = ", ".join(f"(const void*)&{e}" for e in
                     (name_expressions(src_name, dtypes) if dtypes else ()))
    wrapper = os.path.join(workdir, src_name.replace(".cu", "_inst.cu"))
    with open(wrapper, "w") as f:
        f.write(f'#include "{src_name}"\n')
        if refs:
            f.write(f"const void* const instantiated[] = {{{refs}}};\n")
    cubin = wrapper.replace(".cu", f"_sm{arch}.cubin")
    cmd = [nvcc, "-std=c++17", f"-arch=sm_{arch}", "-cubin", f"-I{include_dir}", *defines, wrapper,
           "-o", cubin]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not os.path.exists(cubin) or os.path.getsize(cubin) == 0:
        raise ValueError(f"{src_name} (sm_{arch}): nvcc failed (exit {res.returncode}):\n"
                         f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return cubin


def nvrtc_compile(src_name, arch, dtypes=(np.float32, np.float64), defines=()):
    """Compile kernels/cupy/cuda/`src_name` to a cubin for sm_`arch` with NVRTC (cuda.bindings.nvrtc),
    as CuPy would. Returns {name expression: lowered name}; ValueError with the log on failure.
    Needs no GPU: only the NVRTC library (pip packages cuda-bindings and nvidia-cuda-nvrtc-cu12)."""
    from cuda.bindings import nvrtc

    def check(result, what, prog=None):
        err = result[0]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = ""
            if prog is not None:
                _, size = nvrtc.nvrtcGetProgramLogSize(prog)
                buf = b" " * size
                nvrtc.nvrtcGetProgramLog(prog, buf)
                log = buf.decode(errors="replace")
            raise ValueError(f"{src_name} (sm_{arch}): {what} failed: {err}\n{log}")
        return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)

    prog = check(nvrtc.nvrtcCreateProgram(source(src_name).encode(), src_name.encode(), 0, [], []),
                 "nvrtcCreateProgram")
    try:
        exprs = name_expressions(src_name, dtypes)
        for e in exprs:
            check(nvrtc.nvrtcAddNameExpression(prog, e.encode()), f"nvrtcAddNameExpression({e})")
        opts = [o.encode() for o in compile_options(arch) + tuple(defines)]
        check(nvrtc.nvrtcCompileProgram(prog, len(opts), opts), "nvrtcCompileProgram", prog)
        size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        if not size:
            raise ValueError(f"{src_name} (sm_{arch}): empty cubin")
        lowered = {}
        for e in exprs:
            name = check(nvrtc.nvrtcGetLoweredName(prog, e.encode()), f"nvrtcGetLoweredName({e})")
            lowered[e] = name.decode() if isinstance(name, bytes) else str(name)
        return lowered
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
