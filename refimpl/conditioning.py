"""How GD++ conditions the data (SPEC 5, the paper's appendix A.10 and figure 13).

A GD++ layer moves every token's x part by x <- x (I - gamma S), S = X^T X of the context X (N, d).
The new context matrix X' = X (I - gamma S) has X'^T X' = (I - gamma S) S (I - gamma S): the same
eigenvectors, each eigenvalue lambda mapped to

    f(lambda, gamma) = lambda (1 - gamma lambda)^2.

Several layers apply the map in turn with their own gamma. The condition number of S is
kappa = lambda_max / lambda_min. The paper bounds the transformed one from the extreme eigenvalues
over all tasks, lambda_n <= lambda <= lambda_1: f rises to its local maximum at lambda = 1/(3 gamma),
falls to 0 at 1/gamma and rises again, so over [lambda_n, lambda_1]

    max f = f(1/(3 gamma)) = 4 / (27 gamma) if 1/(3 gamma) lies inside, else the larger end value
    min f = 0 if 1/gamma lies inside, else the smaller end value,

and kappa++(gamma) = max f / min f (the paper writes f(1/(3 gamma)) / min(f(lambda_1), f(lambda_n)),
which is this when 1/(3 gamma) is inside and 1/gamma is not). The optimum gamma minimises it.

Shape legend: B tasks, N context pairs, d input dims, G grid points.
"""
import numpy as np

from .validate import check_array


def gdpp_eigenvalue_map(lam, gamma):
    """f(lambda, gamma) = lambda (1 - gamma lambda)^2: an eigenvalue of X^T X after one GD++ layer."""
    lam = np.asarray(lam, dtype=np.float64)
    return lam * (1.0 - gamma * lam) ** 2


def gram_eigenvalues(tokens):
    """Eigenvalues (B, d), ascending, of S = X^T X of each task's context (all tokens but the last)."""
    check_array("tokens", tokens, ndim=3)
    X = tokens[:, :-1, :-1]  # (B, N, d)
    S = np.einsum("bnd,bne->bde", X, X)  # (B, d, d)
    return np.linalg.eigvalsh(S)  # (B, d)


def gdpp_transformed_eigenvalues(eigs, gammas):
    """[eigs, after layer 1, ..., after layer L]: the map applied in turn with each layer's gamma,
    each (B, d), ascending per task."""
    out = [np.asarray(eigs, dtype=np.float64)]
    for gamma in gammas:
        out.append(np.sort(gdpp_eigenvalue_map(out[-1], float(gamma)), axis=-1))
    return out


def condition_numbers(eigs):
    """kappa = lambda_max / lambda_min per task (B,); inf where lambda_min <= 0 (a singular S)."""
    eigs = np.asarray(eigs, dtype=np.float64)  # (B, d)
    lo, hi = eigs.min(axis=-1), eigs.max(axis=-1)  # (B,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lo > 0, hi / np.where(lo > 0, lo, 1.0), np.inf)


def extreme_condition_bound(gamma, lam_min, lam_max):
    """kappa++(gamma) from the extreme eigenvalues (module docstring), for gamma an array (G,)."""
    if not 0 < lam_min <= lam_max:
        raise ValueError(f"lam_min, lam_max: expected 0 < lam_min <= lam_max, got {lam_min!r}, {lam_max!r}")
    gamma = np.asarray(gamma, dtype=np.float64)  # (G,)
    ends = np.stack([gdpp_eigenvalue_map(lam_min, gamma), gdpp_eigenvalue_map(lam_max, gamma)])  # (2, G)
    peak = 1.0 / (3.0 * gamma)  # (G,) local maximum of f
    root = 1.0 / gamma  # (G,) zero of f
    hi = np.where((lam_min <= peak) & (peak <= lam_max), 4.0 / (27.0 * gamma), ends.max(axis=0))  # (G,)
    lo = np.where((lam_min <= root) & (root <= lam_max), 0.0, ends.min(axis=0))  # (G,)
    with np.errstate(divide="ignore"):
        return np.where(lo > 0, hi / np.where(lo > 0, lo, 1.0), np.inf)


def optimal_gamma(lam_min, lam_max, points=20001):
    """(gamma*, kappa++(gamma*)): the minimum of extreme_condition_bound on a log grid of gamma from
    1e-3 / lam_max to 1e3 / lam_max, refined by a bounded scalar search between its neighbours."""
    from scipy.optimize import minimize_scalar
    grid = np.logspace(-3, 3, points) / lam_max  # (G,)
    k = extreme_condition_bound(grid, lam_min, lam_max)
    i = int(np.argmin(k))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, points - 1)]
    res = minimize_scalar(lambda g: float(extreme_condition_bound(np.array([g]), lam_min, lam_max)[0]),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-12 * hi})
    best = float(res.x) if res.fun <= k[i] else float(grid[i])
    return best, float(extreme_condition_bound(np.array([best]), lam_min, lam_max)[0])
