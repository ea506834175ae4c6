"""Online training of an attention-only model on device-drawn tasks with the `cupy` backend's
model_step.cu launch, captured once as a CUDA graph (GraphTrainer), and the device's task draw
(draw_tasks: Philox, tasks.cu; its host mirror is kernels.cupy.philox.linear_regression_tasks).
"""
import numpy as np

from kernels.cupy import build as cb
from kernels.cupy.backend import StepBuffers, _cp, fused_path, kernel, to_numpy


class GraphTrainer:
    """Online training on device-drawn tasks (SPEC 1.1), one model_step launch per step, captured
    once as a CUDA graph and replayed; nothing crosses to the host except logged losses.

    The batch of step t (t = Adam steps done so far, kept on the device) is drawn with Philox from
    (seed, t), so the run is reproducible and independent of the graph: `use_graph=False` launches
    the same kernel eagerly and gives the same numbers. `specialize` compiles model_step.cu for
    this model's shapes (constant loop bounds; the same numbers as the generic build).
    """

    def __init__(self, params, cfg, adam_cfg, batch, seed, num_context=10, input_dim=10,
                 input_range=1.0, weight_scale=1.0, dtype=np.float32, use_graph=True,
                 specialize=True):
        cp = _cp()
        if fused_path(cfg) != "model_step":
            raise ValueError(f"cfg: GraphTrainer needs an attention-only model "
                             f"({cb.model_step_unsupported(cfg)} is not fused in one launch)")
        if cfg.token_dim != input_dim + 1:
            raise ValueError(f"cfg.token_dim: expected input_dim + 1 = {input_dim + 1}, got {cfg.token_dim}")
        self.cfg, self.adam_cfg, self.dtype = cfg, adam_cfg, np.dtype(dtype)
        self.draw = (int(seed), int(num_context), int(input_dim), float(input_range), float(weight_scale))
        self.stream = cp.cuda.Stream(non_blocking=True)
        # Every buffer is made and filled on self.stream, the stream the step runs on: a
        # non-blocking stream does not wait for the legacy default stream, so a vector written
        # there could still be in flight when the first launch reads it. The device is
        # synchronised first for what the caller queued on other streams (the parameters).
        cp.cuda.Device().synchronize()
        with self.stream:
            self.buf = StepBuffers(cfg, batch, num_context + 1, dtype, d_draw=input_dim,
                                   specialize=specialize)
            self.vec = cb.pack({k: cp.asarray(v) for k, v in params.items()}, cfg, cp).astype(dtype)  # (P,)
            self.m = cp.zeros_like(self.vec)
            self.v = cp.zeros_like(self.vec)
            self.step_dev = cp.zeros(1, cp.int32)
        self.graph = None
        self.steps_done = 0
        # warm-up (compiles and loads the kernel): gradients only, the state is not touched
        self._launch(apply=0)
        self.stream.synchronize()
        if use_graph:
            with self.stream:
                self.stream.begin_capture()
                self._launch(apply=1)
                self.graph = self.stream.end_capture()
            self.graph.upload(self.stream)

    def _launch(self, apply):
        self.buf.launch_step(self.vec, None, None, self.draw, None, apply, self.m, self.v,
                             self.step_dev, self.adam_cfg, stream=self.stream)

    def step(self):
        if self.graph is not None:
            self.graph.launch(self.stream)
        else:
            self._launch(apply=1)
        self.steps_done += 1

    def run(self, num_steps, log_every=0):
        """Take num_steps steps; returns [(step, loss)] read back every log_every steps (0: none)."""
        log = []
        for i in range(num_steps):
            self.step()
            if log_every and (i + 1) % log_every == 0:
                log.append((self.steps_done, self.loss()))
        return log

    def loss(self):
        """The loss of the last step's batch (before its update): synchronises."""
        self.stream.synchronize()
        return float(to_numpy(self.buf.stats)[self.cfg.num_layers - 1])

    def synchronize(self):
        self.stream.synchronize()

    def params(self):
        """The current parameters as a dict of NumPy arrays."""
        self.stream.synchronize()
        return {k: v.copy() for k, v in cb.unpack(to_numpy(self.vec), self.cfg).items()}

    def adam_state(self):
        self.stream.synchronize()
        return {"t": int(to_numpy(self.step_dev)[0]), "m": cb.unpack(to_numpy(self.m), self.cfg),
                "v": cb.unpack(to_numpy(self.v), self.cfg)}


def draw_tasks(seed, step, batch, num_context=10, input_dim=10, input_range=1.0, weight_scale=1.0,
               dtype=np.float32):
    """The device's task batch at (seed, step): tokens (B, N+1, d+1), targets (B,) on the device;
    equal to kernels.cupy.philox.linear_regression_tasks (its host mirror)."""
    cp = _cp()
    B, N, d = batch, num_context, input_dim
    tokens = cp.full((B, N + 1, d + 1), np.nan, dtype)
    targets = cp.full(B, np.nan, dtype)
    warps = 4
    kernel("tasks.cu", "draw_tasks", dtype)(
        (-(-B // warps),), (32 * warps,),
        cb.draw_tasks_args(seed, step, B, N, d, input_range, weight_scale, tokens, targets),
        shared_mem=warps * d * 8)
    return tokens, targets
