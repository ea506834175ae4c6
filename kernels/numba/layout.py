"""Plain-array description of a model for the Numba kernels: the config as integers, parameter
offsets into one flat vector, and the layout of one task's workspace.

The flat parameter vector follows `refimpl.params.param_shapes(cfg)` order (the order of
`refimpl.params.flatten`), so packing and unpacking are a concatenation and a split.

Arrays built here (all int64 except `cst`):
    ii   (NUM_II,)       TaskLayout: sizes, flags and workspace offsets, indexed by the I_* names
    lay  (L, NUM_LAY)    LayerLayout per application l: flags and parameter offsets, Y_* names
    cst  (NUM_CONSTS,)   constants in the data's dtype, kernels.numba.ops.C_* names
    pe   (T, PW)         the sinusoidal table (concatenated or added), or (T, 1) zeros when unused
Workspace of one task (ws, 1-D): the front end's buffers, then one block per application
(the layer's input x, the LayerNorm caches, Q, K, V, K^T V or P, O, u and z of the
query-row attention, ...), then backward scratch.
"""
import math
from typing import NamedTuple

import numpy as np

from refimpl.layers import GELU_C, LN_EPS, sinusoidal_encoding
from refimpl.params import param_offsets

from kernels.numba.ops import (C_CLIP, C_EXP_BIAS, C_EXP_BIT, C_EXP_LIM, C_EXP_LN2_HI, C_EXP_LN2_LO,
                               C_EXP_LOG2E, C_EXP_POLY, C_EXP_POW, C_EXP_ROUND, C_EXP_SCALE, C_GELU_A, C_GELU_C, C_HALF,
                               C_INV_B, C_LAM, C_LN_EPS, C_NEG_INF, C_ONE, C_SQRT_K, C_ZERO, EXP_BIAS,
                               EXP_BITS, EXP_DEGREE, NUM_CONSTS)


class TaskLayout(NamedTuple):
    """The entries of `ii`, in order: sizes, flags, parameter offsets, workspace offsets."""
    # sizes
    T: int  # tokens per task
    DIN: int  # token width D_in
    DF: int  # width after the optional concatenated encoding
    D: int  # model width
    S: int  # keys (T, or T - 1 without the query)
    H: int  # heads
    K: int  # key size
    F: int  # MLP hidden width (0: no MLP)
    E: int  # embedding width (0: no embedding)
    FI: int  # input-MLP hidden width (0: none)
    L: int  # applications (read-outs)
    PW: int  # width of the positional-encoding table
    # flags
    POS: int  # POS_CODES of cfg.pos_enc
    MLP: int
    LN2: int
    YUP: int
    CAUSAL: int
    CLIP: int
    EMB: int
    IMLP: int
    # front-end parameter offsets (-1 when absent)
    P_EMB: int
    P_IW1: int
    P_IB1: int
    P_IW2: int
    P_IB2: int
    # workspace offsets of the front end
    W_XF: int
    W_XE: int
    W_IH: int
    W_IG: int
    W_X0: int
    # per-application block: base, stride, and offsets inside a block
    W_LAYER: int
    W_LSTRIDE: int
    B_X: int
    B_XH1: int
    B_R1: int
    B_AIN: int
    B_Q: int
    B_KT: int
    B_V: int
    B_PK: int
    B_O: int
    B_XM: int
    B_XC: int
    B_XH2: int
    B_R2: int
    B_MIN: int
    B_MH: int
    B_MG: int
    B_U: int
    B_Z: int
    # backward scratch and the total size
    W_DX: int
    W_DA: int
    W_DO: int
    W_DQ: int
    W_DK: int
    W_DV: int
    W_DP: int
    W_DH: int
    W_DT: int
    W_DU: int
    W_DW: int
    W_DG: int
    W_SIZE: int
    # number of parameters
    NP: int


# indices into ii (the kernels read ii[I_name]); tests/kernels/test_numba_layout.py checks them
# against TaskLayout's field order
(I_T, I_DIN, I_DF, I_D, I_S, I_H, I_K, I_F, I_E, I_FI, I_L, I_PW,
 I_POS, I_MLP, I_LN2, I_YUP, I_CAUSAL, I_CLIP, I_EMB, I_IMLP,
 I_P_EMB, I_P_IW1, I_P_IB1, I_P_IW2, I_P_IB2,
 I_W_XF, I_W_XE, I_W_IH, I_W_IG, I_W_X0,
 I_W_LAYER, I_W_LSTRIDE, I_B_X, I_B_XH1, I_B_R1, I_B_AIN, I_B_Q, I_B_KT, I_B_V, I_B_PK, I_B_O,
 I_B_XM, I_B_XC, I_B_XH2, I_B_R2, I_B_MIN, I_B_MH, I_B_MG, I_B_U, I_B_Z,
 I_W_DX, I_W_DA, I_W_DO, I_W_DQ, I_W_DK, I_W_DV, I_W_DP, I_W_DH, I_W_DT, I_W_DU, I_W_DW, I_W_DG,
 I_W_SIZE, I_NP) = range(64)
II_NAMES = TaskLayout._fields
NUM_II = len(II_NAMES)

POS_CODES = {"none": 0, "add": 1, "concat": 2}


class LayerLayout(NamedTuple):
    """The columns of `lay` for one application: flags, then parameter offsets (-1 when absent)."""
    LN1: int  # LayerNorm before attention
    SOFTMAX: int  # softmax (1) or linear (0) attention
    LN1S: int
    LN1O: int
    WQ: int
    WK: int
    WV: int
    WP: int
    LN2S: int
    LN2O: int
    W1: int
    B1: int
    W2: int
    B2: int


# columns of lay (the kernels read lay[l, Y_name]), in LayerLayout's field order
(Y_LN1, Y_SOFTMAX, Y_LN1S, Y_LN1O, Y_WQ, Y_WK, Y_WV, Y_WP, Y_LN2S, Y_LN2O,
 Y_W1, Y_B1, Y_W2, Y_B2) = range(14)
LAY_NAMES = LayerLayout._fields
NUM_LAY = len(LAY_NAMES)


def build_layout(cfg, num_tokens):
    """(ii, lay) for `cfg` and T = num_tokens tokens per task."""
    T = int(num_tokens)
    offs, total = param_offsets(cfg)
    off = lambda name: offs[name][0] if name in offs else -1  # noqa: E731
    D, DF, E = cfg.model_dim, cfg.front_dim, cfg.embed_dim
    H, K = cfg.num_heads, cfg.key_size
    HK = H * K
    S = T if cfg.include_query else T - 1
    F = cfg.mlp_widening * D if cfg.mlp else 0
    FI = cfg.mlp_widening * E if cfg.input_mlp else 0
    PW = cfg.pos_enc_size if cfg.pos_enc == "concat" else (D if cfg.pos_enc == "add" else 0)
    v = dict(T=T, DIN=cfg.token_dim, DF=DF, D=D, S=S, H=H, K=K, F=F, E=E, FI=FI,
             L=cfg.num_layers, PW=PW, POS=POS_CODES[cfg.pos_enc], MLP=int(cfg.mlp),
             LN2=int(cfg.mlp and cfg.layernorm), YUP=int(cfg.y_update), CAUSAL=int(cfg.causal),
             CLIP=int(cfg.token_clip > 0), EMB=int(E > 0), IMLP=int(cfg.input_mlp),
             P_EMB=off("embed.W"), P_IW1=off("input_mlp.W1"), P_IB1=off("input_mlp.b1"),
             P_IW2=off("input_mlp.W2"), P_IB2=off("input_mlp.b2"), NP=total)
    # workspace: front end
    w = 0
    v["W_XF"], w = w, w + T * DF  # (T, DF) tokens after the optional concatenated encoding
    v["W_XE"], w = w, w + T * max(E, 1)  # (T, E) embedding output
    v["W_IH"], w = w, w + T * max(FI, 1)  # (T, FI) input-MLP pre-activation
    v["W_IG"], w = w, w + T * max(FI, 1)  # (T, FI) input-MLP GELU output
    v["W_X0"], w = w, w + T * D  # unused spare row block (keeps offsets simple)
    # one block per application
    PK = H * max(T * S, K * K)
    b = 0
    for name, size in (("B_X", T * D), ("B_XH1", T * D), ("B_R1", T), ("B_AIN", T * D),
                       ("B_Q", T * HK), ("B_KT", S * HK), ("B_V", S * HK), ("B_PK", PK),
                       ("B_O", T * HK), ("B_XM", T * D), ("B_XC", T * D), ("B_XH2", T * D),
                       ("B_R2", T), ("B_MIN", T * D), ("B_MH", T * max(F, 1)), ("B_MG", T * max(F, 1)),
                       ("B_U", H * D), ("B_Z", H * D)):  # u_h, z_h of kernels/numba/query_lsa.py
        v[name], b = b, b + size
    v["W_LAYER"], v["W_LSTRIDE"] = w, b
    w += (cfg.num_layers + 1) * b  # block L holds the final residual stream in B_X
    # backward scratch
    W = max(D, DF, E, 1)
    for name, size in (("W_DX", T * W), ("W_DA", T * W), ("W_DO", T * HK), ("W_DQ", T * HK),
                       ("W_DK", S * HK), ("W_DV", S * HK), ("W_DP", PK),
                       ("W_DH", T * max(F, FI, 1)), ("W_DT", T * W), ("W_DU", T * W),
                       ("W_DW", H * D), ("W_DG", H * D)):
        v[name], w = w, w + size
    v["W_SIZE"] = w
    ii = np.array(TaskLayout(**v), dtype=np.int64)
    lay = np.full((cfg.num_layers, NUM_LAY), -1, dtype=np.int64)
    for l in range(cfg.num_layers):
        p = f"layer{cfg.param_layer(l)}"
        lay[l, Y_LN1] = int(cfg.layer_has_ln(l))
        lay[l, Y_SOFTMAX] = int(cfg.layer_attention(l) == "softmax")
        for col, name in ((Y_LN1S, "ln1.scale"), (Y_LN1O, "ln1.offset"), (Y_WQ, "attn.W_q"),
                          (Y_WK, "attn.W_k"), (Y_WV, "attn.W_v"), (Y_WP, "attn.W_p"),
                          (Y_LN2S, "ln2.scale"), (Y_LN2O, "ln2.offset"), (Y_W1, "mlp.W1"),
                          (Y_B1, "mlp.b1"), (Y_W2, "mlp.W2"), (Y_B2, "mlp.b2")):
            lay[l, col] = off(f"{p}.{name}")
    return ii, lay


def build_constants(cfg, dtype, batch):
    """The dtype-valued constants of SPEC 2.2-2.3 used inside the kernels (1/B for the loss)."""
    c = np.zeros(NUM_CONSTS, dtype=np.float64)
    c[C_ZERO], c[C_ONE], c[C_HALF] = 0.0, 1.0, 0.5
    c[C_LAM], c[C_CLIP], c[C_LN_EPS] = cfg.dampening, cfg.token_clip, LN_EPS
    c[C_GELU_C], c[C_GELU_A] = GELU_C, 0.044715
    c[C_SQRT_K] = np.sqrt(cfg.key_size)
    c[C_NEG_INF] = -np.inf
    c[C_INV_B] = 1.0 / batch  # mse_backward: (dloss / B) * r
    exp_constants(c, dtype)
    return c.astype(dtype)


def exp_reduction(dtype):
    """The exp of the GELU kernels (ops.gelu_tanh, gpt2_ops.gelu_fwd) in `dtype`: log2(e), the clamp
    of its argument, ln 2 in two parts (fdlibm's for float64, a 9-bit head for float32, so that
    k ln2_hi is exact in either) and the Taylor coefficients 1/EXP_DEGREE!, ..., 1/1!, 1."""
    single = np.dtype(dtype) == np.float32
    ln2_hi, ln2_lo = (0.693359375, -2.12194440e-4) if single else (6.93147180369123816490e-01,
                                                                   1.90821492927058770002e-10)
    poly = [1.0 / math.factorial(j) for j in range(EXP_DEGREE, -1, -1)]
    return 1.0 / math.log(2.0), 40.0, ln2_hi, ln2_lo, poly


def exp_constants(c, dtype):
    """Fill the constants of ops.gelu_tanh's exp into c (float64, NUM_CONSTS): exp_reduction's,
    EXP_BIAS and 2^-EXP_BIAS, the rounding constant, the binary digits' values and powers."""
    single = np.dtype(dtype) == np.float32
    c[C_EXP_LOG2E], c[C_EXP_LIM], c[C_EXP_LN2_HI], c[C_EXP_LN2_LO], poly = exp_reduction(dtype)
    c[C_EXP_BIAS], c[C_EXP_SCALE] = EXP_BIAS, 2.0 ** -EXP_BIAS
    c[C_EXP_ROUND] = 1.5 * 2.0 ** (23 if single else 52)  # y + this - this: y rounded to an integer
    for b in range(EXP_BITS):
        c[C_EXP_BIT + b] = 2.0 ** (EXP_BITS - 1 - b)
        c[C_EXP_POW + b] = 2.0 ** (2 ** (EXP_BITS - 1 - b))
    c[C_EXP_POLY:C_EXP_POLY + EXP_DEGREE + 1] = poly


def build_posenc(cfg, num_tokens, dtype):
    """(T, PW) encoding table in `dtype`, computed exactly as the oracle does; (T, 1) zeros if unused."""
    if cfg.pos_enc == "concat":
        return np.ascontiguousarray(sinusoidal_encoding(num_tokens, cfg.pos_enc_size, dtype))
    if cfg.pos_enc == "add":
        return np.ascontiguousarray(sinusoidal_encoding(num_tokens, cfg.model_dim, dtype))
    return np.zeros((num_tokens, 1), dtype)


def cached_plan(cache, make, cfg, T, B, dtype, limit=16):
    """make(cfg, T, B, dtype) built once per (cfg, T, B, dtype) and kept in `cache` (a dict, emptied
    when it holds more than `limit` plans): the backends' persistent buffers."""
    key = (cfg, T, B, np.dtype(dtype).str)
    if key not in cache:
        if len(cache) > limit:
            cache.clear()
        cache[key] = make(cfg, T, B, dtype)
    return cache[key]


# ------------------------------------------------------------------------------ numba-cpu's buffers
MAX_CHUNKS = 64  # per-chunk gradient rows of kernels.numba.cpu; B / MAX_CHUNKS tasks per chunk (at least 1)


def chunking(batch):
    """(tasks per chunk, number of chunks): a function of B only, so results are deterministic."""
    chunk = max(1, -(-batch // MAX_CHUNKS))
    return chunk, -(-batch // chunk)


class _Plan:
    """Everything kernels.numba.cpu's task kernel needs for one (cfg, T, B, dtype), built once and reused."""

    def __init__(self, cfg, T, B, dtype):
        self.ii, self.lay = build_layout(cfg, T)
        self.cst = build_constants(cfg, dtype, B)
        self.pe = build_posenc(cfg, T, dtype)
        self.chunk, self.nch = chunking(B)
        self.ws = np.empty(self.nch * int(self.ii[I_W_SIZE]), dtype)
        self.G = np.empty(self.nch * int(self.ii[I_NP]), dtype)
        self.rd = np.empty((cfg.num_layers, B), dtype)
        self.dr = np.empty((cfg.num_layers, B), dtype)
        self.sq = np.empty((self.nch, cfg.num_layers), dtype)
        self.no_dtok = np.empty((1, 1, 1), dtype)  # dtok placeholder where no input gradient is made
        self.y0 = np.empty(B, dtype)  # y placeholder outside MODE_LOSS


_PLANS = {}


def plan(cfg, T, B, dtype):
    return cached_plan(_PLANS, _Plan, cfg, T, B, dtype, limit=16)
