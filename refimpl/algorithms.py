"""The second-order and classical in-context learners of SPEC 4.4, for every prefix of a prompt.

A prompt is n pairs (x_i, y_i); position i (0-based) predicts y_i from the first i pairs (its
prefix) at the query x_i. With S_i = X_i^T X_i and b_i = X_i^T y_i over that prefix:
    Iterative Newton  M_0 = alpha S, M_{k+1} = M_k (2I - S M_k), w_k = M_k b,
                      alpha = c / ||S S^T||_F with c = 1 (Fu et al.'s released code) or 2;
                      identity: I - M_k S = (I - alpha S^2)^(2^k), so every k follows from one
                      eigendecomposition S = V diag(lam) V^T: M_k = V diag((1 - (1 - alpha lam^2)^(2^k)) / lam) V^T
    GD                w_0 = 0, w_t = w_{t-1} - eta (S w_{t-1} - b) (no 1/n), eta = 0.01;
                      closed form w_t = [I - (I - eta S)^t] S^+ b = V diag((1 - (1 - eta lam)^t) / lam) V^T b
    online GD         one pass over the prefix: w <- w - eta_j (x_j . w - y_j) x_j, eta_j = eta or 1/||x_j||^2
    least squares     the minimum-norm solution S^+ b
    averaging         (1/i) sum_j y_j x_j
    3-NN              the mean label of the 3 nearest prefix inputs (of all of them when i < 3)
Every learner predicts 0 from the empty prefix (i = 0). Eigen-directions with lam <= EIG_RTOL lam_max
count as the null space of S (the direction b has no part in).

Shape legend: B prompts, n pairs (positions), d input dims, K values of k or t.
"""
import numpy as np

from .validate import check_array, check_positive_int

EIG_RTOL = 1e-10  # eigenvalues of S below this fraction of the largest are treated as 0
GD_ETA = 0.01  # Fu et al.'s GD step (no 1/n)
NEWTON_ALPHA_SCALE = 1.0  # alpha = 1 / ||S S^T||_F (their code); 2 is the variant


def _check_prompts(x, y):
    check_array("x", x, ndim=3)
    check_array("y", y, shape=x.shape[:2])


def prefix_moments(x, y):
    """S (B, n, d, d) and b (B, n, d) of every prefix: S[:, i] = sum_{j<i} x_j x_j^T, b[:, i] = sum_{j<i} y_j x_j."""
    _check_prompts(x, y)
    outer = np.einsum("bnd,bne->bnde", x, x)  # (B, n, d, d)
    S = np.cumsum(outer, axis=1) - outer  # exclusive prefix sums: position i sees pairs 0..i-1
    xy = x * y[..., None]  # (B, n, d)
    b = np.cumsum(xy, axis=1) - xy  # (B, n, d)
    S[:, 0], b[:, 0] = 0.0, 0.0  # exact zeros for the empty prefix
    return S, b


def prefix_eigen(S):
    """Eigendecomposition of every S (B, n, d, d): lam (B, n, d), V (B, n, d, d), and a mask
    (B, n, d) of the eigenvalues counted as nonzero (above EIG_RTOL times the largest)."""
    S = 0.5 * (S + np.swapaxes(S, -1, -2))  # symmetric to rounding
    lam, V = np.linalg.eigh(S)  # (B, n, d), (B, n, d, d)
    top = lam[..., -1:]  # (B, n, 1)
    nonzero = (lam > EIG_RTOL * top) & (top > 0)  # (B, n, d)
    return lam, V, nonzero


def prefix_spectra(x, y):
    """Everything the spectral learners need, computed once per set of prompts: S, b (prefix_moments),
    lam, V, nonzero (prefix_eigen), b and x_i in the eigenbasis (bV, xV: (B, n, d)). Pass it as
    `spectra` to newton_predictions, gd_predictions and least_squares_predictions."""
    S, b = prefix_moments(x, y)  # (B, n, d, d), (B, n, d)
    lam, V, nonzero = prefix_eigen(S)
    return {"S": S, "b": b, "lam": lam, "V": V, "nonzero": nonzero,
            "bV": np.einsum("bnde,bnd->bne", V, b), "xV": np.einsum("bnd,bnde->bne", x, V)}


def _spectral_predict(sp, coef):
    """Predictions (K, B, n) = x_i . V diag(coef) V^T b for spectral coefficients coef (K, B, n, d)."""
    return np.einsum("bne,kbne,bne->kbn", sp["xV"], coef, sp["bV"])  # (K, B, n)


def newton_alpha(S, scale=NEWTON_ALPHA_SCALE):
    """alpha = scale / ||S S^T||_F (B, n); 0 for the empty prefix (where S = 0)."""
    norm = np.linalg.norm(S @ np.swapaxes(S, -1, -2), axis=(-2, -1))  # (B, n)
    return np.divide(scale, norm, out=np.zeros_like(norm), where=norm > 0)


def newton_predictions(x, y, ks, alpha_scale=NEWTON_ALPHA_SCALE, spectra=None):
    """Iterative Newton through the identity I - M_k S = (I - alpha S^2)^(2^k): predictions
    (K, B, n) for every k in `ks` from one eigendecomposition per prefix (`spectra`, or computed)."""
    ks = np.asarray(ks, dtype=int)  # (K,)
    sp = prefix_spectra(x, y) if spectra is None else spectra
    lam, nonzero = sp["lam"], sp["nonzero"]
    alpha = newton_alpha(sp["S"], alpha_scale)  # (B, n)
    u = np.where(nonzero, alpha[..., None] * lam**2, 0.0)  # (B, n, d): in [0, 1] (in [0, 2] with alpha_scale 2)
    # 1 - (1 - u)^(2^k) = -expm1(2^k log|1 - u|) for k >= 1 (an even power): no cancellation for tiny u
    with np.errstate(divide="ignore"):
        log_abs = np.where(u <= 1, np.log1p(-np.minimum(u, 1.0)), np.log(np.abs(u - 1.0)))  # (B, n, d)
    power = np.exp2(ks.astype(float))[:, None, None, None]  # (K, 1, 1, 1)
    gain = np.where(power == 1, u[None], -np.expm1(power * log_abs[None]))  # (K, B, n, d); k = 0: u
    coef = np.where(nonzero[None], gain / np.where(nonzero, lam, 1.0)[None], 0.0)  # (K, B, n, d)
    return _spectral_predict(sp, coef)


def newton_iterative(x, y, k, alpha_scale=NEWTON_ALPHA_SCALE):
    """Iterative Newton by its recursion, k iterations: predictions (B, n) (the reference for the identity)."""
    k = check_positive_int("k", k, minimum=0)
    S, b = prefix_moments(x, y)  # (B, n, d, d), (B, n, d)
    alpha = newton_alpha(S, alpha_scale)  # (B, n)
    M = alpha[..., None, None] * S  # (B, n, d, d): M_0 (S symmetric, so S^T = S)
    I2 = 2.0 * np.eye(x.shape[-1])  # (d, d)
    for _ in range(k):
        M = M @ (I2 - S @ M)  # (B, n, d, d)
    w = np.einsum("bnde,bne->bnd", M, b)  # (B, n, d)
    return np.einsum("bnd,bnd->bn", x, w)  # (B, n)


def gd_predictions(x, y, ts, eta=GD_ETA, spectra=None):
    """GD from w_0 = 0 in closed form, w_t = [I - (I - eta S)^t] S^+ b: predictions (K, B, n) for
    every t in `ts`."""
    ts = np.asarray(ts, dtype=float)  # (K,)
    sp = prefix_spectra(x, y) if spectra is None else spectra
    lam, nonzero = sp["lam"], sp["nonzero"]
    r = np.where(nonzero, 1.0 - eta * lam, 1.0)  # (B, n, d): the contraction per direction
    t = ts[:, None, None, None]  # (K, 1, 1, 1)
    small = np.abs(eta * lam) < 0.5  # log1p is accurate there; elsewhere the power directly
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        gain = np.where(small[None], -np.expm1(t * np.log1p(-np.where(small, eta * lam, 0.0))[None]),
                        1.0 - np.power(r[None], t))  # (K, B, n, d): 1 - (1 - eta lam)^t
        coef = np.where(nonzero[None], gain / np.where(nonzero, lam, 1.0)[None], 0.0)  # (K, B, n, d)
    return _spectral_predict(sp, coef)


def gd_stable(x, eta=GD_ETA):
    """Per prompt (B,): whether GD at step eta converges on every prefix, eta lambda_max(S) <= 2 for
    S of the longest prefix (its first n - 1 pairs; S only grows with the prefix). Elsewhere
    (1 - eta lambda)^t grows without bound in t."""
    check_array("x", x, ndim=3)
    S = np.einsum("bnd,bne->bde", x[:, :-1], x[:, :-1])  # (B, d, d)
    return eta * np.linalg.eigvalsh(S)[:, -1] <= 2.0


def gd_iterative(x, y, t, eta=GD_ETA):
    """GD by its recursion, t steps: predictions (B, n) (the reference for the closed form)."""
    t = check_positive_int("t", t, minimum=0)
    S, b = prefix_moments(x, y)
    w = np.zeros(b.shape)  # (B, n, d)
    for _ in range(t):
        w = w - eta * (np.einsum("bnde,bne->bnd", S, w) - b)
    return np.einsum("bnd,bnd->bn", x, w)  # (B, n)


def least_squares_predictions(x, y, spectra=None):
    """The minimum-norm least-squares fit S^+ b of every prefix: predictions (B, n)."""
    sp = prefix_spectra(x, y) if spectra is None else spectra
    nonzero = sp["nonzero"]
    coef = np.where(nonzero, 1.0 / np.where(nonzero, sp["lam"], 1.0), 0.0)[None]  # (1, B, n, d)
    return _spectral_predict(sp, coef)[0]


def online_gd_predictions(x, y, eta=GD_ETA, normalised=False):
    """One pass of online GD over each prompt: w <- w - eta_j (x_j . w - y_j) x_j with eta_j = eta,
    or 1 / ||x_j||^2 when `normalised` (then w interpolates (x_j, y_j) after the step). Position i
    predicts with w after pairs 0..i-1: predictions (B, n)."""
    _check_prompts(x, y)
    B, n, d = x.shape
    w = np.zeros((B, d))  # (B, d)
    pred = np.zeros((B, n))  # (B, n)
    for i in range(n):
        xi = x[:, i]  # (B, d)
        pred[:, i] = np.einsum("bd,bd->b", xi, w)
        step = 1.0 / np.einsum("bd,bd->b", xi, xi) if normalised else np.full(B, float(eta))  # (B,)
        w = w - (step * (pred[:, i] - y[:, i]))[:, None] * xi
    return pred


def averaging_predictions(x, y):
    """w_i = (1/i) sum_{j<i} y_j x_j: predictions (B, n), 0 at i = 0."""
    _, b = prefix_moments(x, y)  # (B, n, d)
    count = np.arange(x.shape[1], dtype=float)  # (n,)
    w = b / np.maximum(count, 1.0)[None, :, None]  # (B, n, d)
    return np.einsum("bnd,bnd->bn", x, w)


def nearest_neighbour_predictions(x, y, k=3):
    """The mean label of the k nearest prefix inputs (Euclidean; all of them when i < k): (B, n)."""
    _check_prompts(x, y)
    k = check_positive_int("k", k)
    B, n, _ = x.shape
    dist = np.sum((x[:, :, None, :] - x[:, None, :, :]) ** 2, axis=-1)  # (B, n, n): query i, pair j
    dist = np.where(np.tril(np.ones((n, n), dtype=bool), k=-1)[None], dist, np.inf)  # only j < i
    order = np.argsort(dist, axis=-1, kind="stable")[..., :k]  # (B, n, k)
    used = np.take_along_axis(np.isfinite(dist), order, axis=-1)  # (B, n, k)
    labels = np.take_along_axis(np.broadcast_to(y[:, None, :], (B, n, n)), order, axis=-1)  # (B, n, k)
    count = used.sum(axis=-1)  # (B, n)
    return np.where(count > 0, np.sum(labels * used, axis=-1) / np.maximum(count, 1), 0.0)


def all_learners(x, y, eta=GD_ETA, spectra=None):
    """{name: predictions (B, n)} of the classical learners (least squares, online GD both ways,
    averaging, 3-NN); Newton and GD take their k / t grids separately."""
    return {"least_squares": least_squares_predictions(x, y, spectra),
            "online_gd": online_gd_predictions(x, y, eta),
            "online_gd_normalised": online_gd_predictions(x, y, normalised=True),
            "averaging": averaging_predictions(x, y),
            "3nn": nearest_neighbour_predictions(x, y, 3)}
