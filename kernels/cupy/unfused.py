"""The `cupy-unfused` backend: the oracle's own vectorised code on CuPy arrays (cuBLAS batched
products, one kernel per operation) for every function, including Adam. It is the baseline the
fused kernels of the `cupy` backend are measured against, and gives the oracle's numbers up to
the order of floating-point sums. Every computing function is the `numpy` backend's (the oracle
picks its array module from its inputs); only the array transfers and availability are CuPy's."""
from kernels.cupy.backend import asarray, availability, init_params, to_numpy  # noqa: F401
from kernels.numpy_backend import (adam_init, adam_update, loss_and_grads, model_backward,  # noqa: F401
                                   model_forward, mse_backward, mse_forward, train_step)

name = "cupy-unfused"
