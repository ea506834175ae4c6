"""Baselines of SPEC 4.1-4.3: gradient descent written as LSA weights (Proposition 1), its learning
rate (grid search and closed form), GD++ and its trained scalars.

Shape legend: B tasks, N context pairs, d input dims, T = N + 1 tokens, D = d + 1, L layers/steps,
G grid points. GD acts on L(W) = 1/(2N) sum_i (W x_i - y_i)^2 for each task separately.
"""
import numpy as np

from .config import ModelConfig
from .validate import check_array, check_positive_int


def eta_grid(size=250, start=0.001, spacing=0.1):
    """SPEC 4.1: eta = 0.001 + 0.1 k, k = 0 .. 249."""
    return start + spacing * np.arange(size)  # (G,)


# ------------------------------------------------------------------------------------ GD (4.1)
def gd_model_config(input_dim, steps=1, dampening=1.0, y_update=False, token_clip=0.0):
    """One weight-tied LSA layer (one head, K = D) applied `steps` times: `steps` GD steps."""
    D = input_dim + 1
    return ModelConfig(token_dim=D, num_layers=steps, weight_tied=True, key_size=D,
                       dampening=dampening, y_update=y_update, token_clip=token_clip)


def gd_params(input_dim, eta, num_context, w0=None, dtype=np.float64):
    """Proposition 1: W_Q = W_K = diag(1_d, 0); W_V[:d, d] = w_0, W_V[d, d] = -1; W_P[d, d] = eta/N,
    so that W_KQ = W_q W_k^T = diag(1_d, 0) and W_PV = W_v W_p is zero but its last column,
    W_PV[:, d] = (eta/N) (w_0, -1).

    Names as `refimpl.params` for `gd_model_config` (layer0 shared by every application).
    """
    d, D = check_positive_int("input_dim", input_dim), input_dim + 1
    N = check_positive_int("num_context", num_context)
    w0 = np.zeros(d) if w0 is None else np.asarray(w0, dtype=np.float64)
    if w0.shape != (d,):
        raise ValueError(f"w0: expected shape ({d},), got {w0.shape}")
    x_part = np.diag(np.r_[np.ones(d), 0.0])  # (D, D): W_q = W_k, the projection onto the x part
    W_v = np.zeros((D, D))
    W_v[:d, d] = w0
    W_v[d, d] = -1.0
    W_p = np.zeros((D, D))
    W_p[d, d] = eta / N
    return {"layer0.attn.W_q": x_part.astype(dtype), "layer0.attn.W_k": x_part.astype(dtype),
            "layer0.attn.W_v": W_v.astype(dtype), "layer0.attn.W_p": W_p.astype(dtype)}


def gd_start_tokens(tokens, w0):
    """With an initial model W_0 the query's label slot starts at -W_0 x_q instead of 0."""
    check_array("tokens", tokens, ndim=3)
    out = tokens.copy()  # (B, T, D)
    out[:, -1, -1] = -(out[:, -1, :-1] @ np.asarray(w0))
    return out


def gd_explicit(tokens, eta, steps, w0=None):
    """Plain GD on each task's context, written without attention: predictions (L, B) after each
    step. W_{k+1} = W_k - eta * (1/N) X^T (X W_k - y)."""
    check_array("tokens", tokens, ndim=3)
    return _gd_on_gram(*context_gram(tokens), eta, steps, w0)


def context_gram(tokens):
    """(S = X^T X (B, d, d), c = X^T y (B, d), x_q (B, d), N) of each task's context: all that GD on
    the context needs, since X^T (X W - y) = S W - c."""
    X, y = tokens[:, :-1, :-1], tokens[:, :-1, -1]  # (B, N, d), (B, N)
    S = np.einsum("bnd,bne->bde", X, X)  # (B, d, d)
    c = np.einsum("bnd,bn->bd", X, y)  # (B, d)
    return S, c, tokens[:, -1, :-1], X.shape[1]


def _gd_on_gram(S, c, x_q, N, eta, steps, w0=None):
    """gd_explicit from context_gram's (S, c, x_q, N): predictions (L, B)."""
    B, d = c.shape
    W = np.zeros((B, d)) if w0 is None else np.broadcast_to(np.asarray(w0, float), (B, d)).copy()
    preds = np.empty((check_positive_int("steps", steps), B))  # (L, B)
    for k in range(steps):
        grad = -c if k == 0 and w0 is None else (S @ W[:, :, None])[:, :, 0] - c  # (B, d); S 0 = 0
        W = W - (eta / N) * grad  # (B, d)
        preds[k] = np.einsum("bd,bd->b", x_q, W)
    return preds


def grid_search_eta(tokens, targets, steps=1, grid=None):
    """(best eta, losses (G,)): the eta of `steps`-step GD with the least mean 0.5 (y_hat - y)^2."""
    check_array("tokens", tokens, ndim=3)
    grid = eta_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    gram = context_gram(tokens)  # once for the whole grid
    losses = np.empty(grid.shape)  # (G,)
    with np.errstate(over="ignore", invalid="ignore"):
        for i, eta in enumerate(grid):
            r = _gd_on_gram(*gram, eta, steps)[-1] - targets  # (B,)
            losses[i] = 0.5 * np.mean(r * r)
    losses = np.where(np.isfinite(losses), losses, np.inf)
    return float(grid[int(np.argmin(losses))]), losses


def closed_form_eta(tokens):
    """One GD step from W = 0: eta/N = E tr S / E tr S^2, S = X^T X, expectations over the tasks."""
    check_array("tokens", tokens, ndim=3)
    X = tokens[:, :-1, :-1]  # (B, N, d)
    S = np.einsum("bnd,bne->bde", X, X)  # (B, d, d)
    tr_S = np.einsum("bdd->b", S)  # (B,)
    tr_S2 = np.einsum("bde,bde->b", S, S)  # (B,) tr S^2 = ||S||_F^2 (S symmetric)
    return X.shape[1] * float(tr_S.mean() / tr_S2.mean())


def uniform_gram_moments(input_dim, num_context, input_range=1.0):
    """(E tr S, E tr S^2) of S = X^T X for x ~ U(-r/2, r/2)^d, N rows: with E x^2 = m2 = r^2/12 and
    E x^4 = m4 = r^4/80, E tr S = N d m2 and E tr S^2 = d (N m4 + N(N-1) m2^2) + d(d-1) N m2^2."""
    d, N, r = input_dim, num_context, input_range
    m2, m4 = r**2 / 12, r**4 / 80
    tr_S = N * d * m2
    tr_S2 = d * (N * m4 + N * (N - 1) * m2**2) + d * (d - 1) * N * m2**2
    return tr_S, tr_S2


def closed_form_eta_uniform(input_dim, num_context, input_range=1.0):
    """eta = N E tr S / E tr S^2 in exact expectation for x ~ U(-r/2, r/2)^d (uniform_gram_moments)."""
    tr_S, tr_S2 = uniform_gram_moments(input_dim, num_context, input_range)
    return num_context * tr_S / tr_S2


def expected_one_step_gd_loss_uniform(input_dim, num_context, eta, input_range=1.0, weight_scale=1.0):
    """E 0.5 (y_hat - y)^2 of one GD step from W = 0 at learning rate eta, over tasks with
    x ~ U(-r/2, r/2)^d and w ~ N(0, s^2 I) (SPEC 1.1, 4.1), in closed form.

    With c = eta/N the step gives W_1 = c S w (S = X^T X), so y_hat - y = x_q^T (c S - I) w; averaging
    over w, then over x_q (independent of X, E x_q x_q^T = m2 I):
        E loss = 0.5 s^2 m2 (c^2 E tr S^2 - 2 c E tr S + d),   m2 = r^2/12.
    For d = N = 10 this is SPEC 6's (r^2/24) (13.75 c^2 r^4 - 16.67 c r^2 + 10)."""
    d = check_positive_int("input_dim", input_dim)
    N = check_positive_int("num_context", num_context)
    for name, v in (("input_range", input_range), ("weight_scale", weight_scale)):
        if not v > 0:
            raise ValueError(f"{name}: expected a number > 0, got {v!r}")
    tr_S, tr_S2 = uniform_gram_moments(d, N, input_range)
    c = np.asarray(eta, dtype=np.float64) / N
    return 0.5 * weight_scale**2 * (input_range**2 / 12) * (c**2 * tr_S2 - 2 * c * tr_S + d)


# -------------------------------------------------------------------------------- GD++ (4.2)
def gdpp_model_config(input_dim, num_layers, tied, token_clip=0.0):
    D = input_dim + 1
    return ModelConfig(token_dim=D, num_layers=num_layers, weight_tied=tied, key_size=D,
                       token_clip=token_clip)


def gdpp_params(input_dim, etas, gammas, num_context, dtype=np.float64):
    """Per layer l: W_Q = W_K = diag(1_d, 0), W_V = diag(1_d, -1), W_P = diag(-gamma_l 1_d, eta_l/N),
    so W_KQ = diag(1_d, 0) and W_PV = W_v W_p = diag(-gamma_l 1_d, -eta_l/N).

    One (eta, gamma) pair gives the weight-tied model's single parameter set (layer0).
    """
    etas, gammas = np.atleast_1d(etas).astype(float), np.atleast_1d(gammas).astype(float)
    if etas.shape != gammas.shape or etas.ndim != 1:
        raise ValueError(f"etas, gammas: expected equal 1-D shapes, got {etas.shape} and {gammas.shape}")
    d, N = input_dim, num_context  # D = d + 1
    x_part = np.diag(np.r_[np.ones(d), 0.0])  # (D, D): W_q = W_k, the projection onto the x part
    W_v = np.diag(np.r_[np.ones(d), -1.0])  # (D, D)
    params = {}
    for p, (eta, gamma) in enumerate(zip(etas, gammas)):
        W_p = np.diag(np.r_[-gamma * np.ones(d), eta / N])  # (D, D)
        params.update({f"layer{p}.attn.W_q": x_part.astype(dtype), f"layer{p}.attn.W_k": x_part.astype(dtype),
                       f"layer{p}.attn.W_v": W_v.astype(dtype), f"layer{p}.attn.W_p": W_p.astype(dtype)})
    return params


def gdpp_explicit(tokens, etas, gammas):
    """GD++ without attention: per layer x_t <- (I - gamma X^T X) x_t and
    y_t <- y_t - (eta/N) sum_j (x_t . x_j) y_j, both from the layer's input. Read-outs (L, B)."""
    x, y = tokens[..., :-1].copy(), tokens[..., -1].copy()  # (B, T, d), (B, T)
    N = tokens.shape[1] - 1
    out = np.empty((len(etas), tokens.shape[0]))  # (L, B)
    for l, (eta, gamma) in enumerate(zip(etas, gammas)):
        Xc, yc = x[:, :N], y[:, :N]  # (B, N, d), (B, N)
        S = np.einsum("bnd,bne->bde", Xc, Xc)  # (B, d, d) X^T X
        Xy = np.einsum("bnd,bn->bd", Xc, yc)  # (B, d) X^T y
        y = y - (eta / N) * np.einsum("btd,bd->bt", x, Xy)
        x = x - gamma * np.einsum("btd,bde->bte", x, S)
        out[l] = -y[:, -1]
    return out


GDPP_ENTRIES = {
    "wv_wp": "the diagonals of W_V and W_P (one scalar for the x block, one for the y entry, of each)",
    "wp": "the diagonal of W_P only (W_V stays diag(1_d, -1))",
}


def gdpp_entries_init(eta0, num_context, num_sets, entries="wv_wp"):
    """GD++'s trainable entries at the SPEC 4.2 start (eta = eta0, gamma = eta0 / N^2), each (P,):
    p_x = -gamma and p_y = eta/N on the diagonal of W_P; with "wv_wp" also v_x = 1 and v_y = -1 on
    the diagonal of W_V."""
    if entries not in GDPP_ENTRIES:
        raise ValueError(f"entries: expected one of {sorted(GDPP_ENTRIES)}, got {entries!r}")
    N, P = num_context, num_sets
    scalars = {"p_x": np.full(P, -float(eta0) / N**2), "p_y": np.full(P, float(eta0) / N)}
    if entries == "wv_wp":
        scalars.update({"v_x": np.ones(P), "v_y": -np.ones(P)})
    return scalars


def _gdpp_value_diag(scalars):
    """(v_x (P,), v_y (P,)): W_V's trained diagonal, or diag(1_d, -1) where it is not trained ("wp")."""
    P = len(scalars["p_x"])
    return scalars.get("v_x", np.ones(P)), scalars.get("v_y", -np.ones(P))


def gdpp_entries_params(input_dim, scalars, dtype=np.float64):
    """Per set l: W_Q = W_K = diag(1_d, 0), W_V = diag(v_x 1_d, v_y), W_P = diag(p_x 1_d, p_y); v_x = 1
    and v_y = -1 where `scalars` has no such entry (the "wp" parametrisation)."""
    d, P = input_dim, len(scalars["p_x"])
    v_x, v_y = _gdpp_value_diag(scalars)  # (P,)
    x_part = np.diag(np.r_[np.ones(d), 0.0])  # (D, D): W_q = W_k, the projection onto the x part
    params = {}
    for p in range(P):
        W_v = np.diag(np.r_[v_x[p] * np.ones(d), v_y[p]])  # (D, D)
        W_p = np.diag(np.r_[scalars["p_x"][p] * np.ones(d), scalars["p_y"][p]])  # (D, D)
        params.update({f"layer{p}.attn.W_q": x_part.astype(dtype), f"layer{p}.attn.W_k": x_part.astype(dtype),
                       f"layer{p}.attn.W_v": W_v.astype(dtype), f"layer{p}.attn.W_p": W_p.astype(dtype)})
    return params


def gdpp_entries_effective(scalars, num_context):
    """(etas (P,), gammas (P,)) of the entries: the layer depends on W_PV = W_v W_p = diag(v_x p_x 1_d,
    v_y p_y) alone, which is diag(-gamma 1_d, -eta/N) in gdpp_params' form."""
    v_x, v_y = _gdpp_value_diag(scalars)  # (P,)
    return -num_context * scalars["p_y"] * v_y, -scalars["p_x"] * v_x


def gdpp_entry_grads(grads, input_dim, names):
    """Project the model's weight gradients onto the trained entries `names` (each (P,)): one scalar
    on the x block of the diagonal gets the trace of that block's gradient, the y entry its own,
    d/d p_x = tr dW_P[:d, :d], d/d p_y = dW_P[d, d], and likewise v_x, v_y from dW_V."""
    d = input_dim
    P = sum(1 for k in grads if k.endswith(".attn.W_p"))
    out = {k: np.empty(P) for k in names}  # (P,) each
    for p in range(P):
        for k in names:
            g = grads[f"layer{p}.attn.W_{k[0]}"]  # (D, D): W_p for p_*, W_v for v_*
            out[k][p] = np.trace(g[:d, :d]) if k.endswith("_x") else g[d, d]
    return out
