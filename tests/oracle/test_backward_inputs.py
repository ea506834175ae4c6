"""Every public backward of the oracle checks its upstream gradient like a forward input: exactly the
forward output's shape (no broadcasting) and dtype (no upcast), a NumPy array, finite; a bad one
raises a ValueError naming the argument. Sizes all differ: B = 2, T = 5, D = 3, nh*K = 2*4, F = 7.
"""
import numpy as np
import pytest

from refimpl import attention, layers
from refimpl.block import block_backward, block_forward
from refimpl.config import ModelConfig
from refimpl.loss import mse_backward, mse_forward
from refimpl.model import front_backward, front_forward, model_backward, model_forward
from refimpl.params import init_params

B, T, D, NH, K, F = 2, 5, 3, 2, 4, 7
DTYPES = [np.float64, np.float32]
BLOCK_CFG = ModelConfig(token_dim=D, key_size=K, num_heads=NH, attention="softmax", causal=True,
                        layernorm=True, ln_placement="pre", mlp=True, token_clip=0.5, y_update=True,
                        init_scale=1.0)
FRONT_CFG = ModelConfig(token_dim=D, key_size=K, embed_dim=6, input_mlp=True, pos_enc="concat",
                        pos_enc_size=4, init_scale=1.0)
MODEL_CFG = ModelConfig(token_dim=D, key_size=K, num_heads=NH, num_layers=3, token_clip=0.8,
                        init_scale=1.0)


def _attention_params(r):
    return {"W_q": r((D, NH * K)), "W_k": r((D, NH * K)), "W_v": r((D, NH * K)), "W_p": r((NH * K, D))}


def _model_case(cfg, which, r, rng, dtype):
    params = {k: v.astype(dtype) for k, v in init_params(cfg, rng).items()}
    tokens = r((B, T, cfg.token_dim))
    if which == "block":
        return block_forward(r((B, T, cfg.model_dim)), params, cfg, 0), block_backward, "dH"
    if which == "front":
        return front_forward(tokens, params, cfg), front_backward, "dH"
    return model_forward(params, tokens, cfg), model_backward, "dreadouts"


def forward_case(name, dtype, rng):
    """((out, cache), backward, name of its upstream argument) for one op in `dtype`."""
    def r(shape):
        return rng.standard_normal(shape).astype(dtype)
    x = r((B, T, D))
    ops = {
        "linear": lambda: layers.linear_forward(x, r((D, F)), r(F)),
        "linear_nobias": lambda: layers.linear_forward(x, r((D, F))),
        "layernorm": lambda: layers.layernorm_forward(x, r(D), r(D)),
        "gelu": lambda: layers.gelu_forward(x),
        "mlp": lambda: layers.mlp_forward(x, r((D, F)), r(F), r((F, D)), r(D)),
        "posenc_concat": lambda: layers.posenc_concat_forward(x, 4),
        "posenc_add": lambda: layers.posenc_add_forward(x),
        "clip": lambda: layers.clip_forward(x, 0.5),
        "lsa": lambda: attention.lsa_forward(x, _attention_params(r), NH),
        "softmax_attention": lambda: attention.softmax_attention_forward(x, _attention_params(r), NH,
                                                                         causal=True),
    }
    if name in ops:
        backward = getattr(layers, f"{name.replace('_nobias', '')}_backward", None)
        backward = backward or getattr(attention, f"{name}_backward")
        return ops[name](), backward, "dout"
    cfg = {"block": BLOCK_CFG, "front": FRONT_CFG, "front_empty": MODEL_CFG, "model": MODEL_CFG}[name]
    return _model_case(cfg, name.replace("_empty", ""), r, rng, dtype)


CASES = ["linear", "linear_nobias", "layernorm", "gelu", "mlp", "posenc_concat", "posenc_add", "clip",
         "lsa", "softmax_attention", "block", "front", "front_empty", "model"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_a_good_upstream_gradient_is_accepted(case, dtype, rng):
    (out, cache), backward, _ = forward_case(case, dtype, rng)
    dx, grads = backward(rng.standard_normal(out.shape).astype(dtype), cache)
    assert all(g.dtype == dtype for g in [dx, *grads.values()])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_wrong_shape_is_rejected_even_where_it_would_broadcast(case, dtype, rng):
    (out, cache), backward, arg = forward_case(case, dtype, rng)
    good = rng.standard_normal(out.shape).astype(dtype)
    wrong = [good[..., :-1], np.concatenate([good, good], axis=-1), good[:1], good[None], good.T]
    for bad in [w for w in wrong if w.shape != out.shape]:
        with pytest.raises(ValueError, match=rf"^{arg}: expected (shape|\d+ dim)"):
            backward(bad, cache)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_wrong_dtype_is_rejected_not_cast(case, dtype, rng):
    (out, cache), backward, arg = forward_case(case, dtype, rng)
    other = np.float32 if dtype == np.float64 else np.float64
    good = rng.standard_normal(out.shape)
    want, got = np.dtype(dtype).name, np.dtype(other).name
    with pytest.raises(ValueError, match=rf"^{arg}: expected dtype {want} \(the forward's\), got {got}$"):
        backward(good.astype(other), cache)
    with pytest.raises(ValueError, match=rf"^{arg}: expected dtype float32 or float64, got int64$"):
        backward(good.astype(np.int64), cache)
    with pytest.raises(ValueError, match=rf"^{arg}: expected a numpy.ndarray, got list$"):
        backward(good.astype(dtype).tolist(), cache)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_nan_or_inf_is_rejected(case, dtype, bad, rng):
    (out, cache), backward, arg = forward_case(case, dtype, rng)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dout.flat[dout.size // 2] = bad
    with pytest.raises(ValueError, match=rf"^{arg}: contains 1 NaN or inf value\(s\)$"):
        backward(dout, cache)


def test_checks_leave_the_numbers_unchanged(rng):
    """The checks change no number: clip's gradient is dout * mask, linear's dout @ W^T, exactly."""
    x = rng.standard_normal((B, T, D))
    _, (inside, _) = layers.clip_forward(x, 0.5)
    dout = rng.standard_normal(x.shape)
    assert np.array_equal(layers.clip_backward(dout, layers.clip_forward(x, 0.5)[1])[0], dout * inside)
    _, cache = layers.linear_forward(x, rng.standard_normal((D, F)))
    g = rng.standard_normal((B, T, F))
    assert np.array_equal(layers.linear_backward(g, cache)[0], g @ cache[1].T)


# ----------------------------------------------------------------------------------------------
# the loss: dloss is a finite real scalar (Python or NumPy number, or a 0-d float array)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_dloss_accepts_real_scalars_and_keeps_the_dtype(dtype, rng):
    y_hat, y = rng.standard_normal(B).astype(dtype), rng.standard_normal(B).astype(dtype)
    loss, cache = mse_forward(y_hat, y)
    want = mse_backward(0.7, cache)
    assert want.dtype == dtype and np.array_equal(want, (0.7 / B) * (y_hat - y))
    for dloss in [np.float64(0.7), np.array(0.7)]:
        assert np.array_equal(mse_backward(dloss, cache), want)
    for dloss in [np.float32(0.7), np.array(0.7, dtype=np.float32)]:  # its value, not its dtype, counts
        got = mse_backward(dloss, cache)
        assert got.dtype == dtype and np.array_equal(got, mse_backward(float(np.float32(0.7)), cache))
    assert np.array_equal(mse_backward(1, cache), mse_backward(1.0, cache))
    assert np.array_equal(mse_backward(np.ones_like(loss), cache), mse_backward(1.0, cache))


@pytest.mark.parametrize("dloss,message", [
    (float("nan"), "dloss: expected a finite real scalar, got nan"),
    (np.inf, "dloss: expected a finite real scalar, got inf"),
    (np.array(-np.inf), "dloss: expected a finite real scalar, got -inf"),
    (np.ones(1), r"dloss: expected a real scalar or a 0-d float array, got an array of shape \(1,\) "
                 "and dtype float64"),
    (np.ones((B,)), r"dloss: expected a real scalar or a 0-d float array, got an array of shape \(2,\)"),
    (np.array(1), "dloss: expected a real scalar or a 0-d float array, got an array of shape \\(\\) "
                  "and dtype int64"),
    (True, "dloss: expected a real scalar, got bool"),
    (1j, "dloss: expected a real scalar, got complex"),
    ("1.0", "dloss: expected a real scalar, got str"),
    (None, "dloss: expected a real scalar, got NoneType"),
])
def test_dloss_rejects_what_is_not_a_finite_real_scalar(dloss, message, rng):
    _, cache = mse_forward(rng.standard_normal(B + 1), rng.standard_normal(B + 1))
    with pytest.raises(ValueError, match=f"^{message}"):
        mse_backward(dloss, cache)
