"""Fu et al.'s layer matching on the GPT-2 style model (SPEC 2.7, 4.4, 5), trained here from scratch
with the oracle's hand-written backward (numba-cpu by default).

For each data family (isotropic and ill-conditioned Gaussian inputs, SPEC 1.5), a GPT-2 style model
trains on fresh prompts in the interleaved layout (x_i, [y_i, 0..0]; every y_i a target; optional
curriculum of Garg et al.). Then on the fixed evaluation prompts (the first `probe_tasks` fit the
probes, the rest evaluate everything):
    probes   for the hidden state at every x position after every block (Hugging Face's hidden
             states: the embedding, blocks 1..L-1, the last block with the final LayerNorm), the
             least-squares read-out with bias y_i ~ h . v + c, pooled over positions, in closed form
             (what Fu et al.'s probes trained for 500 000 Adam steps converge to)
    error    squared error / d against the number of in-context examples i = 0..n-1, for every
             layer's probe, the model's own read-out, least squares, every Newton k and GD t
    matches  SimE heatmaps layer x Newton k (1..23) and layer x GD t (2^0..2^12, and 1, 50, .., 1300);
             the best k and t per layer and their similarity
    claims   Fu et al.: middle layers each ~3 Newton iterations, k about linear in depth (the
             least-squares slope of best k against the layer); GD needs exponentially more steps
             per layer (the slope of log2 of best t); on ill-conditioned data the model learns where
             GD struggles (errors at the last position: model, least squares, GD at the grid's
             largest t, Newton at its largest k)

Sizes are named presets (PRESETS): `iclgd run fu-gpt2 --set preset=small` applies the preset's
values first, then the other --set overrides (iclgd.cli.run.resolve_config). The defaults are the
`tiny` preset.
"""
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import algorithms as alg
from refimpl import gpt2
from refimpl.fieldcheck import check_fields, check_items
from refimpl.gaussian import (COVARIANCES, Curriculum, GaussianTaskConfig, InterleavedTaskSource, eval_prompts,
                              interleaved_tokens)
from refimpl.similarity import best_matches, probe_fit, probe_predict, sime_heatmap
from iclgd.train import Diverged, TrainConfig, resolved_adam
from iclgd.experiments.common import mean_over_seeds, train_model
from iclgd.experiments.fu_algorithms import LINEAR_GRID, LOG_GRID
from iclgd.experiments.fu_lsa import algorithm_residuals

# name -> overrides applied before the command line's (strings, as --set takes them)
PRESETS = {
    # trains to a useful model on a 2-core CPU in minutes (both families within 15 minutes)
    "tiny": {"model.input_dim": "5", "model.num_pairs": "11", "model.embed_dim": "64", "model.num_layers": "4",
             "model.num_heads": "2", "task.input_dim": "5", "task.num_pairs": "11", "train.steps": "6000",
             "train.batch": "64", "train.lr": "0.001", "curriculum": "false"},
    # d = 10, 21 pairs, 6 layers: an hour or two on a 2-core CPU
    "small": {"model.input_dim": "10", "model.num_pairs": "21", "model.embed_dim": "128", "model.num_layers": "6",
              "model.num_heads": "4", "task.input_dim": "10", "task.num_pairs": "21", "train.steps": "20000",
              "train.batch": "64", "train.lr": "0.0005", "curriculum": "false"},
    # Garg et al. / Fu et al.: 12 layers, 8 heads, E = 256, d = 20, 41 pairs, 500k steps of Adam 1e-4,
    # batch 64, with the curriculum (a GPU run: ~9.5M parameters)
    "paper": {"model.input_dim": "20", "model.num_pairs": "41", "model.embed_dim": "256", "model.num_layers": "12",
              "model.num_heads": "8", "task.input_dim": "20", "task.num_pairs": "41", "train.steps": "500000",
              "train.batch": "64", "train.lr": "0.0001", "curriculum": "true"},
}


@dataclass(frozen=True)
class Config:
    preset: str = "tiny"  # the size these values came from (PRESETS: tiny, small, paper); --set preset=NAME applies one
    model: gpt2.GPT2Config = field(default_factory=lambda: gpt2.GPT2Config(
        input_dim=5, num_pairs=11, embed_dim=64, num_layers=4, num_heads=2))  # tiny (paper: 20, 41, 256, 12, 8)
    task: GaussianTaskConfig = field(default_factory=lambda: GaussianTaskConfig(
        input_dim=5, num_pairs=11, eval_tasks=2000))  # d and pairs as the model's (paper: 20, 41)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=6000, batch=64, lr=1e-3, grad_clip=0.0, eval_every=250, checkpoint_every=500))  # paper: 500k x 64, lr 1e-4, no clip
    curriculum: bool = False  # Garg et al.'s curriculum (schedule) over dims and pairs (paper: on)
    schedule: Curriculum = field(default_factory=Curriculum)  # its steps (paper: 5 -> 20 dims, 11 -> 41 pairs, every 2 000)
    families: tuple = ("isotropic", "ill_conditioned")  # task.covariance of each data family, one model each
    probe_tasks: int = 1000  # evaluation prompts that fit the probes; the rest evaluate everything
    curve_tasks: int = 500  # held-out prompts for the loss curve every train.eval_every steps
    newton_ks: tuple = tuple(range(1, 24))  # Newton iterations k compared with each layer (Fu et al.: 1..23)
    gd_log_grid: tuple = LOG_GRID  # GD steps t, 2^0..2^12
    gd_linear_grid: tuple = LINEAR_GRID  # GD steps t, {1, 50, ..., 1300}
    gd_eta: float = 0.01  # GD step (Fu et al.: 0.01, no 1/n)

    def __post_init__(self):
        check_fields(self, "", {"probe_tasks": ">= 1", "curve_tasks": ">= 1", "gd_eta": "> 0"})
        if self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {tuple(PRESETS)}, got {self.preset!r}")
        check_items("families", self.families, str)
        if not self.families or any(f not in COVARIANCES or f == "diagonal" for f in self.families):
            raise ValueError(f"families: expected items of ('isotropic', 'ill_conditioned'), got {list(self.families)!r}")
        for key in ("newton_ks", "gd_log_grid", "gd_linear_grid"):
            check_items(key, getattr(self, key), int, ">= 0")
        if self.model.input_dim != self.task.input_dim:
            raise ValueError(f"model.input_dim: expected task.input_dim = {self.task.input_dim}, got {self.model.input_dim}")
        if self.model.num_pairs != self.task.num_pairs:
            raise ValueError(f"model.num_pairs: expected task.num_pairs = {self.task.num_pairs}, got {self.model.num_pairs}")
        if self.probe_tasks >= self.task.eval_tasks:
            raise ValueError(f"probe_tasks: expected fewer than task.eval_tasks = {self.task.eval_tasks}, "
                             f"got {self.probe_tasks}")
        if self.train.fixed_tasks or self.train.frozen:
            raise ValueError("train.fixed_tasks / train.frozen: expected 0 and [] (fu-gpt2 trains on fresh prompts)")


QUICK = {"model.input_dim": "3", "model.num_pairs": "5", "model.embed_dim": "8", "model.num_layers": "2",
         "model.num_heads": "2", "task.input_dim": "3", "task.num_pairs": "5", "task.eval_tasks": "60",
         "train.steps": "20", "train.batch": "16", "train.eval_every": "10", "train.checkpoint_every": "10",
         "probe_tasks": "30", "curve_tasks": "20", "newton_ks": "[1, 2, 3]", "gd_log_grid": "[1, 4, 16]",
         "gd_linear_grid": "[1, 50]"}

STATE_CHUNK = 250  # prompts per forward pass when collecting hidden states


def x_position_states(params, cfg: gpt2.GPT2Config, tokens):
    """Hidden states at the x positions (L + 1, B, n, E), in chunks of prompts."""
    out = []
    for i in range(0, tokens.shape[0], STATE_CHUNK):
        out.append(gpt2.hidden_states(params, tokens[i:i + STATE_CHUNK], cfg)[:, :, 0::2])
    return np.concatenate(out, axis=1)


def _slope(values):
    """Least-squares slope of values against 1, 2, ..., len(values) (0 for one value)."""
    v = np.asarray(values, dtype=float)
    return float(np.polyfit(np.arange(1, len(v) + 1), v, 1)[0]) if len(v) > 1 else 0.0


def analyse(params, m: gpt2.GPT2Config, cfg: Config, x, y):
    """Probes, errors, matches and the claims' numbers of one trained model (module docstring)."""
    P, d, L = cfg.probe_tasks, x.shape[-1], m.num_layers
    tokens = interleaved_tokens(x, y)  # (B, 2n, d)
    states = x_position_states(params, m, tokens)  # (L + 1, B, n, E)
    held_x, yh = x[P:], y[P:]  # (B', n, d), (B', n)
    model = gpt2.predict(params, tokens[P:], m)  # (B', n)
    probe = np.stack([probe_predict(states[l, P:], *probe_fit(states[l, :P].reshape(-1, m.embed_dim),
                                                               y[:P].reshape(-1)))
                      for l in range(L + 1)])  # (L + 1, B', n)
    refs, kept = algorithm_residuals(cfg, held_x, yh)
    sp = alg.prefix_spectra(held_x, yh)
    err = lambda pred: np.mean((pred - yh) ** 2, axis=-2) / d  # (..., n): per in-context examples
    out = {"layers": L, "loss_model_positions": err(model), "loss_probe_positions": err(probe),
           "loss_least_squares_positions": err(alg.least_squares_predictions(held_x, yh, spectra=sp)),
           "loss_newton_positions": err(alg.newton_predictions(held_x, yh, cfg.newton_ks, spectra=sp)),
           "loss_gd_positions": err(alg.gd_predictions(held_x, yh, cfg.gd_log_grid, cfg.gd_eta, spectra=sp)),
           "gd_diverged_prompts": int(np.sum(~kept))}
    out["loss_model"] = float(np.mean(out["loss_model_positions"]))
    out["loss_probe_layers"] = np.mean(out["loss_probe_positions"], axis=1)  # (L + 1,)
    for name, pred in (("", probe[1:]), ("_model", model[None])):
        r = pred[:, kept] - yh[kept]  # (rows, B'', n)
        heat = {k: sime_heatmap(r, v) for k, v in refs.items()}
        for key, grid, label in (("newton", cfg.newton_ks, "newton_k"), ("gd_log", cfg.gd_log_grid, "gd_t"),
                                 ("gd_linear", cfg.gd_linear_grid, "gd_t_linear")):
            best, sim = best_matches(heat[key], np.array(grid))
            out[f"best_{label}{name}"] = [int(v) for v in best]
            out[f"best_{label}_sime{name}"] = sim
            out[f"heatmap_{key}{name}"] = heat[key]
    out["newton_k_per_layer"] = _slope(out["best_newton_k"])
    out["gd_log2_t_per_layer"] = _slope(np.log2(np.maximum(out["best_gd_t"], 1)))
    for key in ("model", "least_squares"):
        out[f"loss_{key}_last"] = float(out[f"loss_{key}_positions"][-1])
    out["loss_gd_last"] = float(out["loss_gd_positions"][-1, -1])  # the grid's largest t
    out["loss_newton_last"] = float(out["loss_newton_positions"][-1, -1])  # the largest k
    out["best_newton_k_last"], out["best_gd_t_last"] = out["best_newton_k"][-1], out["best_gd_t"][-1]
    return out


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    m = cfg.model
    per_seed, steps_run = [], 0
    for seed in seeds:
        finals, curves, diverged = {}, {}, {}
        for fam in cfg.families:
            task = dataclasses.replace(cfg.task, covariance=fam)
            x, y, _, _ = eval_prompts(task)  # (B, n, d), (B, n): one seeded rotation when ill-conditioned
            curve_x, curve_y = x[cfg.probe_tasks:][:cfg.curve_tasks], y[cfg.probe_tasks:][:cfg.curve_tasks]
            curve_tokens = backend.asarray(interleaved_tokens(curve_x, curve_y))  # (C, 2n, d)

            def evaluate(params, d=task.input_dim, tokens=curve_tokens, target=curve_y):
                pred = backend.to_numpy(backend.model_forward({k: backend.asarray(v) for k, v in params.items()}, tokens, m)[0])
                return {"loss_tf": float(np.mean((pred - target) ** 2) / d),
                        "loss_tf_last": float(np.mean((pred[:, -1] - target[:, -1]) ** 2) / d)}

            source = InterleavedTaskSource(task, cfg.train.batch, cfg.schedule if cfg.curriculum else None)
            try:
                res = train_model(m, cfg, seed, backend, out_dir, fam, evaluate, resume, progress, source=source)
            except Diverged as e:  # recorded; the other family goes on
                diverged[fam] = {"step": e.step, "reason": e.reason}
                continue
            steps_run += res.steps_run
            f = analyse(res.params, m, cfg, x, y)
            f.update({"family": fam, "adam": resolved_adam(cfg.train, m.num_layers),
                      "parameters": int(sum(v.size for v in res.params.values()))})
            finals[fam], curves[fam] = f, res.curves
        per_seed.append({"seed": seed, "final": finals, "curves": curves, "diverged": diverged})
    names = list(per_seed[0]["final"])
    return {"final": {n: mean_over_seeds([s["final"][n] for s in per_seed]) for n in names},
            "curves": {n: mean_over_seeds([s["curves"][n] for s in per_seed]) for n in names},
            "per_seed": per_seed, "steps_run": steps_run, "diverged_models": per_seed[0]["diverged"],
            "grids": {"newton_k": list(cfg.newton_ks), "gd_log": list(cfg.gd_log_grid),
                      "gd_linear": list(cfg.gd_linear_grid), "examples": list(range(cfg.task.num_pairs))},
            "resolved": {n: {"adam": per_seed[0]["final"][n]["adam"]} for n in names},
            "runtime_s": time.perf_counter() - start,
            "notes": "final[FAMILY]; loss_* are squared error / d; *_positions[i] with i in-context examples "
                     "(loss_probe_positions per layer 0..L, 0 = the embedding; loss_newton/gd_positions per "
                     "grid value); best_* per block 1..L from the probes (SimE, SPEC 5), *_model from the "
                     "model's own read-out; SimE over the held-out prompts on which GD at gd_eta does not "
                     "diverge (gd_diverged_prompts left out); newton_k_per_layer and gd_log2_t_per_layer are "
                     "least-squares slopes over blocks 1..L."}
