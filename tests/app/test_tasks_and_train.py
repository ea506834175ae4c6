"""Task families, the training loop's checkpoints and bit-identical resumption."""
import numpy as np
import pytest

from kernels import get_backend
from tests.conftest import TOL
from refimpl.config import TaskConfig
from iclgd.experiments.common import lsa_config
from refimpl.tasks import TaskSource, other_law_tasks, scale_inputs, scale_weights
from refimpl.data import linear_regression_tasks
from iclgd.train import TrainConfig, paper_adam, train


def test_scaled_inputs_equal_tasks_drawn_at_that_range():
    t1, y1 = linear_regression_tasks(np.random.default_rng(3), 5, input_range=1.0)
    t2, y2 = linear_regression_tasks(np.random.default_rng(3), 5, input_range=1.7)
    ts, ys = scale_inputs(t1, y1, 1.7)
    np.testing.assert_allclose(ts, t2, **TOL["rescaled_draw"])
    np.testing.assert_allclose(ys, y2, **TOL["rescaled_draw"])


def test_scaled_weights_scale_labels_only(rng):
    t, y = linear_regression_tasks(rng, 4, num_context=6, input_dim=3)
    ts, ys = scale_weights(t, y, 2.5)
    np.testing.assert_array_equal(ts[..., :-1], t[..., :-1])
    np.testing.assert_allclose(ts[..., -1], 2.5 * t[..., -1])
    np.testing.assert_allclose(ys, 2.5 * y)


def test_other_laws_are_normalised_and_mixed(rng):
    tokens, targets, law = other_law_tasks(rng, 600, num_context=6, input_dim=3)
    X = tokens[:, :-1, :-1]
    np.testing.assert_allclose(np.linalg.norm(X, axis=(1, 2)), 1.0, **TOL["unit_norm"])
    assert set(np.unique(law)) == {0, 1, 2}
    assert np.all(X[law == 0] > 0)  # exponential draws are positive
    assert np.all(tokens[:, -1, -1] == 0)
    # labels are one linear function of x per task: solve from the context (N = 6 > d = 3), predict the query
    w = np.linalg.lstsq(X[0], tokens[0, :-1, -1], rcond=None)[0]
    assert abs(tokens[0, -1, :-1] @ w - targets[0]) < TOL["label_from_context_solve"]["atol"]


def test_fixed_task_source_cycles_one_set(rng):
    task = TaskConfig(input_dim=3, num_context=4)
    src = TaskSource(task, batch=4, fixed_tasks=8, fixed_seed=5)
    a, b, c = (src.next_batch(rng, s)[0] for s in range(3))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    same = TaskSource(task, batch=8, fixed_tasks=8, fixed_seed=5)
    np.testing.assert_array_equal(same.next_batch(rng, 0)[0], same.next_batch(rng, 1)[0])
    with pytest.raises(ValueError, match="batch"):
        TaskSource(task, batch=9, fixed_tasks=8)


def test_paper_adam_rules():
    t = TrainConfig()
    assert (paper_adam(t, 1).lr, paper_adam(t, 1).grad_clip) == (1e-3, 0.001)
    assert (paper_adam(t, 3).lr, paper_adam(t, 3).grad_clip) == (1e-3, 10.0)
    assert (paper_adam(t, 5).lr, paper_adam(t, 5).grad_clip) == (5e-4, 10.0)
    assert paper_adam(TrainConfig(lr=0.01, grad_clip=0.0), 5).lr == 0.01
    assert lsa_config(TaskConfig(), num_layers=5).token_clip == 10.0


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("fixed_tasks", [0, 48])
def test_resume_after_interruption_gives_identical_final_params(tmp_path, fixed_tasks):
    task = TaskConfig(input_dim=3, num_context=5)
    cfg = lsa_config(task, num_layers=2)
    tc = TrainConfig(steps=30, batch=16, eval_every=5, checkpoint_every=10, fixed_tasks=fixed_tasks)
    backend = get_backend("numpy")

    def source():
        return TaskSource(task, 16, fixed_tasks=fixed_tasks, fixed_seed=3)

    def evaluate(params):
        return {"loss_tf": float(np.sum(params["layer0.attn.W_q"]))}

    full = train(cfg, tc, source(), 11, backend, evaluate, str(tmp_path / "a.npz"), progress=False)

    def interrupting(params):
        evaluate.calls = getattr(evaluate, "calls", 0) + 1
        if evaluate.calls == 5:  # evaluations at steps 0, 5, 10, 15, 20: stop at 20, before its checkpoint
            raise Interrupt
        return evaluate(params)

    ckpt = str(tmp_path / "b.npz")
    with pytest.raises(Interrupt):
        train(cfg, tc, source(), 11, backend, interrupting, ckpt, progress=False)
    resumed = train(cfg, tc, source(), 11, backend, evaluate, ckpt, resume=True, progress=False)
    assert resumed.steps_run == 30 - 10  # continued from the step-10 checkpoint
    for k in full.params:
        np.testing.assert_array_equal(resumed.params[k], full.params[k])
    assert resumed.curves == full.curves
    # a fresh start with a different seed does differ (the comparison above is not vacuous)
    other = train(cfg, tc, source(), 12, backend, evaluate, None, progress=False)
    assert not np.array_equal(other.params["layer0.attn.W_q"], full.params["layer0.attn.W_q"])


def test_resume_rejects_a_checkpoint_of_another_model(tmp_path):
    task = TaskConfig(input_dim=3, num_context=5)
    tc = TrainConfig(steps=4, batch=8, checkpoint_every=2)
    backend = get_backend("numpy")
    ckpt = str(tmp_path / "c.npz")
    train(lsa_config(task, 1), tc, TaskSource(task, 8), 0, backend, None, ckpt, progress=False)
    with pytest.raises(ValueError, match=r"another setup.*model.num_layers: checkpoint 1, this run 2"):
        train(lsa_config(task, 2), tc, TaskSource(task, 8), 0, backend, None, ckpt, resume=True, progress=False)


def test_one_layer_training_never_moves_the_label_row_of_w_q(rng):
    """fig1 zeroes this row before repeating the layer: check that its gradient is exactly 0 (the
    query's label slot is 0 and only the query's read-out enters the loss), and that the repeated
    parameters differ from the trained ones in that row only."""
    from iclgd.experiments.fig1 import repeated_layer_params
    from refimpl.loss import loss_and_grads
    from refimpl.params import init_params
    cfg = lsa_config(TaskConfig(input_dim=4, num_context=6))
    params = init_params(cfg, rng)
    params = {k: v * 300 for k, v in params.items()}  # O(1) weights: nonzero gradients elsewhere
    tokens, y = linear_regression_tasks(rng, 50, num_context=6, input_dim=4)
    _, _, grads = loss_and_grads(params, tokens, y, cfg)
    assert np.all(grads["layer0.attn.W_q"][-1] == 0.0)
    assert np.abs(grads["layer0.attn.W_q"][:-1]).min() > 0
    rep = repeated_layer_params(params, query_reads_label=False)
    assert np.all(rep["layer0.attn.W_q"][-1] == 0) and np.any(params["layer0.attn.W_q"][-1] != 0)
    np.testing.assert_array_equal(rep["layer0.attn.W_q"][:-1], params["layer0.attn.W_q"][:-1])
    assert all(rep[k] is params[k] for k in params if k != "layer0.attn.W_q")
    assert repeated_layer_params(params, query_reads_label=True) is params


def test_mean_over_seeds_averages_lists_arrays_and_nested_dicts():
    from iclgd.experiments.common import mean_over_seeds
    a = {"x": 1.0, "c": np.array([1.0, 3.0]), "l": [2.0, None], "d": {"y": [0.0, 4.0]}, "s": "same", "n": 7}
    b = {"x": 3.0, "c": np.array([3.0, 5.0]), "l": [4.0, 1.0], "d": {"y": [2.0, 8.0]}, "s": "same", "n": 7}
    m = mean_over_seeds([a, b])
    assert m["x"] == 2.0 and m["c"] == [2.0, 4.0] and m["l"] == [3.0, None]
    assert m["d"] == {"y": [1.0, 6.0]} and m["s"] == "same" and m["n"] == 7


def test_fig1_repeated_losses_through_numba_cpu_match_the_oracle():
    from refimpl import baselines
    from iclgd.experiments import fig1
    tokens, targets = linear_regression_tasks(np.random.default_rng(5), 64)
    cfg = baselines.gd_model_config(10, 12, dampening=0.75, y_update=True, token_clip=fig1.FINITE_CLIP)
    params = baselines.gd_params(10, 6.0, 10)
    ref = fig1.repeated_losses(params, cfg, tokens, targets)
    fast = fig1.repeated_losses(params, cfg, tokens, targets, get_backend("numba-cpu"))
    assert ref.shape == fast.shape == (12, 64)
    np.testing.assert_allclose(fast, ref, **TOL["training_trajectory"])
