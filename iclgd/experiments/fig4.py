"""Figure 4: sine-wave regression through an MLP front end and one attention layer (SPEC 1.3, 2.5).

Tokens [x_i, y_i] (N = 10, x ~ U(-5, 5), y = a sin(x + rho); the query [x_q, 0]). The model
(SPEC 2.5): embedding 2 -> 40 without bias, the residual input MLP 40 -> 160 -> 40 (biases, GELU),
one linear self-attention layer with K = 40, init scale 0.002. Two models from the same seed (so
the same initial front end, as the paper's appendix A.7 says):
    mlpgd  "MLP + GD": the attention layer fixed to Proposition 1's weights on the 40-d features
           (refimpl.baselines.gd_params with d = 39 and eta = `gd_eta` = 0.1, so W_P[-1, -1] =
           eta / N = 0.01), only the front end trained (train.frozen), by backpropagation through
           the fixed GD step: Adam 3e-4, b2 0.999, clip 100, batch 2048, 20 000 steps.
    tf     every weight trained: Adam 1e-3, clip 100, batch 2048, 20 000 steps (SPEC 3).
mlpgd is trained first; tf's evaluations compare it with the trained mlpgd on the 10 000
evaluation tasks: preds diff (the zeroth-order Taylor term of the prediction in x_q), partial cos
and partial diff (the first-order term: the cosine and the distance of d y_hat / d x_q, SPEC 5; x_q
is a scalar, so the cosine is the agreement of the two slopes' signs, with 1e-8 added to the
norms), and partial_cos_token, the same cosine over the whole query token [x_q, y_q]. At the end,
for a few evaluation tasks, both models' functions of x_q before the attention step (read out
after the front end, -H[query, -1]) and after it, on a grid of query inputs.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from refimpl import metrics
from refimpl.baselines import gd_params
from refimpl.config import ModelConfig
from refimpl.fieldcheck import check_fields
from refimpl.model import front_forward, prediction_input_gradient
from refimpl.sine import SineSource, SineTaskConfig, eval_sine_tasks
from iclgd.evaluation import evaluation_ops
from iclgd.experiments.common import mean_over_seeds, resolved_settings, train_model
from iclgd.train import TrainConfig


@dataclass(frozen=True)
class Config:
    task: SineTaskConfig = field(default_factory=SineTaskConfig)  # N = 10, x in -5 .. 5, 10 000 evaluation tasks
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        token_dim=2, key_size=40, embed_dim=40, input_mlp=True, init_scale=0.002))  # SPEC 2.5, 3
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=20000, lr=1e-3, grad_clip=100.0, eval_every=200))  # tf: SPEC 3 (20 000 steps, 1e-3, clip 100)
    control: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=20000, lr=3e-4, b2=0.999, grad_clip=100.0, eval_every=200,
        frozen=("layer0.attn",)))  # mlpgd: Adam 3e-4, b2 0.999, clip 100; the GD layer frozen
    gd_eta: float = 0.1  # eta of the fixed GD step on the 40-d features (W_P[-1, -1] = eta / N)
    curve_tasks: int = 4  # evaluation tasks whose functions of x_q are drawn
    curve_points: int = 201  # query inputs on the grid x_low .. x_high

    def __post_init__(self):
        check_fields(self, "", {"gd_eta": "> 0", "curve_tasks": "[1, 64]", "curve_points": "[2, 10000]"})
        m = self.model
        if m.token_dim != 2 or m.num_layers != 1 or m.weight_tied or m.num_heads != 1:
            raise ValueError(f"model: expected token_dim 2 and one single-head layer (the sine model), got "
                             f"token_dim {m.token_dim}, num_layers {m.num_layers}, num_heads {m.num_heads}")
        if m.model_dim < 2 or m.key_size != m.model_dim or m.attention != "linear" or m.layernorm or m.mlp:
            raise ValueError(f"model: expected one LSA layer with key_size = model width = {m.model_dim} "
                             f"(Proposition 1's weights need K = D) and no LayerNorm or block MLP, got "
                             f"key_size {m.key_size}, attention {m.attention!r}, layernorm {m.layernorm}, mlp {m.mlp}")
        if self.curve_tasks > self.task.eval_tasks:
            raise ValueError(f"curve_tasks: expected <= task.eval_tasks = {self.task.eval_tasks}, got {self.curve_tasks}")


QUICK = {"train.steps": "150", "train.batch": "128", "train.eval_every": "50", "train.checkpoint_every": "50",
         "control.steps": "150", "control.batch": "128", "control.eval_every": "50",
         "control.checkpoint_every": "50", "task.eval_tasks": "500"}


def gd_weights(cfg: Config):
    """Proposition 1 on the D-d features: W_Q = W_K = diag(1_{D-1}, 0), W_V[-1, -1] = -1,
    W_P[-1, -1] = eta / N (the attention layer of mlpgd)."""
    D = cfg.model.model_dim
    return gd_params(D - 1, cfg.gd_eta, cfg.task.num_context)


def query_grid_tokens(tokens, x_grid):
    """(C, G, N + 1, 2): each task's context with the query input set to every grid point."""
    C, G = tokens.shape[0], x_grid.shape[0]
    out = np.repeat(tokens[:, None], G, axis=1)  # (C, G, T, 2)
    out[:, :, -1, 0] = x_grid[None, :]
    out[:, :, -1, 1] = 0.0
    return out


def fitted_functions(params, tokens, x_grid, cfg: ModelConfig):
    """{'before': -H[query, -1] after the front end, 'after': the prediction}, each (C, G)."""
    grid = query_grid_tokens(tokens, x_grid)  # (C, G, T, 2)
    C, G = grid.shape[:2]
    flat = grid.reshape(C * G, *grid.shape[2:])
    H, _ = front_forward(flat, params, cfg)  # (C G, T, D)
    after = metrics.losses(params, flat, np.zeros(C * G), cfg)[2]  # (C G,)
    return {"before": (-H[:, -1, -1]).reshape(C, G).tolist(), "after": after.reshape(C, G).tolist()}


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    start = time.perf_counter()
    task, m = cfg.task, cfg.model
    tokens, targets, (amp, phase) = eval_sine_tasks(task)  # (E, T, 2), (E,)
    ops = evaluation_ops(backend)
    loss_zero = float(0.5 * np.mean(targets ** 2))

    def plain_evaluate(params):
        loss, _, _ = metrics.losses(params, tokens, targets, m, ops)
        return {"loss": loss}

    per_seed, steps_run = [], 0
    for seed in seeds:
        src = SineSource(task, cfg.control.batch)
        ctrl = train_model(m, cfg, seed, backend, out_dir, "mlpgd", plain_evaluate, resume, progress,
                           train_cfg=cfg.control, source=src, initial=gd_weights(cfg))
        steps_run += ctrl.steps_run
        _, _, pred_c, sens_c = metrics.losses_and_sensitivity(ctrl.params, tokens, targets, m, ops)  # (E,), (E, 1)
        grad_c = query_token_gradient(ctrl.params, tokens, m, ops)  # (E, 2)

        def evaluate(params):
            loss, _, pred, sens = metrics.losses_and_sensitivity(params, tokens, targets, m, ops)
            al = metrics.alignment(pred, sens, pred_c, sens_c)
            return {"loss": loss, "preds_diff": al["preds_diff"], "partial_cos": al["model_cos"],
                    "partial_diff": al["model_diff"]}

        tf = train_model(m, cfg, seed, backend, out_dir, "tf", evaluate, resume, progress,
                         source=SineSource(task, cfg.train.batch))
        steps_run += tf.steps_run
        final = {"tf": evaluate(tf.params), "mlpgd": plain_evaluate(ctrl.params)}
        final["tf"]["partial_cos_token"] = metrics.alignment(
            pred_c, query_token_gradient(tf.params, tokens, m, ops), pred_c, grad_c)["model_cos"]
        curves = {"tf": tf.curves, "mlpgd": ctrl.curves}
        C = cfg.curve_tasks
        x_grid = np.linspace(task.x_low, task.x_high, cfg.curve_points)
        functions = {"x": x_grid.tolist(), "context_x": tokens[:C, :-1, 0].tolist(),
                     "context_y": tokens[:C, :-1, 1].tolist(), "amplitude": amp[:C].tolist(),
                     "phase": phase[:C].tolist(),
                     "truth": (amp[:C, None] * np.sin(x_grid[None, :] + phase[:C, None])).tolist(),
                     "tf": fitted_functions(tf.params, tokens[:C], x_grid, m),
                     "mlpgd": fitted_functions(ctrl.params, tokens[:C], x_grid, m)}
        per_seed.append({"seed": seed, "final": final, "curves": curves, "functions": functions})
    final = mean_over_seeds([s["final"] for s in per_seed])
    final["loss_zero"] = loss_zero
    return {"final": final, "curves": mean_over_seeds([s["curves"] for s in per_seed]), "per_seed": per_seed,
            "steps_run": steps_run, "gd_eta": cfg.gd_eta,
            "resolved": {"tf": resolved_settings(cfg.train, 1), "mlpgd": resolved_settings(cfg.control, 1)},
            "runtime_s": time.perf_counter() - start,
            "notes": "final.tf / curves.tf: the trained model (loss; preds_diff, partial_cos, partial_diff "
                     "against the trained mlpgd: the zeroth- and first-order Taylor terms of the prediction in "
                     "x_q, SPEC 5; x_q is a scalar, so partial_cos is the mean sign agreement of the slopes; "
                     "partial_cos_token: the cosine over the whole query token [x_q, y_q]). final.mlpgd / "
                     "curves.mlpgd: MLP + GD (the attention fixed to one GD step with gd_eta on the features, "
                     "only the front end trained). loss_zero: predicting 0. per_seed[i].functions: for the "
                     "first evaluation tasks, each model's function of x_q before the attention step "
                     "(-H[query, -1] after the front end) and after it, on the grid x, with the truth."}


def query_token_gradient(params, tokens, m, ops):
    """d y_hat / d (query token) (E, 2) from the hand-written backward, on the run's backend."""
    if ops is not None:
        return ops.readouts_and_query_gradient(params, tokens, m)[1]
    return prediction_input_gradient(params, tokens, m)[:, -1]

