"""Every hand-written backward against central finite differences (SPEC 7)."""
import numpy as np
import pytest

from refimpl import gradcheck, layers
from refimpl.gradcheck import TOLERANCE, all_checks, check_function

CHECKS = all_checks(np.random.default_rng(0))


@pytest.mark.parametrize("name,forward,backward,inputs", CHECKS, ids=[c[0] for c in CHECKS])
def test_backward_matches_finite_differences(name, forward, backward, inputs, rng):
    rows = check_function(name, forward, backward, inputs, rng)
    assert {r["param"] for r in rows} == set(inputs), "every input and parameter is checked"
    bad = [(r["param"], r["max_rel_err"]) for r in rows if not r["passed"]]
    assert not bad, f"{name}: relative error above {TOLERANCE}: {bad}"


def test_model_checks_cover_every_parameter_kind():
    """The model checks include the issue's required models and every parameter family."""
    names = set(gradcheck.MODEL_CHECKS)
    for required in ("model_lsa_1layer", "model_lsa_deep3_clip", "model_lsa_tied2_dampened",
                     "model_softmax_2head_ln_mlp", "model_first_softmax_posconcat",
                     "model_sine_embed_inputmlp"):
        assert required in names
    params = set()
    for c in CHECKS:
        params |= set(c[3])
    for family in ("embed.W", "input_mlp.W1", "ln1.scale", "ln2.offset", "attn.W_q", "mlp.b2"):
        assert any(p.endswith(family) for p in params), family


def test_checker_catches_a_wrong_backward(rng):
    """A backward that is off by a small factor on one gradient must be reported as failing."""
    x = rng.standard_normal((3, 4, 5))
    W = rng.standard_normal((5, 2))

    def forward(x, W):
        return layers.linear_forward(x, W)[0]

    def wrong_backward(dout, inp):
        dx, g = layers.linear_backward(dout, layers.linear_forward(inp["x"], inp["W"])[1])
        return {"x": dx, "W": g["W"] * (1 + 1e-4)}

    rows = {r["param"]: r for r in check_function("wrong", forward, wrong_backward, {"x": x, "W": W}, rng)}
    assert rows["x"]["passed"]
    assert not rows["W"]["passed"]
    assert rows["W"]["max_rel_err"] > 1e-5


def test_checker_directional_mode_catches_wrong_backward(rng):
    """Large tensors go through directional derivatives; a wrong gradient still fails."""
    x = rng.standard_normal((4, 20, 10))  # 800 entries > ELEMENTWISE_MAX

    def forward(x):
        return np.tanh(x)

    def wrong_backward(dout, inp):
        g = dout * (1 - np.tanh(inp["x"]) ** 2)
        g[0, 0, 0] += 0.5
        return {"x": g}

    assert x.size > gradcheck.ELEMENTWISE_MAX
    (row,) = check_function("wrong_tanh", forward, wrong_backward, {"x": x}, rng)
    assert not row["passed"]
