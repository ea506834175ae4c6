"""Deep and weight-tied LSA models on Gaussian and on ill-conditioned data (SPEC 1.5), matched layer
by layer to Iterative Newton and to GD (SPEC 4.4, 5): what neither paper did.

For each data family and each depth L in `layers`, a deep and a weight-tied LSA (D = K = d + 1, the
SPEC 3 Adam rules by depth) trains on fresh Gaussian prompts (a new rotation per batch for the
ill-conditioned family). Then, on the fixed evaluation prompts, every prefix length i = 0..n-1 is
fed as its own prompt (the first i pairs as context, x_i as the query; i = 0 predicts 0 and leaves
the query token as it is), and after every layer:
    read-out     -H[query, -1] (SPEC 2.6), and a least-squares probe with bias of the query's
                 hidden state, fitted on the first `probe_tasks` prompts (pooled over positions)
                 and evaluated on the others
    error        squared error / d over all positions (and at the last one, the training task)
    matches      SimE heatmaps layer x Newton k (1..23), layer x GD t (2^0..2^12 and 1, 50, .., 1300);
                 best k and t per layer, with their similarity
    weights      the GD / GD++ reading of each layer's W_KQ = W_q W_k^T, W_PV = W_v W_p: the label
                 step eta = -mean diag(W_KQ[:d,:d]) W_PV[-1,-1], the input step
                 gamma = -mean diag(W_KQ[:d,:d]) mean diag(W_PV[:d,:d]), and how close each d x d block
                 is to a multiple of the identity (1 = exactly)
"""
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import algorithms as alg
from refimpl import metrics
from refimpl.config import ModelConfig
from refimpl.fieldcheck import check_fields, check_items
from refimpl.gaussian import COVARIANCES, GaussianTaskConfig, GaussianTaskSource, constructed_tokens, eval_prompts, prefix_tokens
from refimpl.similarity import best_matches, layer_states, probe_fit, probe_predict, sime_heatmap
from iclgd.train import Diverged, TrainConfig, resolved_adam
from iclgd.experiments.common import mean_over_seeds, train_model
from iclgd.experiments.fu_algorithms import LINEAR_GRID, LOG_GRID


@dataclass(frozen=True)
class Config:
    task: GaussianTaskConfig = field(default_factory=lambda: GaussianTaskConfig(eval_tasks=2000))  # d 20, 41 pairs
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=2000, batch=256, eval_every=250, checkpoint_every=500))  # sized for a 2-core CPU (SPEC 3: 50 000 x 2048)
    families: tuple = ("isotropic", "ill_conditioned")  # task.covariance of each data family
    layers: tuple = (1, 2, 4, 8)  # depths L, each deep and weight-tied (tied1 = deep1, trained once); 1..8 fit no 2-core budget
    variants: tuple = ("deep", "tied")  # "deep" (L parameter sets) and / or "tied" (one set applied L times)
    token_clip: float = 50.0  # +-c after every attention when L > 3 (SPEC 3's 10 would clip labels of std sqrt(d))
    probe_tasks: int = 1000  # evaluation prompts that fit the probes; the rest evaluate everything
    curve_tasks: int = 500  # held-out prompts for the loss curve every train.eval_every steps
    newton_ks: tuple = tuple(range(1, 24))  # Newton iterations k compared with each layer (Fu et al.: 1..23)
    gd_log_grid: tuple = LOG_GRID  # GD steps t, 2^0..2^12
    gd_linear_grid: tuple = LINEAR_GRID  # GD steps t, {1, 50, ..., 1300}
    gd_eta: float = 0.01  # GD step (Fu et al.: 0.01, no 1/n)

    def __post_init__(self):
        check_fields(self, "", {"token_clip": ">= 0", "probe_tasks": ">= 1", "curve_tasks": ">= 1",
                                "gd_eta": "> 0"})
        check_items("families", self.families, str)
        if any(f not in COVARIANCES or f == "diagonal" for f in self.families):
            raise ValueError(f"families: expected items of ('isotropic', 'ill_conditioned'), got {list(self.families)!r}")
        check_items("layers", self.layers, int, ">= 1")
        check_items("variants", self.variants, str)
        if any(v not in ("deep", "tied") for v in self.variants):
            raise ValueError(f"variants: expected items of ('deep', 'tied'), got {list(self.variants)!r}")
        for key in ("newton_ks", "gd_log_grid", "gd_linear_grid"):
            check_items(key, getattr(self, key), int, ">= 0")
        if self.probe_tasks >= self.task.eval_tasks:
            raise ValueError(f"probe_tasks: expected fewer than task.eval_tasks = {self.task.eval_tasks}, "
                             f"got {self.probe_tasks}")


QUICK = {"train.steps": "100", "train.batch": "64", "train.eval_every": "50", "train.checkpoint_every": "50",
         "task.eval_tasks": "80", "task.num_pairs": "9", "task.input_dim": "4", "probe_tasks": "40",
         "curve_tasks": "40", "layers": "[1, 3]", "newton_ks": "[1, 2, 3]", "gd_log_grid": "[1, 4, 16]",
         "gd_linear_grid": "[1, 50]"}


def model_config(task: GaussianTaskConfig, L, tied, token_clip):
    D = task.input_dim + 1
    return ModelConfig(token_dim=D, key_size=D, num_layers=L, weight_tied=tied,
                       token_clip=token_clip if L > 3 else 0.0)


def query_states(params, cfg, x, y):
    """The query token's hidden state after every layer for every prefix length: (L, B, n, D)."""
    B, n, d = x.shape
    out = np.empty((cfg.num_layers, B, n, d + 1))  # (L, B, n, D)
    out[:, :, 0] = np.concatenate([x[:, 0], np.zeros((B, 1))], axis=-1)[None]  # empty prefix: [x_0, 0]
    for i in range(1, n):
        tokens, _ = prefix_tokens(x, y, i)  # (B, i + 1, D)
        out[:, :, i] = layer_states(params, tokens, cfg)[:, :, -1, :]
    return out


def algorithm_residuals(cfg: Config, x, y):
    """Unit residual vectors (over positions) of Newton (K, B', n), GD on both grids, on the prompts
    where GD at cfg.gd_eta does not diverge (mask (B,))."""
    sp = alg.prefix_spectra(x, y)
    newton = alg.newton_predictions(x, y, cfg.newton_ks, spectra=sp)  # (K, B, n)
    gd = alg.gd_predictions(x, y, tuple(cfg.gd_log_grid) + tuple(cfg.gd_linear_grid), cfg.gd_eta, spectra=sp)
    kept = alg.gd_stable(x, cfg.gd_eta)  # (B,)
    n_log = len(cfg.gd_log_grid)
    return {"newton": newton[:, kept] - y[kept], "gd_log": gd[:n_log, kept] - y[kept],
            "gd_linear": gd[n_log:, kept] - y[kept]}, kept


def layer_weights(params, cfg, d):
    """The GD / GD++ reading of every layer (module docstring): lists over the L applications."""
    out = {"eta_layers": [], "gamma_layers": [], "kq_identity_layers": [], "pv_identity_layers": []}
    for l in range(cfg.num_layers):
        W_KQ, W_PV = metrics.layer_products(params, cfg.param_layer(l))  # (D, D) each
        A, M = W_KQ[:d, :d], W_PV[:d, :d]
        out["eta_layers"].append(float(-np.mean(np.diag(A)) * W_PV[d, d]))
        out["gamma_layers"].append(float(-np.mean(np.diag(A)) * np.mean(np.diag(M))))
        out["kq_identity_layers"].append(_identity_fraction(A))
        out["pv_identity_layers"].append(_identity_fraction(M))
    return out


def _identity_fraction(A):
    """|tr A| / (sqrt(d) ||A||_F): the cosine between A and I, 1 for a multiple of the identity."""
    norm = np.linalg.norm(A)
    return float(abs(np.trace(A)) / (np.sqrt(A.shape[0]) * norm)) if norm > 0 else 0.0


def analyse(params, cfg_model, cfg: Config, x, y, refs, kept):
    """Per-layer read-out and probe errors, matches and weights of one trained model (module docstring)."""
    P, d = cfg.probe_tasks, x.shape[-1]
    states = query_states(params, cfg_model, x, y)  # (L, B, n, D)
    readout = -states[..., -1]  # (L, B, n)
    fit, held = slice(0, P), slice(P, None)
    probe = np.empty_like(readout[:, held])  # (L, B - P, n)
    for l in range(cfg_model.num_layers):
        v, c = probe_fit(states[l, fit].reshape(-1, d + 1), y[fit].reshape(-1))
        probe[l] = probe_predict(states[l, held], v, c)
    yh = y[held]  # (B - P, n)
    out = {"layers": cfg_model.num_layers, "tied": cfg_model.weight_tied,
           "loss_readout_layers": np.mean((readout[:, held] - yh) ** 2, axis=(1, 2)) / d,
           "loss_probe_layers": np.mean((probe - yh) ** 2, axis=(1, 2)) / d,
           "loss_readout_last_layers": np.mean((readout[:, held, -1] - yh[:, -1]) ** 2, axis=1) / d}
    for name, pred in (("", probe), ("_readout", readout[:, held])):
        r = pred[:, kept] - yh[kept]  # (L, B', n)
        heat = {k: sime_heatmap(r, v) for k, v in refs.items()}
        k_best, k_sim = best_matches(heat["newton"], np.array(cfg.newton_ks))
        t_best, t_sim = best_matches(heat["gd_log"], np.array(cfg.gd_log_grid))
        t_lin, t_lin_sim = best_matches(heat["gd_linear"], np.array(cfg.gd_linear_grid))
        out.update({f"best_newton_k{name}": [int(v) for v in k_best], f"best_newton_sime{name}": k_sim,
                    f"best_gd_t{name}": [int(v) for v in t_best], f"best_gd_sime{name}": t_sim,
                    f"best_gd_t_linear{name}": [int(v) for v in t_lin], f"best_gd_sime_linear{name}": t_lin_sim,
                    f"heatmap_newton{name}": heat["newton"], f"heatmap_gd_log{name}": heat["gd_log"],
                    f"heatmap_gd_linear{name}": heat["gd_linear"]})
    out.update(layer_weights(params, cfg_model, d))
    out["loss_readout"] = float(out["loss_readout_layers"][-1])
    out["loss_probe"] = float(out["loss_probe_layers"][-1])
    out["best_newton_k_last"] = out["best_newton_k"][-1]
    out["best_gd_t_last"] = out["best_gd_t"][-1]
    return out


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    per_seed, steps_run = [], 0
    for seed in seeds:
        finals, curves, diverged = {}, {}, {}
        for fam in cfg.families:
            task = dataclasses.replace(cfg.task, covariance=fam)
            x, y, _, _ = eval_prompts(task)  # (B, n, d), (B, n): one seeded rotation when ill-conditioned
            held_x, held_y = x[cfg.probe_tasks:], y[cfg.probe_tasks:]
            refs, kept = algorithm_residuals(cfg, held_x, held_y)
            tokens, targets = constructed_tokens(held_x[:cfg.curve_tasks], held_y[:cfg.curve_tasks])
            for variant in cfg.variants:
                for L in cfg.layers:
                    if variant == "tied" and L == 1 and "deep" in cfg.variants:
                        continue  # one tied layer is the one-layer deep model: trained once, as deep1
                    name = f"{variant}{L}_{fam}"
                    m = model_config(task, L, variant == "tied", cfg.token_clip)

                    def evaluate(params, m=m, tokens=tokens, targets=targets, d=task.input_dim):
                        return {"loss_tf": metrics.losses(params, tokens, targets, m)[0] * 2 / d}

                    try:
                        res = train_model(m, cfg, seed, backend, out_dir, name, evaluate, resume, progress,
                                          source=GaussianTaskSource(task, cfg.train.batch))
                    except Diverged as e:  # recorded; the other models go on
                        diverged[name] = {"step": e.step, "reason": e.reason}
                        continue
                    steps_run += res.steps_run
                    f = analyse(res.params, m, cfg, x, y, refs, kept)
                    f.update({"family": fam, "gd_diverged_prompts": int(np.sum(~kept)),
                              "adam": resolved_adam(cfg.train, L), "token_clip": m.token_clip})
                    finals[name], curves[name] = f, res.curves
        per_seed.append({"seed": seed, "final": finals, "curves": curves, "diverged": diverged})
    names = list(per_seed[0]["final"])
    return {"final": {n: mean_over_seeds([s["final"][n] for s in per_seed]) for n in names},
            "curves": {n: mean_over_seeds([s["curves"][n] for s in per_seed]) for n in names},
            "per_seed": per_seed, "steps_run": steps_run, "diverged_models": per_seed[0]["diverged"],
            "grids": {"newton_k": list(cfg.newton_ks), "gd_log": list(cfg.gd_log_grid),
                      "gd_linear": list(cfg.gd_linear_grid)},
            "resolved": {n: {"adam": per_seed[0]["final"][n]["adam"]} for n in names},
            "runtime_s": time.perf_counter() - start,
            "notes": "final[VARIANT L _FAMILY]; loss_* are squared error / d (curves.loss_tf: at the last "
                     "position, curve_tasks held-out prompts); best_* per layer from the probes (SPEC 5), "
                     "*_readout from -H[query, -1]; SimE over the held-out prompts on which GD at gd_eta "
                     "does not diverge (gd_diverged_prompts left out)."}
