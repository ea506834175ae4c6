"""numba-cpu and numba-cuda against the float64 oracle on the same random inputs.

Every function of the backend interface: read-outs, input gradients, every parameter gradient,
loss, Adam, and a 10-step trajectory of the fused train_step. float64 to rtol 1e-10, float32 with
the tolerance table of conftest.py. The backends' persistent buffers are poisoned with NaN first,
so an entry read before it is written shows up as a non-finite result. Shapes are deliberately
uneven: T != D != H*K, two heads, and B not a multiple of the CPU chunk size or the CUDA block.

numba-cuda runs here when a GPU is present (or under NUMBA_ENABLE_CUDASIM=1, which
tests/kernels/test_numba_cuda_sim.py sets in a subprocess); otherwise it is skipped with the reason.
"""
import numpy as np
import pytest
from tests.conftest import SIMULATED, assert_close_to_oracle, model_configs

from refimpl import loss as oracle_loss
from refimpl import model as oracle_model
from refimpl import optim as oracle_optim
from refimpl.config import AdamConfig
from refimpl.params import init_params, params_astype

# name -> (config, tokens per task T). Every option the experiments use appears in some config.
CONFIGS = {name: (cfg, T) for (name, cfg), T in zip(
    model_configs("lsa_deep_2head_clip", "softmax_ln_mlp_causal", "tied_yupdate_ln_query",
                  "front_concat_softmax0", "posenc_add",
                  renamed={"lsa_deep_2head_clip": "deep3_2head_clip_damp"}).items(),
    [7, 6, 5, 7, 6])}
DTYPES = [np.float64, np.float32]


def batch_for(backend):
    # CPU: B = 130 gives chunks of 3 with a last chunk of 1. CUDA: blocks of 64, B = 70 leaves a
    # partial block; the simulator runs every thread in Python, so it gets 5 tasks (a partial block).
    if backend.name == "numba-cuda":
        return 5 if SIMULATED else 70
    return 130


def make_inputs(cfg, T, B, rng):
    params = init_params(cfg, rng)  # float64 oracle parameters
    tokens = rng.standard_normal((B, T, cfg.token_dim))  # (B, T, D_in)
    y = rng.standard_normal(B)  # (B,)
    return params, tokens, y


def cast(params, tokens, y, dtype):
    """The backend's float32/float64 inputs, and the float64 oracle inputs with the same values."""
    p = params_astype(params, dtype)
    tok, yy = tokens.astype(dtype), y.astype(dtype)
    return (p, tok, yy), (params_astype(p, np.float64), tok.astype(np.float64), yy.astype(np.float64))


def poison(backend, cfg, T, B, dtype):
    backend.fill_buffers(cfg, T, B, dtype, np.nan)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_backward_match_oracle(backend, name, dtype, rng):
    """Read-outs, d tokens and every parameter gradient for a random upstream gradient."""
    cfg, T = CONFIGS[name]
    B = batch_for(backend)
    (p, tok, _), (p64, tok64, _) = cast(*make_inputs(cfg, T, B, rng), dtype)
    poison(backend, cfg, T, B, dtype)
    read, cache = backend.model_forward(backend.asarray(p), backend.asarray(tok), cfg)
    read_o, cache_o = oracle_model.model_forward(p64, tok64, cfg)
    dread = rng.standard_normal(read_o.shape)  # (L, B)
    dtok, grads = backend.model_backward(backend.asarray(dread.astype(dtype)), cache)
    dtok_o, grads_o = oracle_model.model_backward(dread.astype(dtype).astype(np.float64), cache_o)
    red = T * cfg.model_dim * cfg.num_layers
    assert_close_to_oracle(backend.to_numpy(read), read_o, dtype, red, "readouts")
    assert_close_to_oracle(backend.to_numpy(dtok), dtok_o, dtype, red, "dtokens")
    grads = backend.to_numpy(grads)
    assert sorted(grads) == sorted(grads_o)
    for k in grads_o:
        assert_close_to_oracle(grads[k], grads_o[k], dtype, B * red, f"grads[{k}]")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["lsa_deep_2head_clip", "front_concat_softmax0"])
def test_loss_and_grads_match_oracle(backend, name, dtype, rng):
    cfg, T = CONFIGS[name]
    B = batch_for(backend)
    (p, tok, y), (p64, tok64, y64) = cast(*make_inputs(cfg, T, B, rng), dtype)
    poison(backend, cfg, T, B, dtype)
    loss, per_layer, grads = backend.loss_and_grads(backend.asarray(p), backend.asarray(tok),
                                                    backend.asarray(y), cfg)
    loss_o, per_layer_o, grads_o = oracle_loss.loss_and_grads(p64, tok64, y64, cfg)
    red = B * T * cfg.model_dim * cfg.num_layers
    assert_close_to_oracle(np.asarray(loss), np.asarray(loss_o), dtype, red, "loss")
    assert_close_to_oracle(np.asarray(per_layer), per_layer_o, dtype, red, "per-layer losses")
    grads = backend.to_numpy(grads)
    for k in grads_o:
        assert_close_to_oracle(grads[k], grads_o[k], dtype, red, f"grads[{k}]")


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_adam_update_matches_oracle(backend, dtype, grad_clip, rng):
    """Adam with and without global-norm clipping, from a state with nonzero moments (t = 3)."""
    cfg, _ = CONFIGS["softmax_ln_mlp_causal"]
    params = params_astype(init_params(cfg, rng), dtype)
    grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
    state = {"t": 3, "m": {k: (0.1 * rng.standard_normal(v.shape)).astype(dtype) for k, v in params.items()},
             "v": {k: rng.random(v.shape).astype(dtype) for k, v in params.items()}}
    acfg = AdamConfig(lr=1e-2, grad_clip=grad_clip)
    new_o, state_o, norm_o = oracle_optim.adam_update(params, grads, state, acfg)
    dev_state = {"t": 3, "m": backend.asarray(state["m"]), "v": backend.asarray(state["v"])}
    new, new_state, norm = backend.adam_update(backend.asarray(params), backend.asarray(grads),
                                               dev_state, acfg)
    assert new_state["t"] == 4
    assert_close_to_oracle(np.asarray(norm), np.asarray(norm_o), dtype, 1000, "norm")
    new, m, v = backend.to_numpy(new), backend.to_numpy(new_state["m"]), backend.to_numpy(new_state["v"])
    for k in params:
        assert_close_to_oracle(new[k], new_o[k], dtype, 1, f"params[{k}]")
        assert_close_to_oracle(m[k], state_o["m"][k], dtype, 1, f"m[{k}]")
        assert_close_to_oracle(v[k], state_o["v"][k], dtype, 1, f"v[{k}]")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_train_step_trajectory_matches_oracle(backend, dtype, rng):
    """10 fused steps (fresh batch each) follow the oracle's loss curve and end on its weights."""
    cfg, T = CONFIGS["lsa_deep_2head_clip"]
    B = batch_for(backend)
    acfg = AdamConfig(lr=1e-2, grad_clip=10.0)
    p64 = params_astype(params_astype(init_params(cfg, rng), dtype), np.float64)
    p, s = backend.asarray(params_astype(p64, dtype)), None
    s = backend.adam_init(p)
    s_o = oracle_optim.adam_init(p64)
    losses, losses_o = [], []
    for step in range(10):
        tok = rng.standard_normal((B, T, cfg.token_dim)).astype(dtype)
        y = rng.standard_normal(B).astype(dtype)
        p, s, loss = backend.train_step(p, s, backend.asarray(tok), backend.asarray(y), cfg, acfg)
        loss_o, _, g_o = oracle_loss.loss_and_grads(p64, tok.astype(np.float64), y.astype(np.float64), cfg)
        p64, s_o, _ = oracle_optim.adam_update(p64, g_o, s_o, acfg)
        losses.append(float(loss))
        losses_o.append(float(loss_o))
    # float32 error compounds over steps: Adam's normalised step turns a tiny gradient error into a
    # step-size-sized one, so the weights get the tolerance of a long reduction
    red = 10 * B * T * cfg.model_dim * cfg.num_layers
    assert_close_to_oracle(np.array(losses), np.array(losses_o), dtype, red, "loss curve")
    final = backend.to_numpy(p)
    for k in p64:
        assert_close_to_oracle(final[k], p64[k], dtype, red, f"params[{k}] after 10 steps")


def test_train_step_is_deterministic(backend, rng):
    """Two runs from the same state on the same batch give bit-identical parameters and loss."""
    cfg, T = CONFIGS["softmax_ln_mlp_causal"]
    B = batch_for(backend)
    params, tok, y = make_inputs(cfg, T, B, rng)
    acfg = AdamConfig(lr=1e-2, grad_clip=10.0)
    outs = []
    for _ in range(2):
        p = backend.asarray(params)
        s = backend.adam_init(p)
        for _ in range(2):
            p, s, loss = backend.train_step(p, s, backend.asarray(tok), backend.asarray(y), cfg, acfg)
        outs.append((float(loss), backend.to_numpy(p)))
    assert outs[0][0] == outs[1][0]
    for k in params:
        assert np.array_equal(outs[0][1][k], outs[1][1][k]), k


def test_mse_matches_oracle(backend, rng):
    y_hat, y = rng.standard_normal(9), rng.standard_normal(9)
    loss, cache = backend.mse_forward(backend.asarray(y_hat), backend.asarray(y))
    loss_o, cache_o = oracle_loss.mse_forward(y_hat, y)
    assert_close_to_oracle(np.asarray(loss), np.asarray(loss_o), np.float64, 9, "mse")
    d = backend.to_numpy(backend.mse_backward(0.7, cache))
    assert_close_to_oracle(d, oracle_loss.mse_backward(0.7, cache_o), np.float64, 9, "d mse")


def test_bad_input_names_the_argument(backend, rng):
    cfg, T = CONFIGS["posenc_add"]
    params, tok, y = make_inputs(cfg, T, 4, rng)
    with pytest.raises(ValueError, match="tokens"):
        backend.model_forward(backend.asarray(params), tok[:, :, :-1], cfg)
    with pytest.raises(ValueError, match="y"):
        backend.loss_and_grads(backend.asarray(params), tok, y[:-1], cfg)
