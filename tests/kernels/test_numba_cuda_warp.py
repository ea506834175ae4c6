"""numba-cuda's one-warp-per-task kernels against the oracle: kernels/numba/gpu_warp.py for
attention-only models, kernels/numba/gpu_warp_block.py for models with LayerNorm and / or an MLP.
Runs where numba-cuda runs: on a GPU, or under NUMBA_ENABLE_CUDASIM=1
(tests/kernels/test_numba_cuda_sim.py runs this file that way in a subprocess); skipped with the
reason otherwise. The host-side layout and dispatch checks run everywhere."""
import numpy as np
import pytest

import kernels
from tests.conftest import SIMULATED, assert_close_to_oracle
from kernels.cupy import build as cb
from kernels.numba import gpu_warp as gw
from kernels.numba import gpu_warp_block as gwb
from kernels.numba import gpu_warp_host as gwh
from kernels.numba.layout import NUM_LAY, Y_LN1
from refimpl.config import AdamConfig, ModelConfig
from refimpl.loss import loss_and_grads
from refimpl.optim import adam_init, adam_update
from refimpl.params import init_params

AVAILABLE, REASON = kernels.availability("numba-cuda")


def needs_numba_cuda(test):
    """GPU tests (pytest -m gpu runs them on a GPU) that the simulator runs too."""
    return pytest.mark.gpu(pytest.mark.skipif(not AVAILABLE, reason=f"numba-cuda cannot run here: "
                                              f"{REASON}")(test))

# small, uneven shapes (T = 4 tokens != D != H K); every option of the attention-only models
CONFIGS = {
    "lsa": ModelConfig(token_dim=4, key_size=3),
    "deep3_2head_clip_damp": ModelConfig(token_dim=5, num_layers=3, num_heads=2, key_size=3,
                                         token_clip=0.6, dampening=0.8, init_scale=3.0),
    "softmax_causal_query": ModelConfig(token_dim=4, num_layers=2, attention="softmax", causal=True,
                                        include_query=True, num_heads=2, key_size=3),
    "tied3_first_softmax_yupdate": ModelConfig(token_dim=4, num_layers=3, weight_tied=True,
                                               y_update=True, dampening=0.75, first_layer_softmax=True),
}
# LayerNorm / MLP blocks (gpu_warp_block.py): both LN placements, each part alone and together
BLOCK_CONFIGS = {
    # LN only: deep "public" placement (no LN before layer 0), a first softmax layer
    "ln_deep2_public_first_softmax": ModelConfig(token_dim=5, num_layers=2, key_size=3,
                                                 layernorm=True, first_layer_softmax=True,
                                                 init_scale=2.0),
    # LN only, "pre" placement: LN before the one (query-row) attention layer, 2 softmax heads
    "ln_pre_softmax_2head": ModelConfig(token_dim=5, num_heads=2, key_size=3, attention="softmax",
                                        layernorm=True, ln_placement="pre"),
    # MLP only (no LN), y_update and dampening, two layers
    "mlp_deep2_yupdate_damp": ModelConfig(token_dim=4, num_layers=2, key_size=3, mlp=True,
                                          mlp_widening=3, y_update=True, dampening=0.6),
    "ln_mlp_2head": ModelConfig(token_dim=5, num_heads=2, key_size=3, layernorm=True, mlp=True,
                                mlp_widening=2),
    # the paper's softmax model (token_dim 11, 2 heads, LayerNorm, MLP 4D), a small key size
    "paper_softmax_ln_mlp": ModelConfig(token_dim=11, num_heads=2, key_size=4, attention="softmax",
                                        layernorm=True, mlp=True),
    "tied3_ln_mlp_clip": ModelConfig(token_dim=5, num_layers=3, weight_tied=True, num_heads=2,
                                     key_size=3, layernorm=True, mlp=True, mlp_widening=2,
                                     token_clip=0.7, init_scale=2.0),
    "deep3_causal_query_pre_ln_mlp": ModelConfig(token_dim=5, num_layers=3, num_heads=2, key_size=3,
                                                 attention="softmax", causal=True,
                                                 include_query=True, layernorm=True,
                                                 ln_placement="pre", mlp=True, mlp_widening=2,
                                                 init_scale=2.0),
}
ALL = {**CONFIGS, **BLOCK_CONFIGS}
T_TEST = 4


def kind_of(name):
    return gwh.ATTENTION if name in CONFIGS else gwh.BLOCK


def problem(cfg, rng, B, T=T_TEST):
    params = init_params(cfg, rng)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    tokens = rng.uniform(-1, 1, (B, T, cfg.token_dim))
    y = rng.standard_normal(B)
    return params, tokens, y


def test_workspace_table_matches_model_step_layout():
    for cfg in CONFIGS.values():
        dm, md = gwh.warp_dims(cfg, 6)
        assert dm[gw.W_TOTAL] == md.workspace_reals
        offs = dm[gw.W_XS:gw.W_TGT + 1]
        assert np.all(np.diff(offs) > 0) and offs[0] == 0  # buffers in order, none empty
        assert dm[gw.W_TGT] == md.workspace_reals - 1


def block_buffers(cfg, T):
    """{name: (offset, size)} of one warp's workspace in gpu_warp_block.py, the sizes worked out
    here from the shapes the kernel reads and writes."""
    dm, dims = gwh.block_dims(cfg, T)
    D, HK, L = cfg.token_dim, cfg.num_heads * cfg.key_size, cfg.num_layers
    S = T if cfg.include_query else T - 1
    F = cfg.mlp_widening * D if cfg.mlp else 0
    ln1 = any(cfg.layer_has_ln(l) for l in range(L))
    ln2 = cfg.mlp and cfg.layernorm
    TD, HTS = T * D, cfg.num_heads * T * S
    sizes = {"XS": L * TD, "XC": TD, "Q": T * HK, "KT": S * HK, "V": S * HK, "P": HTS, "O": T * HK,
             "U": TD, "DX": TD, "DU": TD, "DXIN": TD, "DO": T * HK, "DP": HTS, "DQ": T * HK,
             "DK": S * HK, "DV": S * HK, "GACC": dims.num_params + L, "READ": L, "TGT": 1}
    if ln1:
        sizes.update(A=TD, XH1=TD, R1=T)
    if cfg.mlp:
        sizes.update(X1=TD, HH=T * F, GG=T * F)
    if ln2:
        sizes.update(MIN=TD, XH2=TD, R2=T)
    index = lambda n: getattr(gwb, "W_" + n, None) or getattr(gw, "W_" + n)  # noqa: E731
    return dm, dims, {n: (int(dm[index(n)]), s) for n, s in sizes.items()}


@pytest.mark.parametrize("T", [2, 4, 11])
@pytest.mark.parametrize("name", list(BLOCK_CONFIGS))
def test_block_workspace_buffers_are_disjoint(name, T):
    """Every buffer the block kernel uses lies inside the workspace and overlaps no other, except
    the MLP's hidden rows HH, GG, which share the attention backward's scratch DO..DV (the MLP
    runs while that scratch is free)."""
    cfg = BLOCK_CONFIGS[name]
    dm, dims, bufs = block_buffers(cfg, T)
    assert dims.num_params == sum(v.size for v in init_params(cfg, np.random.default_rng(0)).values())
    hidden, scratch = {"HH", "GG"}, {"DO", "DP", "DQ", "DK", "DV"}
    for a, (oa, na) in bufs.items():
        assert 0 <= oa and oa + na <= dims.reals, a
        for b, (ob, nb) in bufs.items():
            if a < b and not ({a, b} & hidden and {a, b} & scratch):
                assert oa + na <= ob or ob + nb <= oa, f"{a} and {b} overlap"
    lay = dm[gwb.LAY0:].reshape(cfg.num_layers, NUM_LAY)  # layout.py's per-application rows
    assert list(lay[:, Y_LN1]) == [int(cfg.layer_has_ln(l)) for l in range(cfg.num_layers)]


PAPER_DEEP2 = ModelConfig(token_dim=11, num_layers=2, num_heads=2, key_size=11, attention="softmax",
                          layernorm=True, mlp=True)  # fig-style shapes (MLP width 44), T = 11


def test_dispatch_takes_the_warp_kernel_that_fits():
    """warp_kernel: attention-only models gpu_warp.py, LayerNorm / MLP models gpu_warp_block.py,
    while one warp's workspace fits the shared memory; front ends and larger workspaces None (the
    thread-per-task kernel)."""
    for name, cfg in ALL.items():
        for dtype in (np.float64, np.float32):
            assert gwh.warp_kernel(cfg, T_TEST, dtype) == kind_of(name), name
    for front in (dict(embed_dim=6), dict(embed_dim=6, input_mlp=True), dict(pos_enc="add"),
                  dict(pos_enc="concat", pos_enc_size=2)):
        assert gwh.warp_kernel(ModelConfig(token_dim=4, layernorm=True, mlp=True, **front), 4,
                               np.float32) is None
    # the paper's shapes with two deep LN / MLP layers: 62.5 KB of float64, 31 KB of float32
    for dtype, kind in ((np.float64, None), (np.float32, gwh.BLOCK)):
        nbytes = gwh.block_dims(PAPER_DEEP2, 11)[1].warp_bytes(0, dtype)
        assert (nbytes <= gwh.SMEM_LIMIT) == (kind is not None)
        assert gwh.warp_kernel(PAPER_DEEP2, 11, dtype) == kind
    wide = ModelConfig(token_dim=11, key_size=96, num_heads=4)  # attention only, 135 KB of params
    assert gwh.warp_kernel(wide, 11, np.float32) is None


@pytest.mark.parametrize("name", list(ALL))
def test_launch_within_numba_shared_memory_and_threads(name):
    cfg = ALL[name]
    md = gwh.warp_dims(cfg, 11)[1] if name in CONFIGS else gwh.block_dims(cfg, 11)[1]
    for B in (1, 37, 2048):
        for dtype in (np.float64, np.float32):
            ln = cb.model_step_launch(B, md, 0, dtype, gwh.device_limits(True),
                                      max_threads=gwh.MAX_THREADS)
            assert ln.block <= gwh.MAX_THREADS and ln.smem_bytes <= gwh.NUMBA_SMEM
            assert ln.smem_bytes >= ln.warps_per_block * md.warp_bytes(0, dtype)
            assert ln.grid * ln.warps_per_block * ln.tasks_per_warp >= B


def check_warp_path(cfg, T, B, dtype, name):
    """The last loss_and_grads of cfg ran the warp kernel `kind_of(name)` and not the thread one:
    the thread plan's gradient rows are still the NaN that fill_buffers put there."""
    from kernels.numba import gpu
    pl = gpu.warp_plan(cfg, T, B, dtype)
    assert pl.kind == kind_of(name)
    assert np.all(np.isfinite(pl.g.copy_to_host()))
    assert np.all(np.isnan(gpu.plan(cfg, T, B, dtype).G.copy_to_host()))


@needs_numba_cuda
@pytest.mark.parametrize("name", list(ALL))
def test_loss_and_grads_match_oracle(rng, name):
    cfg = ALL[name]
    be = kernels.get_backend("numba-cuda")
    B = 5 if SIMULATED else 301
    params, tokens, y = problem(cfg, rng, B)
    be.fill_buffers(cfg, tokens.shape[1], B, np.float64, np.nan)  # every buffer must be written
    loss, per_layer, grads = loss_and_grads(params, tokens, y, cfg)
    d_loss, d_per_layer, d_grads = be.loss_and_grads(be.asarray(params), tokens, y, cfg)
    assert_close_to_oracle(d_per_layer, per_layer, np.float64, B * 4, "per-layer losses")
    assert_close_to_oracle(d_loss, loss, np.float64, B * 4, "loss")
    assert set(d_grads) == set(grads)
    for k in grads:
        assert_close_to_oracle(be.to_numpy(d_grads[k]), grads[k], np.float64, B * 4, f"grads[{k}]")
    check_warp_path(cfg, tokens.shape[1], B, np.float64, name)


@needs_numba_cuda
@pytest.mark.parametrize("name", ["deep3_2head_clip_damp", "tied3_ln_mlp_clip"])
def test_several_tasks_per_warp_and_float32(rng, name):
    """B large enough that warps take several tasks each (and some warps idle at the end)."""
    cfg = ALL[name]
    be = kernels.get_backend("numba-cuda")
    B = 21 if SIMULATED else 5000
    params, tokens, y = problem(cfg, rng, B)
    from kernels.numba import gpu
    for dtype in (np.float64, np.float32):
        p = {k: v.astype(dtype) for k, v in params.items()}
        tok, yy = tokens.astype(dtype), y.astype(dtype)
        _, per_layer, grads = loss_and_grads({k: v.astype(np.float64) for k, v in p.items()},
                                             tok.astype(np.float64), yy.astype(np.float64), cfg)
        be.fill_buffers(cfg, T_TEST, B, dtype, np.nan)
        _, d_per_layer, d_grads = be.loss_and_grads(be.asarray(p), tok, yy, cfg)
        assert gpu.warp_plan(cfg, T_TEST, B, dtype).launch.tasks_per_warp > 1
        check_warp_path(cfg, T_TEST, B, dtype, name)
        assert be.to_numpy(d_grads[next(iter(grads))]).dtype == dtype
        assert_close_to_oracle(d_per_layer, per_layer, dtype, B * 4, "per-layer losses")
        for k in grads:
            assert_close_to_oracle(be.to_numpy(d_grads[k]), grads[k], dtype, B * 4, f"grads[{k}]")


@needs_numba_cuda
@pytest.mark.parametrize("name", ["softmax_causal_query", "paper_softmax_ln_mlp"])
def test_train_steps_match_oracle_and_are_deterministic(rng, name):
    """Three Adam steps of train_step against the oracle's, twice: bit-identical runs."""
    cfg = ALL[name]
    be = kernels.get_backend("numba-cuda")
    adam_cfg = AdamConfig(lr=1e-2, grad_clip=0.5)
    params, tokens, y = problem(cfg, rng, 6 if SIMULATED else 500)
    runs = []
    for _ in range(2):
        p, s = params, adam_init(params)
        dp = be.asarray(params)
        ds = be.adam_init(dp)
        for step in range(3):
            loss, _, g = loss_and_grads(p, tokens, y, cfg)
            p, s, _ = adam_update(p, g, s, adam_cfg)
            dp, ds, d_loss = be.train_step(dp, ds, tokens, y, cfg, adam_cfg)
            assert_close_to_oracle(d_loss, loss, np.float64, name=f"loss at step {step}")
        for k in p:
            assert_close_to_oracle(be.to_numpy(dp[k]), p[k], np.float64, name=f"params[{k}]")
        runs.append(be.to_numpy(dp))
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
    from kernels.numba import gpu
    assert gpu.warp_plan(cfg, T_TEST, tokens.shape[0], np.float64).kind == kind_of(name)


@needs_numba_cuda
def test_workspace_over_shared_memory_runs_one_thread_per_task(rng):
    """A model whose warp workspace exceeds 48 KiB still trains: on the thread-per-task kernel."""
    from kernels.numba import gpu
    be = kernels.get_backend("numba-cuda")
    B, T = 3, 11
    params, tokens, y = problem(PAPER_DEEP2, rng, B, T)
    be.fill_buffers(PAPER_DEEP2, T, B, np.float64, np.nan)
    loss, per_layer, grads = loss_and_grads(params, tokens, y, PAPER_DEEP2)
    d_loss, d_per_layer, d_grads = be.loss_and_grads(be.asarray(params), tokens, y, PAPER_DEEP2)
    assert_close_to_oracle(d_per_layer, per_layer, np.float64, B * T, "per-layer losses")
    for k in grads:
        assert_close_to_oracle(be.to_numpy(d_grads[k]), grads[k], np.float64, B * T, f"grads[{k}]")
    assert np.all(np.isfinite(gpu.plan(PAPER_DEEP2, T, B, np.float64).G.copy_to_host()))
    assert not any(key[0] == PAPER_DEEP2 for key in gpu._WARP_PLANS)
