"""kernels.numba.draw draws the oracle's training batches (refimpl.data.linear_regression_tasks)
bit for bit and leaves the Generator in the oracle's state; training with numba-cpu's drawer gives
the parameters of training on the oracle's batches."""
import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="kernels.numba.draw needs Numba")

from kernels import get_backend  # noqa: E402
from kernels.numba import draw as numba_draw  # noqa: E402
from refimpl.data import linear_regression_tasks as oracle_tasks  # noqa: E402
from refimpl.config import TaskConfig
from iclgd.experiments.common import lsa_config  # noqa: E402
from refimpl.tasks import TaskSource  # noqa: E402
from iclgd.train import TrainConfig, train  # noqa: E402


def assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}"))


def assert_same_draw(make_rng, *args, before=None, **kwargs):
    """Both drawers on two Generators in the same state: same tokens, targets and state after."""
    rng_ref, rng_got = make_rng(), make_rng()
    if before is not None:
        before(rng_ref)
        before(rng_got)
    assert rng_ref.bit_generator.state == rng_got.bit_generator.state
    tok_ref, y_ref = oracle_tasks(rng_ref, *args, **kwargs)
    tok_got, y_got = numba_draw.linear_regression_tasks(rng_got, *args, **kwargs)
    assert_same_bits(tok_got, tok_ref)
    assert_same_bits(y_got, y_ref)
    assert rng_got.bit_generator.state == rng_ref.bit_generator.state
    return rng_ref, rng_got


@pytest.mark.parametrize("seed, B, N, d, r, s, dtype", [
    (0, 2048, 10, 10, 1.0, 1.0, np.float64),  # the paper's batch
    (1, 130, 10, 10, 1.0, 1.0, np.float64),  # B not a multiple of the piece count
    (2, 1, 10, 10, 1.0, 1.0, np.float64),
    (3, 77, 6, 4, 2.5, 0.3, np.float64),  # N != d, input range and weight scale != 1
    (4, 200, 3, 13, 0.7, 2.0, np.float32),
    (5, 9, 1, 1, 3.0, 1.0, np.float32),
    (6, 33, 5, 3, 0.0, 1.0, np.float64),  # zero range: every x is exactly 0
    (7, 20, 4, 5, 1.0, 1.0, np.float16),  # any dtype: the oracle's cast of the float64 values
    (8, 10, 2, 2, 3, 2, np.float64),  # integer range and scale
    (9, 16, 3, 2, 1.0, np.float32(0.7), np.float64),  # a NumPy scalar scale: a float64 product
    (10, 16, 3, 2, 1.0, True, np.float32),
    (11, 16, 3, 2, 1.0, float("inf"), np.float64),  # 0 * inf = nan, as NumPy's product
])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the oracle's inf - inf
def test_draw_matches_the_oracle_bit_for_bit(seed, B, N, d, r, s, dtype):
    assert_same_draw(lambda: np.random.default_rng(seed), B, num_context=N, input_dim=d,
                     input_range=r, weight_scale=s, dtype=dtype)


def before_other_draws(rng):
    rng.standard_normal(7)
    rng.integers(0, 10, dtype=np.uint32)  # leaves a buffered 32-bit half (has_uint32 = 1)
    rng.random(3)
    rng.standard_normal((5, 3))


def test_draw_after_other_draws_keeps_the_buffered_half_and_the_state():
    rng_ref, rng_got = assert_same_draw(lambda: np.random.default_rng(11), 150, 7, 5,
                                        input_range=1.5, before=before_other_draws)
    assert rng_got.bit_generator.state["has_uint32"] == 1
    # the next draws of every kind continue identically
    np.testing.assert_array_equal(rng_got.integers(0, 2**31, 9, dtype=np.uint32),
                                  rng_ref.integers(0, 2**31, 9, dtype=np.uint32))
    np.testing.assert_array_equal(rng_got.standard_normal(9), rng_ref.standard_normal(9))


def test_consecutive_draws_stay_in_step_with_the_oracle():
    rng_ref, rng_got = np.random.default_rng(21), np.random.default_rng(21)
    for B, N, d, dtype in [(64, 10, 10, np.float64), (65, 4, 2, np.float32), (3, 8, 9, np.float64)]:
        tok_ref, y_ref = oracle_tasks(rng_ref, B, N, d, dtype=dtype)
        tok_got, y_got = numba_draw.linear_regression_tasks(rng_got, B, N, d, dtype=dtype)
        assert_same_bits(tok_got, tok_ref)
        assert_same_bits(y_got, y_ref)
        assert rng_got.bit_generator.state == rng_ref.bit_generator.state


def test_draw_does_not_depend_on_the_thread_count():
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert_same_draw(lambda: np.random.default_rng(31), 300, 10, 10, before=before_other_draws)
    finally:
        numba.set_num_threads(old)


def test_kernel_writes_every_entry():
    B, N, d = 70, 4, 3
    rng = np.random.default_rng(41)
    w = rng.standard_normal((B, d))  # (B, d)
    s, inc = rng.bit_generator.state["state"]["state"], rng.bit_generator.state["state"]["inc"]
    st = np.array([s >> 64, s % 2**64, inc >> 64, inc % 2**64], dtype=np.uint64)  # (4,)
    tok = np.full((B, N + 1, d + 1), np.nan)  # (B, T, D)
    tgt = np.full(B, np.nan)  # (B,)
    numba_draw.draw_kernel(st, w, -0.5, 1.0, numba_draw.chunking(B)[0], tok, tgt)
    assert np.all(np.isfinite(tok)) and np.all(np.isfinite(tgt))
    x = rng.uniform(-0.5, 0.5, size=(B, N + 1, d))  # (B, T, d) the same stream, by NumPy
    np.testing.assert_array_equal(tok[..., :d], x)
    np.testing.assert_array_equal(tok[:, -1, d], 0.0)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 110, 12345, 2**40 + 7, 2**64 - 1])
def test_jump_ahead_equals_numpy_advance(n):
    bg = np.random.PCG64(51)
    s, inc = bg.state["state"]["state"], bg.state["state"]["inc"]
    hi, lo = numba_draw.pcg64_jump(np.uint64(s >> 64), np.uint64(s % 2**64), np.uint64(inc >> 64),
                                   np.uint64(inc % 2**64), np.uint64(n))
    bg.advance(n)
    assert (int(hi) << 64) + int(lo) == bg.state["state"]["state"]


@pytest.mark.parametrize("make_rng, kwargs", [
    (lambda: np.random.Generator(np.random.MT19937(3)), {}),  # not PCG64
    (lambda: np.random.Generator(np.random.PCG64DXSM(3)), {}),  # another 128-bit LCG output
    (lambda: np.random.RandomState(3), {}),  # the legacy interface
    (lambda: np.random.default_rng(3), {"distractors": 2}),
    (lambda: np.random.default_rng(3), {"weight_scale": np.array([1.0, 2.0, 0.5])}),
    (lambda: np.random.default_rng(3), {"weight_scale": np.longdouble(2.0)}),  # a long double w
])
def test_fallbacks_give_the_oracle_draw(make_rng, kwargs):
    rng_ref, rng_got = make_rng(), make_rng()
    tok_ref, y_ref = oracle_tasks(rng_ref, 12, 5, 3, **kwargs)
    tok_got, y_got = numba_draw.linear_regression_tasks(rng_got, 12, 5, 3, **kwargs)
    assert_same_bits(tok_got, tok_ref)
    assert_same_bits(y_got, y_ref)
    np.testing.assert_array_equal(rng_got.random(8), rng_ref.random(8))  # the same state after


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch": 0}, ValueError, "batch"),
    ({"num_context": -1}, ValueError, "num_context"),
    ({"input_dim": 0}, ValueError, "input_dim"),
    ({"distractors": 6}, ValueError, "distractors"),
    ({"input_range": -1.0}, ValueError, "high - low"),  # NumPy's uniform
    ({"input_range": float("nan")}, OverflowError, "range"),
    ({"weight_scale": 10**400}, OverflowError, None),  # NumPy's product
])
def test_bad_arguments_raise_as_in_the_oracle(kwargs, error, match):
    args = {"batch": 4, "num_context": 5, "input_dim": 3, **kwargs}
    states = []
    for draw in (oracle_tasks, numba_draw.linear_regression_tasks):
        rng = np.random.default_rng(0)
        with pytest.raises(error, match=match):
            draw(rng, **args)
        states.append(rng.bit_generator.state)
    assert states[0] == states[1]  # w drawn or not, as in the oracle


def test_task_source_uses_a_given_drawer_with_the_same_batches():
    task = TaskConfig(input_dim=4, num_context=6, input_range=1.3)
    source = TaskSource(task, 37)
    rng_ref, rng_got = np.random.default_rng(61), np.random.default_rng(61)
    for step in range(3):
        tok_ref, y_ref = source.next_batch(rng_ref, step)
        tok_got, y_got = source.next_batch(rng_got, step, draw=numba_draw.linear_regression_tasks)
        assert_same_bits(tok_got, tok_ref)
        assert_same_bits(y_got, y_ref)
    assert rng_got.bit_generator.state == rng_ref.bit_generator.state


class WithoutDrawer:
    """The numba-cpu backend without its linear_regression_tasks: train() draws with the oracle."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        if name == "linear_regression_tasks":
            raise AttributeError(name)
        return getattr(self.backend, name)


def test_training_with_the_drawer_equals_training_on_the_oracle_batches():
    backend = get_backend("numba-cpu")
    assert backend.linear_regression_tasks is numba_draw.linear_regression_tasks
    calls = []

    class Counting(WithoutDrawer):
        def linear_regression_tasks(self, *args, **kwargs):
            calls.append(args[1])
            return self.backend.linear_regression_tasks(*args, **kwargs)

    task = TaskConfig(input_dim=5, num_context=7)
    cfg = lsa_config(task, num_layers=2)
    tc = TrainConfig(steps=3, batch=70, eval_every=10, checkpoint_every=1000, lr=1e-2, grad_clip=10.0)
    got = train(cfg, tc, TaskSource(task, 70), 8, Counting(backend), None, None, progress=False)
    ref = train(cfg, tc, TaskSource(task, 70), 8, WithoutDrawer(backend), None, None, progress=False)
    assert calls == [70, 70, 70, 70]  # the compile warm-up's draw from a copy of the Generator, then 3 steps
    for k in ref.params:
        np.testing.assert_array_equal(got.params[k], ref.params[k])
    other = train(cfg, tc, TaskSource(task, 70), 9, Counting(backend), None, None, progress=False)
    assert not np.array_equal(other.params["layer0.attn.W_q"], ref.params["layer0.attn.W_q"])
