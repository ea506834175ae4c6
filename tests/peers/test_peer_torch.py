"""Cross-test against PyTorch autograd: the model written independently as a torch.nn.Module with
the state_dict names documented in iclgd/interop/convert.py (tests/peers/torch_model.py, also the
benchmark's PyTorch peer), in float64, imported with `from_torch_state_dict`, exported to the
exchange format and checked by `crosscheck`. The GPT-2 model of SPEC 2.7 likewise, written in
PyTorch over the oracle's parameter names (tests/peers/torch_gpt2.py).

Skipped (with the reason) when PyTorch is not installed: `pip install -e .[peers]`.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional extra: pip install -e .[peers]")

from tests.peers.cases import CASES, WEIGHT_SCALE, export_and_check, make_data  # noqa: E402
from iclgd.interop.convert import from_torch_state_dict  # noqa: E402
from iclgd.interop.crosscheck import crosscheck_file  # noqa: E402
from iclgd.interop.exchange import save_exchange  # noqa: E402
from tests.peers.torch_model import random_model  # noqa: E402

pytestmark = pytest.mark.slow  # the fast subset leaves these out: imports PyTorch


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_autograd_agrees_with_the_oracle(tmp_path, rng, case):
    cfg = CASES[case]
    model = random_model(cfg, int(rng.integers(2**31)), WEIGHT_SCALE)
    tokens, targets = make_data(cfg, rng)
    x = torch.tensor(tokens, requires_grad=True)
    readouts = model(x)  # (L, B)
    loss = 0.5 * torch.mean((readouts[-1] - torch.tensor(targets)) ** 2)
    loss.backward()
    x_pred = torch.tensor(tokens, requires_grad=True)
    # d y_hat_b / d tokens_b: the gradient of the sum, since task b's prediction sees only task b
    dpred, = torch.autograd.grad(model(x_pred)[-1].sum(), x_pred)
    assert readouts.dtype == torch.float64
    params = from_torch_state_dict(model.state_dict(), cfg)
    grads = from_torch_state_dict({n: p.grad for n, p in model.named_parameters()}, cfg)
    results = {"predictions": readouts[-1].detach().numpy(), "readouts": readouts.detach().numpy(),
               "loss": loss.detach().numpy(), "input_grads": x.grad.numpy(),
               "prediction_grads": dpred.numpy()}
    results.update({"grads/" + n: g for n, g in grads.items()})
    export_and_check(tmp_path, cfg, params, tokens, targets, results)


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_results_pass_only_at_the_documented_float32_tolerance(tmp_path, rng, case):
    """The README's advice for float32 peers (--rtol 1e-4 --atol 1e-6) holds; the float64 default
    tolerance is tight enough to tell a float32 computation from a float64 one."""
    cfg = CASES[case]
    model = random_model(cfg, int(rng.integers(2**31)), WEIGHT_SCALE).float()
    tokens, targets = make_data(cfg, rng)
    tokens, targets = tokens.astype(np.float32), targets.astype(np.float32)
    x = torch.tensor(tokens, requires_grad=True)
    readouts = model(x)  # (L, B)
    loss = 0.5 * torch.mean((readouts[-1] - torch.tensor(targets)) ** 2)
    loss.backward()
    assert readouts.dtype == torch.float32
    params = from_torch_state_dict(model.state_dict(), cfg)
    grads = from_torch_state_dict({n: p.grad for n, p in model.named_parameters()}, cfg)
    results = {"readouts": readouts.detach().numpy(), "loss": loss.detach().numpy(),
               "input_grads": x.grad.numpy()}
    results.update({"grads/" + n: g for n, g in grads.items()})
    path = tmp_path / "f32.npz"
    save_exchange(path, cfg, params, tokens, targets, results)
    assert crosscheck_file(path, rtol=1e-4, atol=1e-6)["passed"]
    assert not crosscheck_file(path)["passed"]


def test_torch_gpt2_autograd_agrees_with_the_oracle(tmp_path, rng):
    """The GPT-2 model (SPEC 2.7) in PyTorch over the oracle's names (tests/peers/torch_gpt2.py),
    float64: its predictions, loss, every parameter gradient (pos whole, rows past the prompt 0)
    and the input gradient pass crosscheck, and each fails alone when perturbed."""
    from tests.peers import torch_gpt2
    from tests.peers.cases import GPT2_CFG, check_unused_positions, gpt2_problem
    cfg = GPT2_CFG
    params, tokens, targets = gpt2_problem(cfg, rng)
    value, pred, dparams, dtokens = torch_gpt2.loss_and_grads(params, tokens, targets, cfg)
    assert pred.dtype == np.float64 and dtokens.dtype == np.float64
    results = {"predictions": pred, "loss": value, "input_grads": dtokens}
    results.update({"grads/" + n: g for n, g in dparams.items()})
    export_and_check(tmp_path, cfg, params, tokens, targets, results)
    check_unused_positions(tmp_path, cfg, params, tokens, targets, results)


def test_float32_gpt2_results_pass_only_at_the_documented_float32_tolerance(tmp_path, rng):
    """The float32 advice holds for the GPT-2 model too, and the float64 default tells float32 apart."""
    from tests.peers import torch_gpt2
    from tests.peers.cases import GPT2_CFG, gpt2_problem
    params, tokens, targets = (
        {n: v.astype(np.float32) for n, v in a.items()} if isinstance(a, dict) else a.astype(np.float32)
        for a in gpt2_problem(GPT2_CFG, rng))
    value, pred, dparams, dtokens = torch_gpt2.loss_and_grads(params, tokens, targets, GPT2_CFG,
                                                              dtype=torch.float32)
    assert pred.dtype == np.float32
    results = {"predictions": pred, "loss": value, "input_grads": dtokens}
    results.update({"grads/" + n: g for n, g in dparams.items()})
    path = save_exchange(tmp_path / "f32.npz", GPT2_CFG, params, tokens, targets, results)
    assert crosscheck_file(path, rtol=1e-4, atol=1e-6)["passed"]
    assert not crosscheck_file(path)["passed"]
