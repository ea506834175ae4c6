"""numba-cuda training with nothing per step but kernel launches: DeviceTrainer, and the out-of-place
Adam that the functional `train_step` of kernels/numba/gpu.py uses.

DeviceTrainer is the numba-cuda counterpart of kernels/cupy/graph.py GraphTrainer: the parameters
and Adam moments are one flat device vector each, updated in place; the batch of step t is drawn on
the device from (seed, t) (kernels/numba/gpu_draw.py, the task stream of kernels/cupy/philox.py) or
given as device arrays; each step's per-layer losses and gradient norm land in a device log of
`log_capacity` rows. A step allocates nothing and never waits for the device: the host reads the log
back only when asked (`run`'s log_every, `losses()`), and at the latest every `log_capacity` steps.
Mirrors kernels/numba/gpu.py train_step step for step (the same kernels in the same order): the
parameters after n steps equal n calls of train_step on the same batches, bit for bit.

Kernels (built on first use): adam_out -- one thread per entry: p, m, v copied to new vectors and
updated there (kernels/numba/adam.py adam_element); record -- one thread per log entry: the
per-layer losses sums * mul / B and the norm sqrt(sum g^2) into the log's row.
"""
import math

import numpy as np
from numba import cuda

from kernels.numba import gpu
from kernels.numba.adam import adam_element, adam_hyper
from kernels.numba.gpu_draw import DeviceDraw
from kernels.numba.gpu_kernels import NORM_TPB, kernels, simulated
from refimpl.validate import check_positive_int

_KERNELS = {}


def step_kernels():
    """{"adam_out", "record"}, built on first use."""
    if _KERNELS:
        return _KERNELS
    element = adam_element.py_func if simulated() else adam_element

    @cuda.jit
    def adam_out(p, g, m, v, h, factor, p2, m2, v2):
        """p2, m2, v2 = Adam(p, m, v) with the gradient g * factor[0]; the inputs are not written."""
        i = cuda.grid(1)
        if i < p.shape[0]:
            p2[i] = p[i]
            m2[i] = m[i]
            v2[i] = v[i]
            element(p2, m2, v2, i, g[i] * factor[0], h)

    @cuda.jit
    def record(sums, mul, B, sumsq, log, row):
        """log[row, l] = sums[l] * mul / B (l < L), log[row, L] = sqrt(sumsq[0])."""
        l = cuda.grid(1)
        L = sums.shape[0]
        if l < L:
            log[row, l] = sums[l] * mul / B
        elif l == L:
            log[row, L] = math.sqrt(sumsq[0])

    _KERNELS.update(adam_out=adam_out, record=record)
    return _KERNELS


def adam_into(pv, g, m, v, t, adam_cfg, sumsq, factor):
    """New device vectors (params, m, v) after Adam step t with global-norm clipping of g; the
    inputs are left as they were. Leaves sum g^2 (float64) in sumsq[0]."""
    kernels()["norm"][1, NORM_TPB](g, float(adam_cfg.grad_clip), sumsq, factor)
    out = tuple(cuda.device_array_like(a) for a in (pv, m, v))
    n = pv.shape[0]
    step_kernels()["adam_out"][-(-n // 128), 128](pv, g, m, v, adam_hyper(adam_cfg, t, pv.dtype), factor,
                                                  *out)
    return out


class DeviceTrainer:
    """Online training of any numba-cuda model on device-drawn (or device-given) batches.

    params: a dict of the oracle's parameters (host or device arrays); cfg, adam_cfg: the model and
    the optimiser (refimpl.config); batch, seed, num_context, input_dim, input_range, weight_scale:
    the task stream of kernels/cupy/philox.py (SPEC 1.1); dtype: of the parameters and batches.
    """

    def __init__(self, params, cfg, adam_cfg, batch, seed, num_context=10, input_dim=10,
                 input_range=1.0, weight_scale=1.0, dtype=np.float32, log_capacity=1024):
        if cfg.token_dim != input_dim + 1:
            raise ValueError(f"cfg.token_dim: expected input_dim + 1 = {input_dim + 1}, got {cfg.token_dim}")
        self.cfg, self.adam_cfg, self.dtype = cfg, adam_cfg, np.dtype(dtype)
        self.batch = check_positive_int("batch", batch)
        self.capacity = check_positive_int("log_capacity", log_capacity)
        host = {k: np.asarray(gpu.to_numpy(v), dtype=self.dtype) for k, v in params.items()}
        self.vec = gpu._flat(host, cfg)  # (P,), checked against the config
        self.m = cuda.to_device(np.zeros(self.vec.shape, self.dtype))
        self.v = cuda.to_device(np.zeros(self.vec.shape, self.dtype))
        self.draw = DeviceDraw(seed, batch, num_context, input_dim, input_range, weight_scale, dtype)
        self.log = cuda.device_array((self.capacity, cfg.num_layers + 1), self.dtype)
        self.steps_done = 0
        self._logged = 0  # steps whose log rows were read back into self._host_log
        self._host_log = []

    def step(self, tokens=None, targets=None):
        """One Adam step on the batch drawn for this step (or on the given device tokens, targets)."""
        if tokens is None:
            tokens, targets = self.draw.draw(self.steps_done)
        else:
            if not (gpu._is_device(tokens) and gpu._is_device(targets)):
                raise ValueError("tokens, targets: expected device arrays (numba-cuda) or None to draw "
                                 f"on the device, got {type(tokens).__name__}, {type(targets).__name__}")
            tokens = gpu._device_tokens(tokens, self.cfg, self.dtype)  # shape and dtype checks only
            targets = gpu._device_vector(targets, tokens.shape[0], self.dtype, "targets")
        if self.steps_done - self._logged >= self.capacity:
            self._read_log()  # the log is full: the one wait in every log_capacity steps
        pl = gpu.launch_loss_grads(self.vec, tokens, targets, self.cfg)
        g = gpu.grads_of(pl)
        t = self.steps_done + 1
        gpu._adam_flat(self.vec, g, self.m, self.v, t, self.adam_cfg, pl.sumsq, pl.factor)  # in place
        sums, mul = gpu.loss_sums_of(pl)
        L = self.cfg.num_layers
        step_kernels()["record"][1, 32 * (1 + L // 32)](sums, self.dtype.type(mul), self.dtype.type(pl.B),
                                                       pl.sumsq, self.log, self.steps_done % self.capacity)
        self.steps_done = t

    def run(self, num_steps, log_every=0):
        """Take num_steps steps; returns [(step, loss)] every log_every steps (0: none), read back
        from the device log when the steps are done (or when the log fills)."""
        start = self.steps_done
        for _ in range(check_positive_int("num_steps", num_steps, minimum=0)):
            self.step()
        if not log_every:
            return []
        losses = self.losses()
        return [(s, float(losses[s - 1, -2])) for s in range(start + 1, self.steps_done + 1)
                if (s - start) % log_every == 0]

    def _read_log(self):
        rows = self.log.copy_to_host()
        for s in range(self._logged, self.steps_done):
            self._host_log.append(rows[s % self.capacity].copy())
        self._logged = self.steps_done

    def losses(self):
        """(steps done, L + 1): per-layer losses of each step's batch (before its update), then the
        gradient norm; waits for the device."""
        self._read_log()
        return np.array(self._host_log, dtype=self.dtype).reshape(-1, self.cfg.num_layers + 1)

    def loss(self):
        """The last step's loss (its batch, before the update); waits for the device."""
        return float(self.losses()[-1, -2])

    def synchronize(self):
        cuda.synchronize()

    def params(self):
        """The current parameters as a dict of NumPy arrays (waits for the device)."""
        return {k: v.copy() for k, v in gpu.unpack(self.vec.copy_to_host(), self.cfg).items()}

    def adam_state(self):
        return {"t": self.steps_done, "m": gpu.unpack(self.m.copy_to_host(), self.cfg),
                "v": gpu.unpack(self.v.copy_to_host(), self.cfg)}
