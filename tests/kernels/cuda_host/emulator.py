"""Build and call the CPU emulation of the CUDA kernels (emu_prelude.h): each kernels/cupy/cuda/*.cu
source, with its dynamic shared memory declaration pointed at the emulator's per-block buffer, is
compiled by g++ together with one extern "C" launcher per kernel and dtype, generated from the
kernel's signature. Arguments are the tuples kernels/cupy/build.py builds for CuPy, with NumPy
arrays in place of device arrays."""
import ctypes
import os
import re
import shutil
import subprocess

import numpy as np

from kernels.cupy import build as cb

HERE = os.path.dirname(os.path.abspath(__file__))
C_ARG = {"int": ctypes.c_int, "unsigned int": ctypes.c_uint, "unsigned long long": ctypes.c_ulonglong,
         "double": ctypes.c_double}


def emulated_source(src):
    text = cb.source(src)
    text = re.sub(r"extern __shared__ __align__\(16\) unsigned char (\w+)\[\];",
                  r"unsigned char* \1 = emu_dynamic_smem;", text)
    text = re.sub(r"extern __shared__ double (\w+)\[\];", r"double* \1 = (double*)emu_dynamic_smem;", text)
    assert "extern __shared__" not in text, f"{src}: an unhandled dynamic shared memory declaration"
    lines = [f'#include "{os.path.join(HERE, "emu_prelude.h")}"', text]
    for kernel in cb.KERNELS[src]:
        sig = cb.kernel_signature(src, kernel)
        for real in ("float", "double"):
            params = ", ".join(f"{t.replace('real', real)} {n}" for t, n in sig)
            names = ", ".join(n for _, n in sig)
            lines.append(f'extern "C" void emu_{kernel}_{real}(unsigned grid, unsigned block, '
                         f'unsigned long long smem, {params}) {{\n'
                         f'    emu_launch(grid, block, smem, [=]() {{ {kernel}<{real}>({names}); }});\n}}')
    return "\n".join(lines) + "\n"


class Emulator:
    """kernels by name: emu(src, kernel, dtype, defines)((grid,), (block,), args, shared_mem=...).
    Each source is built once without defines (up front) and once per set of -D options asked
    for (on first use), as NVRTC would compile it with those options."""

    def __init__(self, workdir):
        self.cxx = shutil.which("g++")
        if self.cxx is None:
            raise RuntimeError("g++ not found")
        self.workdir = workdir
        self.libs = {}
        for src in cb.KERNELS:
            self.lib(src, ())

    def lib(self, src, defines):
        key = (src, tuple(defines))
        if key not in self.libs:
            tag = f"_{len(self.libs)}" if defines else ""
            cpp = os.path.join(self.workdir, src.replace(".cu", f"_emu{tag}.cpp"))
            so = cpp.replace(".cpp", ".so")
            with open(cpp, "w") as f:
                f.write(emulated_source(src))
            res = subprocess.run([self.cxx, "-O1", "-std=c++20", "-shared", "-fPIC", "-pthread",
                                  "-ffp-contract=off", *defines, cpp, "-o", so],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"g++ failed on the emulated {src}:\n{res.stderr[-4000:]}")
            self.libs[key] = ctypes.CDLL(so)
        return self.libs[key]

    def __call__(self, src, kernel, dtype, defines=()):
        real = cb.real_type(dtype)
        fn = getattr(self.lib(src, defines), f"emu_{kernel}_{real}")
        sig = cb.kernel_signature(src, kernel)

        def launch(grid, block, args, shared_mem=0):
            if len(args) != len(sig):
                raise TypeError(f"{kernel}: {len(args)} arguments for {len(sig)} parameters")
            cargs = []
            for (ctype, name), a in zip(sig, args):
                if ctype.endswith("*"):
                    if isinstance(a, np.ndarray):
                        want = {"real*": np.dtype(dtype), "unsigned int*": np.dtype(np.uint32),
                                "int*": np.dtype(np.int32), "double*": np.dtype(np.float64)}[ctype]
                        if a.dtype != want or not a.flags.c_contiguous:
                            raise TypeError(f"{kernel}.{name}: expected contiguous {want}, got "
                                            f"{a.dtype} contiguous={a.flags.c_contiguous}")
                        cargs.append(ctypes.c_void_p(a.ctypes.data))
                    elif type(a) is np.uint64 and a == 0:
                        cargs.append(ctypes.c_void_p(None))
                    else:
                        raise TypeError(f"{kernel}.{name}: pointer parameter given {type(a).__name__}")
                else:
                    if type(a) is not {"int": np.int32, "unsigned int": np.uint32,
                                       "unsigned long long": np.uint64, "double": np.float64}[ctype]:
                        raise TypeError(f"{kernel}.{name}: {ctype} given {type(a).__name__}")
                    cargs.append(C_ARG[ctype](a.item()))
            fn(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), ctypes.c_ulonglong(shared_mem), *cargs)
        return launch
