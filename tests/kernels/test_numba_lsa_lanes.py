"""The lane-tuple products of the linear-self-attention kernel (kernels/numba/lsa_products.py) against
einsum, lane by lane: uneven shapes, partial row counts (even and odd: the products take rows in
pairs), accumulation, and NaN-poisoned outputs."""
import numpy as np
import pytest
from numba import njit

from kernels.numba import lsa_lanes, lsa_products
from kernels.numba.lsa_lanes import lane_count

ROWS, D = 7, 5  # different; products read only the first `used` rows (4 or 5 below)
# widths around the products' block of four output columns: a remainder only, one block and a
# remainder of one or two, whole blocks, two blocks and a remainder of three
WIDTHS = [3, 5, 6, 8, 11]


def lane_arrays(rng, dtype, D=D):
    LANES = lane_count(dtype)  # 8 in float64, 16 in float32: both widths of the helpers run
    X = rng.standard_normal((ROWS, D, LANES)).astype(dtype)  # (rows, D, LANES)
    Y = rng.standard_normal((ROWS, D, LANES)).astype(dtype)  # (rows, D, LANES)
    A = rng.standard_normal((D, D, LANES)).astype(dtype)  # (D, D, LANES) per task
    W = rng.standard_normal((D, D)).astype(dtype)  # (D, D) shared
    return X, Y, A, W


def rtol(dtype):
    return 1e-12 if dtype == np.float64 else 1e-5


@pytest.mark.parametrize("used", [4, 5])
@pytest.mark.parametrize("D", WIDTHS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_mul_shared_and_mul_lanes_match_einsum(dtype, accumulate, D, used, rng):
    X, _, A, W = lane_arrays(rng, dtype, D)
    start = rng.standard_normal(X.shape).astype(dtype)  # (rows, D, LANES)
    with lsa_lanes.slp_vectorizer():
        for product, want in ((lsa_products.mul_shared, np.einsum("tin,ik->tkn", X[:used], W)),
                              (lsa_products.mul_lanes, np.einsum("tin,ikn->tkn", X[:used], A))):
            out = start.copy() if accumulate else np.full_like(start, np.nan)
            product(X, used, W if product is lsa_products.mul_shared else A, out, accumulate)
            if accumulate:
                want = want + start[:used]
            np.testing.assert_allclose(out[:used], want, rtol=rtol(dtype), atol=rtol(dtype))
            if accumulate:  # rows past used are left as they were
                np.testing.assert_array_equal(out[used:], start[used:])
            else:
                assert np.isnan(out[used:]).all()


@pytest.mark.parametrize("used", [4, 5])
@pytest.mark.parametrize("D", WIDTHS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_add_at_b_and_gram_match_einsum(dtype, D, used, rng):
    X, Y, A, _ = lane_arrays(rng, dtype, D)
    G = A.copy()
    with lsa_lanes.slp_vectorizer():
        lsa_products.add_at_b(X, Y, used, G)
        gram = np.full(A.shape, np.nan, dtype)
        lsa_products.gram(X, used, gram)
    want_g = A + np.einsum("tin,tkn->ikn", X[:used], Y[:used])
    np.testing.assert_allclose(G, want_g, rtol=rtol(dtype), atol=rtol(dtype))
    want_gram = np.einsum("sin,skn->ikn", X[:used], X[:used])  # (D, D, LANES)
    np.testing.assert_allclose(gram, want_gram, rtol=rtol(dtype), atol=rtol(dtype))  # f32: cancellation
    np.testing.assert_array_equal(gram, gram.transpose(1, 0, 2))  # mirrored exactly


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_products_refuse_a_lane_axis_that_is_not_the_lane_count(dtype, rng):
    """The products address their columns with the lane count as a constant stride: an array
    whose last axis holds another count is refused, not read at the wrong places."""
    X, Y, A, W = lane_arrays(rng, dtype)
    short = np.ascontiguousarray(X[:, :, :-1])  # one lane fewer
    with lsa_lanes.slp_vectorizer():
        for call in (lambda: lsa_products.mul_shared(short, 4, W, np.zeros_like(short), False),
                     lambda: lsa_products.mul_lanes(X, 4, np.ascontiguousarray(A[:, :, :-1]), np.zeros_like(X), False),
                     lambda: lsa_products.add_at_b(X, short, 4, A.copy()),
                     lambda: lsa_products.gram(short, 4, np.zeros((D, D, short.shape[2]), dtype))):
            with pytest.raises(ValueError, match="lane count"):
                call()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_lanes_do_not_mix(dtype, rng):
    """A task in one lane changes only that lane's products, the last lane (15 in float32) too."""
    X, _, A, _ = lane_arrays(rng, dtype)
    LANES = X.shape[-1]
    for lane in (3, LANES - 1):
        outs = []
        for X_ in (X, X.copy()):
            if outs:
                X_[:, :, lane] += 1.0
            out = np.empty((ROWS, D, LANES), dtype)
            gram = np.empty((D, D, LANES), dtype)
            with lsa_lanes.slp_vectorizer():
                lsa_products.mul_lanes(X_, ROWS, A, out, False)
                lsa_products.gram(X_, ROWS, gram)
            outs.append((out, gram))
        for before, after in zip(*outs):
            changed = np.any(before != after, axis=tuple(range(before.ndim - 1)))  # (LANES,)
            assert changed.tolist() == [j == lane for j in range(LANES)]


def test_lane_helpers_refuse_python_calls():
    with pytest.raises(TypeError, match="lanes: a Numba lane helper"):
        lsa_lanes.lanes(np.zeros((1, 1, 8)), 0, 0)


@njit
def _clip_and_mask(Z, D_, c, Xn, G):
    """Xn = clip_lanes(Z), G = unclipped(D_, Z) entry by entry of (rows, cols, NL) arrays."""
    for r in range(Z.shape[0]):
        for k in range(Z.shape[1]):
            lsa_lanes.store(Xn, r, k, lsa_lanes.clip_lanes(lsa_lanes.lanes(Z, r, k), c))
            lsa_lanes.store(G, r, k, lsa_lanes.unclipped(lsa_lanes.lanes(D_, r, k), lsa_lanes.lanes(Z, r, k), c))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_clip_lanes_and_unclipped_match_numpy(dtype, rng):
    """Token clipping and its gradient mask per lane, as refimpl.layers: np.clip keeps NaN, the values
    at +-c pass, and a clipped entry's gradient is exactly 0 (also where the gradient is NaN)."""
    LANES, c = lane_count(dtype), dtype(1.5)
    Z = (3 * rng.standard_normal((3, 2, LANES))).astype(dtype)  # (rows, cols, LANES)
    Z[0, 0, :4] = [c, -c, np.nan, np.inf]
    D_ = rng.standard_normal(Z.shape).astype(dtype)
    D_[1, 1, -1] = np.nan
    Z[1, 1, -1] = 10  # a NaN gradient through a clipped entry: 0
    Xn, G = np.full_like(Z, 7), np.full_like(Z, 7)
    with lsa_lanes.slp_vectorizer():
        _clip_and_mask(Z, D_, c, Xn, G)
    np.testing.assert_array_equal(Xn, np.clip(Z, -c, c))
    np.testing.assert_array_equal(G, np.where(np.abs(Z) > c, 0, D_))
    assert Xn.dtype == G.dtype == dtype
