"""The backend interface, written down once: the functions every backend module exposes.

A backend is a module (kernels.BACKENDS names them) with the oracle's functions on its own arrays.
`Backend` lists them with their signatures; `OPTIONAL` lists those a backend may add. A backend's
function must take the interface's parameters, under the same names and in the same order; it may
take more after them if they have defaults (refimpl.model.model_backward's `input_grad`).
`interface_problems(module)` says what a module lacks or gets wrong (an empty list: it conforms).

Shapes: B tasks, T tokens per task, D_in token width, L read-outs (one per layer application).
A refimpl.gpt2.GPT2Config (the GPT-2 style model of SPEC 2.7) takes the same functions with its own
conventions: tokens (B, T, d) interleaved, read-outs the predictions at the x positions (B, T/2),
targets (B, T/2), the loss the plain mean squared error, per-layer losses a (1,) array, and the
"pos" gradient of the full (2n, E) parameter (rows a shorter prompt does not reach are 0);
readouts_and_query_gradient does not apply (it has no query token).
"""
import inspect
from typing import Protocol

__all__ = ["Backend", "REQUIRED", "OPTIONAL", "interface_problems"]


class Backend(Protocol):
    """One backend module. Arrays are the backend's own (NumPy, CuPy or device arrays); parameter
    dicts map the oracle's names (refimpl.params.param_shapes order) to arrays."""

    name: str  # the key of kernels.BACKENDS

    def availability(self) -> tuple:
        """(available: bool, reason: str), never raising."""

    def asarray(self, x, dtype=None):
        """host array (or dict of them) -> backend array (or dict)."""

    def to_numpy(self, x):
        """backend array (or dict of them) -> NumPy array (or dict)."""

    def init_params(self, cfg, rng, dtype=None) -> dict:
        """The oracle's initial parameters (the same generator draws, identical numbers)."""

    def model_forward(self, params, tokens, cfg) -> tuple:
        """tokens (B, T, D_in) -> (readouts (L, B), cache)."""

    def model_backward(self, dreadouts, cache) -> tuple:
        """dreadouts (L, B) -> (dtokens (B, T, D_in), {name: gradient})."""

    def mse_forward(self, y_hat, y) -> tuple:
        """y_hat, y (B,) -> (loss = mean 0.5 (y_hat - y)^2, cache)."""

    def mse_backward(self, dloss, cache):
        """dloss (scalar) -> d loss / d y_hat (B,)."""

    def loss_and_grads(self, params, tokens, y, cfg) -> tuple:
        """(loss, per-layer losses (L,), {name: d loss / d param})."""

    def adam_init(self, params) -> dict:
        """{"t": 0, "m": zeros like params, "v": zeros like params}."""

    def adam_update(self, params, grads, state, adam_cfg) -> tuple:
        """One Adam step with global-norm clipping: (params, state, gradient norm before clipping)."""

    def train_step(self, params, state, tokens, y, cfg, adam_cfg) -> tuple:
        """loss_and_grads then adam_update on one batch: (params, state, loss)."""


class OptionalFunctions(Protocol):
    """Functions a backend may expose; callers look them up with getattr(backend, name, None)."""

    def linear_regression_tasks(self, rng, batch, num_context=10, input_dim=10, input_range=1.0,
                                weight_scale=1.0, distractors=0, dtype=None) -> tuple:
        """refimpl.data.linear_regression_tasks bit for bit: (tokens (B, N+1, d+1), targets (B,))."""

    def readouts(self, params, tokens, cfg):
        """model_forward's read-outs (L, B) alone, for evaluating a loss."""

    def readouts_and_query_gradient(self, params, tokens, cfg) -> tuple:
        """(readouts (L, B), d (final read-out) / d (query token) (B, D_in)): model_forward's
        read-outs and the query row of the final read-out's input gradient, for evaluation."""


def _functions(protocol):
    """{name: parameter names without self} of the functions a Protocol class defines."""
    out = {}
    for fname, f in vars(protocol).items():
        if inspect.isfunction(f) and not fname.startswith("_"):
            out[fname] = tuple(inspect.signature(f).parameters)[1:]
    return out


REQUIRED = _functions(Backend)
OPTIONAL = _functions(OptionalFunctions)


def _signature_problem(fname, func, want):
    """None when func takes the parameters `want` (names, order) first and defaults the rest."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    got = tuple(p.name for p in positional[:len(want)])
    if got != want:
        return f"{fname}: parameters {got}, interface wants {want}"
    extra = [p.name for p in positional[len(want):] if p.default is p.empty]
    if extra:
        return f"{fname}: extra parameters without defaults {extra}"
    return None


def interface_problems(module):
    """What `module` lacks or gets wrong against Backend (and OptionalFunctions, when present)."""
    problems = []
    if not isinstance(getattr(module, "name", None), str):
        problems.append("name: missing or not a str")
    for table, required in ((REQUIRED, True), (OPTIONAL, False)):
        for fname, want in table.items():
            func = getattr(module, fname, None)
            if func is None:
                if required:
                    problems.append(f"{fname}: missing")
                continue
            if not callable(func):
                problems.append(f"{fname}: not callable")
                continue
            problem = _signature_problem(fname, func, want)
            if problem:
                problems.append(problem)
    return problems
