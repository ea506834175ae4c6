"""Alternating tokens (SPEC 1.4) and the copy analysis of layer 0 (SPEC 5): the layout of the
sequence, and the Jacobians of the hand-written backward against central finite differences."""
import numpy as np
import pytest

from refimpl import alternating
from refimpl.block import block_forward
from refimpl.config import ModelConfig, TaskConfig
from refimpl.data import linear_regression_tasks
from refimpl.layers import sinusoidal_encoding
from refimpl.params import init_params
from refimpl.tasks import draw_tasks
from tests.conftest import TOL


@pytest.mark.parametrize("layout", ["back", "front"])
def test_alternating_sequence_layout(rng, layout):
    lin, _ = linear_regression_tasks(rng, 4, num_context=3, input_dim=5)  # N = 3, d = 5
    P = 6
    tok = alternating.alternating_tokens(lin, P, layout)
    assert tok.shape == (4, 7, 11)
    data = tok[..., alternating.data_columns(5, P, layout)]  # (B, T, d)
    enc = tok[..., 5:] if layout == "back" else tok[..., :P]
    np.testing.assert_array_equal(data[:, [0, 2, 4]], lin[:, :3, :-1])  # x_i at even positions
    np.testing.assert_array_equal(data[:, [1, 3, 5], -1], lin[:, :3, -1])  # y_i in the last data slot
    assert not data[:, [1, 3, 5], :-1].any()  # ... and zeros before it
    np.testing.assert_array_equal(data[:, 6], lin[:, 3, :-1])  # the query x_q last
    np.testing.assert_array_equal(enc, np.broadcast_to(sinusoidal_encoding(7, P), (4, 7, P)))
    with pytest.raises(ValueError, match="layout: expected one of \\('back', 'front'\\), got 'middle'"):
        alternating.alternating_tokens(lin, P, "middle")


def test_source_rearranges_the_linear_regression_draw(rng):
    task = TaskConfig(input_dim=4, num_context=3)
    src = alternating.AlternatingSource(task, 5, pos_enc_size=4, layout="front")
    a, ya = src.next_batch(np.random.default_rng(3), 0)
    lin, yb = draw_tasks(np.random.default_rng(3), task, 5)
    np.testing.assert_array_equal(a, alternating.alternating_tokens(lin, 4, "front"))
    np.testing.assert_array_equal(ya, yb)


def _small_model(rng):
    cfg = ModelConfig(token_dim=7, key_size=5, num_layers=2, first_layer_softmax=True, init_scale=2.0)
    lin, _ = linear_regression_tasks(rng, 6, num_context=2, input_dim=3)  # T = 5, d = 3
    tokens = alternating.alternating_tokens(lin, 4, "back")  # (6, 5, 7)
    return cfg, init_params(cfg, rng), tokens


def test_layer0_jacobian_matches_finite_differences(rng):
    cfg, params, tokens = _small_model(rng)
    h = 1e-6
    for k in (0, 2):
        J = alternating.layer0_jacobians(params, tokens, cfg, k)  # (T, W)
        num = np.empty_like(J)
        for j in range(tokens.shape[1]):
            for c in range(tokens.shape[2]):
                tp, tm = tokens.copy(), tokens.copy()
                tp[:, j, c] += h
                tm[:, j, c] -= h
                fp = block_forward(tp, params, cfg, 0)[0][:, k, :].sum(axis=1)  # (B,) per task
                fm = block_forward(tm, params, cfg, 0)[0][:, k, :].sum(axis=1)
                num[j, c] = np.mean((fp - fm) / (2 * h))  # d/d token (j, c) of task b's own sum, batch mean
        np.testing.assert_allclose(J, num, rtol=1e-6, atol=1e-8)
        assert np.abs(J[k + 1]).max() > 1e-3  # the softmax layer mixes tokens: a real test of the cross terms


def test_copy_analysis_is_the_mean_of_the_jacobian_norms(rng):
    cfg, params, tokens = _small_model(rng)
    cols = alternating.data_columns(3, 4, "back")
    T = tokens.shape[1]
    own, nxt, other = [], [], []
    for k in range(T - 2):
        n = np.linalg.norm(alternating.layer0_jacobians(params, tokens, cfg, k)[:, cols], axis=1)  # (T,)
        own.append(n[k])
        nxt.append(n[k + 1])
        other.append(np.delete(n, [k, k + 1]).sum() / (T - 2))
    got = alternating.copy_analysis(params, tokens, cfg, cols)
    np.testing.assert_allclose([got["copy_own"], got["copy_next"], got["copy_other"]],
                               [np.mean(own), np.mean(nxt), np.mean(other)], **TOL["float64_reordered"])
    # a layer with zero attention output is the identity: own = sqrt(d), next = other = 0
    zero = {k: (0 * v if k == "layer0.attn.W_p" else v) for k, v in params.items()}
    z = alternating.copy_analysis(zero, tokens, cfg, cols)
    np.testing.assert_allclose([z["copy_own"], z["copy_next"], z["copy_other"]], [np.sqrt(3), 0, 0], atol=1e-15)
