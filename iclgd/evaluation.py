"""Evaluation on the run's backend: the `ops` that refimpl.metrics runs its model with.

`evaluation_ops(backend)` wraps a backend module (kernels.get_backend) so that refimpl.metrics can
call its model_forward / model_backward on host arrays: parameters and tokens go to the backend,
read-outs and input gradients come back as NumPy arrays. The oracle (backend "numpy") is passed as
None, so its metrics run exactly as refimpl.metrics writes them. Float64 evaluation on another
backend equals the oracle's to rounding (each backend is checked against the oracle, SPEC 7).
"""
import numpy as np


class BackendOps:
    """model_forward / model_backward of one backend, on host arrays."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name

    def model_forward(self, params, tokens, cfg):
        b = self.backend
        readouts, cache = b.model_forward(b.asarray(params), b.asarray(np.ascontiguousarray(tokens)), cfg)
        return np.asarray(b.to_numpy(readouts)), cache  # (L, B)

    def readouts(self, params, tokens, cfg):
        """The read-outs (L, B) alone: the backend's `readouts` where it has one (numba-cpu:
        linear attention through its training kernel's forward), else model_forward's."""
        b = self.backend
        own = getattr(b, "readouts", None)
        if own is None:
            return self.model_forward(params, tokens, cfg)[0]
        return np.asarray(b.to_numpy(own(b.asarray(params), b.asarray(np.ascontiguousarray(tokens)), cfg)))

    def readouts_and_query_gradient(self, params, tokens, cfg):
        """(readouts (L, B), d (final read-out) / d (query token) (B, D_in)); the backend's own
        function where it has one (numba-cpu: linear attention from its training kernel)."""
        b = self.backend
        own = getattr(b, "readouts_and_query_gradient", None)
        if own is None:
            readouts, cache = self.model_forward(params, tokens, cfg)
            dread = np.zeros_like(readouts)  # (L, B)
            dread[-1] = 1.0
            return readouts, self.model_backward(dread, cache)[0][:, -1]
        readouts, dquery = own(b.asarray(params), b.asarray(np.ascontiguousarray(tokens)), cfg)
        return np.asarray(b.to_numpy(readouts)), np.asarray(b.to_numpy(dquery))

    def model_backward(self, dreadouts, cache):
        b = self.backend
        dtokens, grads = b.model_backward(b.asarray(np.ascontiguousarray(dreadouts)), cache)
        return np.asarray(b.to_numpy(dtokens)), {k: np.asarray(v) for k, v in b.to_numpy(grads).items()}


def evaluation_ops(backend):
    """None for the oracle (refimpl.metrics' own path) or no backend; a BackendOps otherwise."""
    if backend is None or backend.name == "numpy":
        return None
    return BackendOps(backend)
