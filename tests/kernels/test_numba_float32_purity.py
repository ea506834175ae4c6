"""float32 data is computed in float32: the numba-cpu building blocks that mix integer counts or
literals into their arithmetic (LayerNorm's means, GELU and its derivative) must not widen to
float64 (in Numba, float32 / int64 and int64 * float32 are float64). Checked on the compiled code:
no `fpext` (float -> double) in the LLVM IR of their float32 versions."""
import numpy as np
import pytest
from numba import njit

from kernels.numba import front, ops


def _fresh(fn):
    """An uncached copy of an @njit function (inspection of cached code is disabled)."""
    return njit(fn.py_func, fastmath=fn.targetoptions.get("fastmath", False),
                parallel=fn.targetoptions.get("parallel", False))


f = np.zeros(64, np.float32)
CASES = {
    "layernorm_fwd": (ops.layernorm_fwd, lambda c: (f, 0, 2, 5, f, 0, 0, f, 0, f, 0, f, 0, c)),
    "layernorm_bwd": (ops.layernorm_bwd, lambda c: (f, 0, 2, 5, f, 0, f, 0, f, 0, f, 0, 0, f, 0, 0, c)),
    "gelu_fwd": (ops.gelu_fwd, lambda c: (f, 0, 8, f, 0, c)),
    "gelu_bwd": (ops.gelu_bwd, lambda c: (f, 0, f, 0, 8, f, 0, c)),
    "front.gelu_kernel": (front.gelu_kernel, lambda c: (f, f.copy(), f.copy(), c)),
    "front.gelu_backward_kernel": (front.gelu_backward_kernel, lambda c: (f, f.copy(), f.copy(), f.copy(), c)),
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
