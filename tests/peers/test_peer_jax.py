"""Cross-test against JAX autodiff: the model written independently in JAX over the public
notebooks' Haiku parameter tree (tests/peers/jax_model.py, also the benchmark's JAX peer),
gradients by jax.grad, imported with `from_haiku`, exported to the exchange format, and checked
by `crosscheck` at float64 tolerances. The GPT-2 model of SPEC 2.7 likewise, written in JAX over
the oracle's parameter names (tests/peers/jax_gpt2.py).

Skipped (with the reason) when JAX is not installed: `pip install -e .[peers]`.
"""
import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is an optional extra: pip install -e .[peers]")
jnp = pytest.importorskip("jax.numpy")

from tests.peers.cases import CASES, WEIGHT_SCALE, export_and_check, make_data  # noqa: E402
from tests.peers.jax_model import haiku_tree, tree_readouts  # noqa: E402
from iclgd.interop.convert import from_haiku  # noqa: E402

pytestmark = pytest.mark.slow  # the fast subset leaves these out: imports and compiles JAX


@pytest.fixture(scope="module", autouse=True)
def float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("case", sorted(CASES))
def test_jax_autodiff_agrees_with_the_oracle(tmp_path, rng, case):
    cfg = CASES[case]
    tree = haiku_tree(cfg, rng, WEIGHT_SCALE)
    tokens, targets = make_data(cfg, rng)

    def loss(tree, tokens):
        readouts = tree_readouts(tree, tokens, cfg)  # (L, B)
        return 0.5 * jnp.mean((readouts[-1] - targets) ** 2), readouts

    @jax.jit  # one compilation for everything
    def autodiff(tree, tokens):
        (value, readouts), (dtree, dtokens) = jax.value_and_grad(loss, (0, 1), has_aux=True)(tree, tokens)
        # d y_hat_b / d tokens_b: the gradient of the sum, since task b's prediction sees only task b
        dpred = jax.grad(lambda x: tree_readouts(tree, x, cfg)[-1].sum())(tokens)
        return value, readouts, dtree, dtokens, dpred

    value, readouts, dtree, dtokens, dpred = autodiff(tree, tokens)
    readouts = np.asarray(readouts)
    assert readouts.dtype == np.float64 and np.asarray(dtokens).dtype == np.float64
    params = from_haiku(tree, cfg)
    grads = from_haiku(jax.tree_util.tree_map(np.asarray, dtree), cfg)
    results = {"predictions": readouts[-1], "readouts": readouts, "loss": np.asarray(value),
               "input_grads": np.asarray(dtokens), "prediction_grads": np.asarray(dpred)}
    results.update({"grads/" + n: g for n, g in grads.items()})
    export_and_check(tmp_path, cfg, params, tokens, targets, results)


def test_jax_gpt2_autodiff_agrees_with_the_oracle(tmp_path, rng):
    """The GPT-2 model (SPEC 2.7) in JAX over the oracle's names (tests/peers/jax_gpt2.py): its
    predictions, loss, every parameter gradient (pos whole, rows past the prompt 0) and the input
    gradient pass crosscheck, and each fails alone when perturbed."""
    from tests.peers import jax_gpt2
    from tests.peers.cases import GPT2_CFG, check_unused_positions, gpt2_problem
    cfg = GPT2_CFG
    params, tokens, targets = gpt2_problem(cfg, rng)
    value, pred, dparams, dtokens = jax_gpt2.loss_and_grads(params, tokens, targets, cfg)
    assert np.asarray(value).dtype == np.float64 and np.asarray(dtokens).dtype == np.float64
    results = {"predictions": np.asarray(pred), "loss": np.asarray(value), "input_grads": np.asarray(dtokens)}
    results.update({"grads/" + n: np.asarray(g) for n, g in dparams.items()})
    export_and_check(tmp_path, cfg, params, tokens, targets, results)
    check_unused_positions(tmp_path, cfg, params, tokens, targets, results)
