"""Smoke test of the GPU backends against the oracle, for the first run on a GPU (stage 2 of
benchmarks/gpu_check.sh, and the small run compute-sanitizer watches in its stage 3).

    python -m benchmarks.gpu_smoke [--small] [--backends cupy,cupy-unfused,numba-cuda]

For every backend, model (fig2; tied-2; deep-5 with token clipping; with --models also a 2-layer
softmax + LayerNorm + MLP model, left out by default for its compile time) and dtype (float32,
float64): loss and gradients of one batch, the losses of three Adam steps (refimpl.optim.adam_update
with clipping) and, in float64, the parameters after them, each compared with the oracle (float64
NumPy) on the same inputs. The cupy backend also runs its two-launch step (the multi-block
reduction, forced) and a few steps of its graph trainer, graph against eager launches; numba-cuda
its device task draw against the NumPy mirror and its DeviceTrainer against its train_step.
One line per check: PASS / FAIL with the worst relative error, or SKIP with the reason. Exit status
0 when nothing failed, 1 otherwise, 2 when no backend can run.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import kernels
from refimpl.config import AdamConfig, ModelConfig
from refimpl.loss import loss_and_grads
from refimpl.optim import adam_init, adam_update
from refimpl.params import init_params

MODELS = {
    "fig2": ModelConfig(),
    "tied2": ModelConfig(num_layers=2, weight_tied=True),
    "deep5_clip": ModelConfig(num_layers=5, token_clip=0.5),
    "softmax_ln_mlp": ModelConfig(attention="softmax", num_layers=2, layernorm=True, mlp=True,
                                  num_heads=2, key_size=4),
}
ADAM = AdamConfig(lr=1e-3, grad_clip=1.0)
# relative error allowed (worst entry over the largest entry of the oracle's tensor); float32
# sums over B*T terms in a different order than the float64 oracle
RTOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 3e-3}


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.all(np.isfinite(got)):
        return np.inf
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def problem(cfg, dtype, B, seed=0):
    rng = np.random.default_rng(seed)
    params = init_params(cfg, rng, np.float64)
    params = {k: (v + 0.3 * rng.standard_normal(v.shape)).astype(dtype) for k, v in params.items()}
    tokens = rng.uniform(-1, 1, size=(B, 11, cfg.token_dim)).astype(dtype)
    y = rng.standard_normal(B).astype(dtype)
    return params, tokens, y


def check_backend(be, cfg, dtype, B):
    """{check: relative error} of loss_and_grads and three train_steps against the oracle."""
    params, tokens, y = problem(cfg, dtype, B)
    errs = {}
    loss, per_layer, grads = loss_and_grads(params, tokens, y, cfg)
    dp = {k: be.asarray(v) for k, v in params.items()}
    d_loss, d_per_layer, d_grads = be.loss_and_grads(dp, be.asarray(tokens), be.asarray(y), cfg)
    errs["per-layer losses"] = rel_err(be.to_numpy(d_per_layer), per_layer)
    errs["grads"] = max(rel_err(be.to_numpy(d_grads[k]), grads[k]) for k in grads)
    p, s = params, adam_init(params)
    dp = {k: be.asarray(v) for k, v in params.items()}
    ds = be.adam_init(dp)
    losses, d_losses = [], []
    for _ in range(3):
        loss, _, g = loss_and_grads(p, tokens, y, cfg)
        p, s, _ = adam_update(p, g, s, ADAM)
        dp, ds, d_loss = be.train_step(dp, ds, be.asarray(tokens), be.asarray(y), cfg, ADAM)
        losses.append(loss)
        d_losses.append(float(be.to_numpy(d_loss)))
    errs["losses of 3 Adam steps"] = rel_err(d_losses, losses)
    if dtype == np.float64:  # in float32 Adam's m / sqrt(v) amplifies rounding of tiny gradients
        moved = {k: p[k] - params[k] for k in p}  # compare the change made
        errs["parameters after 3 Adam steps"] = max(
            rel_err(be.to_numpy(dp[k]) - params[k], moved[k]) for k in p)
    return errs


def check_cupy_extras(dtype, B):
    """The cupy backend's two-launch step equals its one-launch step bit for bit; its graph trainer
    equals its eager launches bit for bit."""
    from kernels.cupy import build as cb
    from kernels.cupy import graph
    be = kernels.get_backend("cupy")
    cfg = MODELS["deep5_clip"]
    params, tokens, y = problem(cfg, dtype, B)
    args = ({k: be.asarray(v) for k, v in params.items()}, be.asarray(tokens), be.asarray(y), cfg)
    one = be.loss_and_grads(*args)[2]
    saved = cb.REDUCE_IN_KERNEL_ENTRIES
    cb.REDUCE_IN_KERNEL_ENTRIES = 0
    try:
        two = be.loss_and_grads(*args)[2]
    finally:
        cb.REDUCE_IN_KERNEL_ENTRIES = saved
    errs = {"two-launch step == one-launch step": max(
        float(np.max(np.abs(be.to_numpy(two[k]) - be.to_numpy(one[k])))) for k in one)}
    fig2 = MODELS["fig2"]
    p0 = init_params(fig2, np.random.default_rng(1), dtype)
    runs = [graph.GraphTrainer(p0, fig2, ADAM, B, seed=3, dtype=dtype, use_graph=g) for g in (True, False)]
    for r in runs:
        r.run(5)
    a, b = runs[0].params(), runs[1].params()
    errs["graph == eager (5 steps)"] = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    return errs


def check_numba_cuda_extras(dtype, B):
    """numba-cuda's device draw against its NumPy mirror (a few ulps: the GPU's log / cos / sin),
    and its DeviceTrainer against the functional train_step on the same batches (bit for bit)."""
    from kernels.cupy import philox
    from kernels.numba import gpu_draw, gpu_trainer
    be = kernels.get_backend("numba-cuda")
    tok, y = gpu_draw.linear_regression_tasks(7, 3, B, dtype=dtype)
    t2, y2 = philox.linear_regression_tasks(7, 3, B, dtype=dtype)
    errs = {"device draw vs mirror": max(rel_err(tok.copy_to_host(), t2), rel_err(y.copy_to_host(), y2))}
    fig2 = MODELS["fig2"]
    p0 = init_params(fig2, np.random.default_rng(1), dtype)
    tr = gpu_trainer.DeviceTrainer(p0, fig2, ADAM, B, seed=3, dtype=dtype)
    tr.run(5)
    dp = {k: be.asarray(v) for k, v in p0.items()}
    ds = be.adam_init(dp)
    for s in range(5):
        dp, ds, _ = be.train_step(dp, ds, *gpu_draw.linear_regression_tasks(3, s, B, dtype=dtype), fig2, ADAM)
    got = tr.params()
    errs["trainer == train_step (5 steps)"] = max(float(np.max(np.abs(got[k] - be.to_numpy(dp[k])))) for k in got)
    return errs


def main(argv=None):
    ap = argparse.ArgumentParser(prog="gpu_smoke", description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="B = 48 tasks (for compute-sanitizer)")
    ap.add_argument("--backends", default="cupy,cupy-unfused,numba-cuda")
    ap.add_argument("--models", default="fig2,tied2,deep5_clip", help="comma-separated subset of "
                    + ", ".join(MODELS) + " (fig2,tied2,deep5_clip)")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"--models: expected names among {', '.join(MODELS)}, got {', '.join(unknown)}")
    B = 48 if args.small else 512
    failed = ran = 0
    for name in [b for b in args.backends.split(",") if b]:
        ok, reason = kernels.availability(name)
        if not ok:
            print(f"SKIP {name}: {reason}", flush=True)
            continue
        be = kernels.get_backend(name)
        for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
            checks = [(m, lambda cfg=MODELS[m]: check_backend(be, cfg, dtype, B)) for m in models]
            if name == "cupy":
                checks.append(("cupy extras", lambda: check_cupy_extras(dtype, B)))
            if name == "numba-cuda":
                checks.append(("numba-cuda extras", lambda: check_numba_cuda_extras(dtype, B)))
            for model, fn in checks:
                try:
                    errs = fn()
                except Exception as e:  # reported, never hidden
                    print(f"FAIL {name} {model} {dtype}: {type(e).__name__}: {e}", flush=True)
                    failed += 1
                    continue
                for what, err in errs.items():
                    exact = "==" in what
                    good = err == 0 if exact else err <= RTOL[dtype]
                    print(f"{'PASS' if good else 'FAIL'} {name} {model} {dtype} {what}: "
                          f"{'max abs difference' if exact else 'relative error'} {err:.3g}", flush=True)
                    failed += not good
                    ran += 1
    if not ran and not failed:
        print("gpu_smoke: no GPU backend could run", file=sys.stderr)
        return 2
    print(f"gpu_smoke: {ran} checks, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
