"""float32 data is computed in float32: the numba-cpu building blocks that mix integer counts or
literals into their arithmetic (LayerNorm's means, GELU and its derivative, the one-block kernel's
softmax, LayerNorm and MLP, the linear-attention kernel's MLP) must not widen to float64 (in Numba, float32 / int64 and
int64 * float32 are float64). Checked on the compiled code:
no `fpext` (float -> double) in the LLVM IR of their float32 versions, and no double-precision
instruction at all in the PTX of numba-cuda's float32 warp-per-task kernels."""
import numpy as np
import pytest
from numba import njit

from kernels.numba import front, ops
from kernels.numba import lsa_mlp
from kernels.numba import query_block_kernels as qbk


def _fresh(fn):
    """An uncached copy of an @njit function (inspection of cached code is disabled)."""
    return njit(fn.py_func, fastmath=fn.targetoptions.get("fastmath", False),
                parallel=fn.targetoptions.get("parallel", False),
                error_model=fn.targetoptions.get("error_model", "python"))


f = np.zeros(64, np.float32)


def _one_block(backward):
    """Arguments of query_block_kernels.block_forward / block_backward: two heads of key size 3,
    D = 4, F = 6, S = 4 keys, 16 lanes (float32), softmax, LayerNorm and MLP on."""
    z = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    c32 = np.float32
    X, V = z(5, 4, 16), z(qbk.num_rows(2), 6, 16)
    W = (z(4, 6), z(4, 6), z(4, 6), z(6, 4))
    flags = (True, c32(1.7), c32(0.5), False, c32(3.0), True, True, c32(4.0))
    if backward:
        return lambda c: (X, 4, 2, *W, z(4), z(4, 6), z(6, 4), *flags, c, V, z(4, 6, 16), z(4, 6, 16),
                          z(4, 6, 16), z(6, 4, 16), z(4, 6, 16), z(5, 6, 16))
    return lambda c: (X, 4, 2, *W, z(4), z(4), z(4, 6), z(6), z(6, 4), z(4), *flags, c, V)


def _lsa_mlp(backward):
    """Arguments of lsa_mlp.mlp_forward / mlp_backward: 3 rows, D = 4, F = 6, 16 lanes (float32);
    GELU's constants as the kernel reads them (float32 scalars, not the Python floats of a call)."""
    z = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    g = lambda c: tuple(np.float32(x) for x in ops.gelu_consts(c))  # noqa: E731
    if backward:
        return lambda c: (z(3, 4, 16), 3, z(6, 4), z(4, 6), np.float32(0.5), z(3, 6, 16), z(3, 6, 16),
                          z(3, 6, 16), z(3, 4, 16), z(3, 4, 16), z(3, 6, 16), z(4, 6, 16), z(1, 6, 16),
                          z(6, 4, 16), z(1, 4, 16), g(c))
    return lambda c: (z(3, 4, 16), 3, z(4, 6), z(6), z(6, 4), z(4), np.float32(0.5), z(3, 6, 16), z(3, 6, 16),
                      z(3, 6, 16), z(3, 4, 16), g(c))


CASES = {
    "layernorm_fwd": (ops.layernorm_fwd, lambda c: (f, 0, 2, 5, f, 0, 0, f, 0, f, 0, f, 0, c)),
    "layernorm_bwd": (ops.layernorm_bwd, lambda c: (f, 0, 2, 5, f, 0, f, 0, f, 0, f, 0, 0, f, 0, 0, c)),
    "gelu_fwd": (ops.gelu_fwd, lambda c: (f, 0, 8, f, 0, c)),
    "gelu_bwd": (ops.gelu_bwd, lambda c: (f, 0, f, 0, 8, c)),
    "front.gelu_kernel": (front.gelu_kernel, lambda c: (f, f.copy(), f.copy(), c)),
    "front.gelu_backward_kernel": (front.gelu_backward_kernel, lambda c: (f, f.copy(), f.copy(), f.copy(), c)),
    "query_block.block_forward": (qbk.block_forward, _one_block(False)),
    "query_block.block_backward": (qbk.block_backward, _one_block(True)),
    "lsa_mlp.mlp_forward": (lsa_mlp.mlp_forward, _lsa_mlp(False)),
    "lsa_mlp.mlp_backward": (lsa_mlp.mlp_backward, _lsa_mlp(True)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float32_blocks_never_widen_to_float64(name):
    fn, args = CASES[name]
    cst = np.ones(ops.NUM_CONSTS, np.float32)
    fresh = _fresh(fn)
    fresh(*args(cst))
    irs = list(fresh.inspect_llvm().values())
    assert len(irs) == 1
    widened = [line.strip() for line in irs[0].splitlines() if "fpext float" in line]
    assert widened == [], f"{name}: float32 widened to float64: {widened[:3]}"


# The numba-cuda warp-per-task kernels (kernels/numba/gpu_warp.py, gpu_warp_block.py), checked on
# their PTX: the float32 kernel may hold no double-precision register, load, store or arithmetic
# (".f64"). Compiled for sm_90 in a subprocess without the simulator (the device query that
# compile_ptx makes is stubbed: no driver is needed, only NVVM).
CUDA_PTX_SCRIPT = """
import re
from types import SimpleNamespace
import numba.cuda.dispatcher as dispatcher
from numba import cuda, types as nt
dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(9, 0))
from kernels.numba import gpu_warp, gpu_warp_block
a1, a3, i1 = nt.Array(nt.float32, 1, "C"), nt.Array(nt.float32, 3, "C"), nt.Array(nt.int64, 1, "C")
sig = (a3, a1, a1, i1, a1, nt.int64, nt.int64, a1)
for name, k in (("gpu_warp", gpu_warp.warp_step_kernel("float32")),
                ("gpu_warp_block", gpu_warp_block.block_step_kernel("float32"))):
    ptx, _ = cuda.compile_ptx(k.py_func, sig, cc=(9, 0))
    f64 = [line.strip() for line in ptx.splitlines() if re.search(r"[.]f64(?![0-9])", line)]
    print(name, "ptx", len(ptx), "f64", len(f64), f64[:3])
"""


@pytest.mark.slow
def test_float32_warp_kernels_never_use_float64():
    import os
    import subprocess
    import sys
    try:
        import numba_cuda  # noqa: F401
    except ImportError:
        pytest.skip("numba-cuda is not installed")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", CUDA_PTX_SCRIPT], cwd=root, capture_output=True,
                       text=True, timeout=900, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"))
    if r.returncode != 0 and "NVVM" in r.stdout + r.stderr and "not found" in r.stdout + r.stderr:
        pytest.skip("NVVM (libnvvm from the cu12 extra) not found")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    lines = [line for line in r.stdout.splitlines() if " ptx " in line]
    assert len(lines) == 2, r.stdout
    for line in lines:
        assert " f64 0 " in line, f"float32 kernel uses float64: {line}"
