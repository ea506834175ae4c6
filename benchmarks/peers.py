"""Peers for the GPU benchmark: the same model and training step written in JAX (jit) and in
PyTorch (autograd, optionally torch.compile). They exist only to be timed against the `cupy`
backend; the tests check them against the oracle (tests/peers/test_peers.py).

Model: the transformer of refimpl/model.py (linear or softmax attention per layer, H heads, tied or
deep, dampening, y_update, token clipping, include_query, LayerNorm, MLP blocks, the embedding and
input MLP; no positional encoding), written once, in tests/peers/jax_model.py and tests/peers/torch_model.py, which the
cross-tests against autodiff use too. Step: the batch (drawn on the device with the framework's
own generator, SPEC 1.1 law), loss mean 0.5 (y_hat - y)^2, gradients by autodiff, global-norm
clipping, Adam with bias correction (refimpl/optim.py). Parameters are dicts named as refimpl.params.param_shapes.
"""
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # the model lives in tests/peers/, a package of the repository root
    sys.path.insert(0, REPO_ROOT)
from tests.peers.weights import from_refimpl  # noqa: E402


def _check(cfg):
    """The peer models have every option of refimpl/model.py but the positional encodings."""
    if cfg.pos_enc != "none":
        raise ValueError(f"cfg.pos_enc: the peers have no positional encoding (expected 'none'), got {cfg.pos_enc!r}")


# ----------------------------------------------------------------------------------------------
# JAX
class JaxPeer:
    """`loss_and_grads(params, tokens, y)` and a jitted `train_step(state, key_step)` that draws its
    batch with jax.random from (seed, step)."""

    def __init__(self, cfg, adam_cfg, batch=2048, num_context=10, input_dim=10, input_range=1.0,
                 weight_scale=1.0, dtype=np.float32, device=None):
        import jax
        import jax.numpy as jnp
        from tests.peers import jax_model
        _check(cfg)
        self.jax, self.jnp, self.model, self.cfg, self.adam_cfg = jax, jnp, jax_model, cfg, adam_cfg
        self.dtype = np.dtype(dtype)
        self.device = device or jax.devices()[0]
        self.task = (batch, num_context, input_dim, input_range, weight_scale)
        self._value_and_grad = jax.jit(jax.value_and_grad(self.loss))
        self.train_step = jax.jit(self._train_step)
        self.train_loop = jax.jit(self._train_loop, static_argnums=(1,))

    def forward(self, params, tokens):
        """Readouts (L, B) of tests/peers/jax_model.py over refimpl's parameter names."""
        return self.model.readouts(from_refimpl(params, self.cfg), tokens, self.cfg)

    def loss(self, params, tokens, y):
        r = self.forward(params, tokens)[-1] - y
        return 0.5 * self.jnp.mean(r * r)

    def loss_and_grads(self, params, tokens, y):
        """NumPy in, NumPy out: (loss, grads)."""
        put = lambda a: self.jax.device_put(np.asarray(a, self.dtype), self.device)  # noqa: E731
        loss, grads = self._value_and_grad({k: put(v) for k, v in params.items()}, put(tokens), put(y))
        return float(loss), {k: np.asarray(g) for k, g in grads.items()}

    def draw(self, key):
        jax, jnp = self.jax, self.jnp
        B, N, d, r, s = self.task
        kw, kx = jax.random.split(key)
        w = s * jax.random.normal(kw, (B, d), self.dtype)
        x = jax.random.uniform(kx, (B, N + 1, d), self.dtype, -r / 2, r / 2)
        y = jnp.einsum("btd,bd->bt", x, w)
        tokens = jnp.concatenate([x, y.at[:, -1].set(0)[..., None]], axis=-1)
        return tokens, y[:, -1]

    def init_state(self, params, seed=0):
        put = lambda a: self.jax.device_put(np.asarray(a, self.dtype), self.device)  # noqa: E731
        p = {k: put(v) for k, v in params.items()}
        got = {str(v.dtype) for v in p.values()}
        if got != {self.dtype.name}:  # JAX computes float64 as float32 unless x64 is on
            raise ValueError(f"dtype: expected the peer's parameters in {self.dtype.name}, got "
                             f"{', '.join(sorted(got))} (JAX needs jax.enable_x64(True) or "
                             "JAX_ENABLE_X64=1 for float64)")
        zeros = {k: self.jnp.zeros_like(v) for k, v in p.items()}
        state = (p, zeros, dict(zeros), self.jnp.zeros((), self.jnp.int32), self.jax.random.PRNGKey(seed))
        return self.jax.device_put(state, self.device)  # every leaf committed: one compilation

    def adam(self, params, grads, m, v, t):
        jnp, c = self.jnp, self.adam_cfg
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in grads.values()))
        factor = jnp.minimum(1.0, c.grad_clip / norm) if c.grad_clip > 0 else jnp.ones((), norm.dtype)
        t = t + 1
        bc1 = 1 - c.b1 ** t.astype(self.dtype)
        bc2 = 1 - c.b2 ** t.astype(self.dtype)
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            g = grads[k] * factor.astype(p.dtype)
            new_m[k] = c.b1 * m[k] + (1 - c.b1) * g
            new_v[k] = c.b2 * v[k] + (1 - c.b2) * g * g
            new_p[k] = p - c.lr * (new_m[k] / bc1) / (jnp.sqrt(new_v[k] / bc2) + c.eps)
        return new_p, new_m, new_v, t

    def _train_step(self, state):
        params, m, v, t, key = state
        tokens, y = self.draw(self.jax.random.fold_in(key, t))
        loss, grads = self.jax.value_and_grad(self.loss)(params, tokens, y)
        params, m, v, t = self.adam(params, grads, m, v, t)
        return (params, m, v, t, key), loss

    def _train_loop(self, state, num_steps):
        """num_steps steps in one jitted call (lax.fori_loop): the launch-overhead-free reference."""
        def body(_, carry):
            st, _loss = carry
            return self._train_step(st)
        return self.jax.lax.fori_loop(0, num_steps, body, (state, self.jnp.zeros((), self.dtype)))

    def train_step_on_batch(self, state, tokens, y):
        """One step on a given batch (NumPy), for the tests: returns (state, loss)."""
        params, m, v, t, key = state
        loss, grads = self._value_and_grad(params, self.jnp.asarray(tokens, self.dtype),
                                           self.jnp.asarray(y, self.dtype))
        params, m, v, t = self.adam(params, grads, m, v, t)
        return (params, m, v, t, key), float(loss)

    def block(self, x):
        return self.jax.block_until_ready(x)


# ----------------------------------------------------------------------------------------------
# PyTorch
class TorchPeer:
    """The same in PyTorch: autograd for the gradients, the Adam step written out (no fused
    optimiser, so that the arithmetic is refimpl/optim.py's); `compile=True` wraps the step in
    torch.compile."""

    def __init__(self, cfg, adam_cfg, batch=2048, num_context=10, input_dim=10, input_range=1.0,
                 weight_scale=1.0, dtype=np.float32, device="cpu", compile=False):
        import torch
        from tests.peers import torch_model
        _check(cfg)
        self.torch, self.model, self.cfg, self.adam_cfg = torch, torch_model, cfg, adam_cfg
        self.device = torch.device(device)
        self.dtype = {np.dtype(np.float32): torch.float32,
                      np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
        self.task = (batch, num_context, input_dim, input_range, weight_scale)
        self.step_fn = torch.compile(self._train_step) if compile else self._train_step

    def forward(self, params, tokens):
        """Readouts (L, B) of tests/peers/torch_model.py over refimpl's parameter names."""
        return self.model.readouts(from_refimpl(params, self.cfg), tokens, self.cfg)

    def loss(self, params, tokens, y):
        r = self.forward(params, tokens)[-1] - y
        return 0.5 * (r * r).mean()

    def loss_and_grads(self, params, tokens, y):
        torch = self.torch
        p = {k: torch.tensor(np.asarray(v), dtype=self.dtype, device=self.device, requires_grad=True)
             for k, v in params.items()}
        t = torch.tensor(np.asarray(tokens), dtype=self.dtype, device=self.device)
        loss = self.loss(p, t, torch.tensor(np.asarray(y), dtype=self.dtype, device=self.device))
        grads = torch.autograd.grad(loss, list(p.values()))
        return float(loss.detach()), {k: g.detach().cpu().numpy() for k, g in zip(p, grads)}

    def init_state(self, params, seed=0):
        torch = self.torch
        p = {k: torch.tensor(np.asarray(v), dtype=self.dtype, device=self.device) for k, v in params.items()}
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        return {"params": p, "m": {k: torch.zeros_like(v) for k, v in p.items()},
                "v": {k: torch.zeros_like(v) for k, v in p.items()}, "t": 0, "gen": gen}

    def draw(self, gen):
        torch = self.torch
        B, N, d, r, s = self.task
        w = s * torch.randn(B, d, generator=gen, device=self.device, dtype=self.dtype)
        x = (torch.rand(B, N + 1, d, generator=gen, device=self.device, dtype=self.dtype) - 0.5) * r
        y = torch.einsum("btd,bd->bt", x, w)
        lab = torch.cat([y[:, :-1], torch.zeros_like(y[:, -1:])], dim=1)
        return torch.cat([x, lab[..., None]], dim=-1), y[:, -1]

    def _train_step(self, params, m, v, t, tokens, y):
        torch, c = self.torch, self.adam_cfg
        leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
        loss = self.loss(leaves, tokens, y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        with torch.no_grad():
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
            if c.grad_clip > 0:  # min(1, c / ||g||): scaling by 1 changes nothing
                factor = torch.clamp(c.grad_clip / norm, max=1.0).to(self.dtype)
            else:
                factor = torch.ones((), dtype=self.dtype, device=norm.device)
            bc1, bc2 = 1 - c.b1 ** t, 1 - c.b2 ** t
            new_p, new_m, new_v = {}, {}, {}
            for (k, p), g in zip(params.items(), grads):
                g = g * factor
                new_m[k] = c.b1 * m[k] + (1 - c.b1) * g
                new_v[k] = c.b2 * v[k] + (1 - c.b2) * g * g
                new_p[k] = p - c.lr * (new_m[k] / bc1) / (torch.sqrt(new_v[k] / bc2) + c.eps)
        return new_p, new_m, new_v, loss.detach()

    def train_step(self, state):
        """One step on a freshly drawn batch (device generator); returns the loss tensor (no sync)."""
        tokens, y = self.draw(state["gen"])
        state["t"] += 1
        state["params"], state["m"], state["v"], loss = self.step_fn(
            state["params"], state["m"], state["v"], state["t"], tokens, y)
        return loss

    def train_step_on_batch(self, state, tokens, y):
        torch = self.torch
        state["t"] += 1
        state["params"], state["m"], state["v"], loss = self.step_fn(
            state["params"], state["m"], state["v"], state["t"],
            torch.tensor(np.asarray(tokens), dtype=self.dtype, device=self.device),
            torch.tensor(np.asarray(y), dtype=self.dtype, device=self.device))
        return float(loss)

    def synchronize(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
