"""Self-attention of the oracle: linear (SPEC 2.1) and softmax (SPEC 2.2), multi-head.

Shape legend: B tasks, T tokens, D token width, N keys (the first N tokens: the context, N = T - 1,
or every token with the query included), nh = num_heads heads, K key size (= value size).
H (B, T, D) is the token matrix. Parameters, as in the public code's Haiku modules (maps stored
(in, out), applied as H @ W):
    W_q, W_k, W_v: (D, nh*K) -- head h uses columns h*K:(h+1)*K
    W_p:           (nh*K, D) -- the output projection
Linear:  A^h = Q^h K^h^T                              (no softmax, no 1/N, no 1/sqrt(K))
Softmax: A^h = softmax(Q^h K^h^T / sqrt(K)) over keys (row max subtracted; optional causal mask)
Out:     concat_h(A^h V^h) @ W_p; every token is a query and is updated.
"""
import numpy as np

from .validate import array_module, check_array, check_same_dtype, check_positive_int, check_upstream

PARAM_NAMES = ("W_q", "W_k", "W_v", "W_p")


def _check_attention_args(H, params, num_heads, num_keys):
    check_array("H", H, ndim=3)
    B, T, D = H.shape
    if num_keys is None:
        num_keys = T - 1  # every token but the query (the last one)
    num_heads = check_positive_int("num_heads", num_heads)
    num_keys = check_positive_int("num_keys", num_keys)
    if num_keys > T:
        raise ValueError(f"num_keys: expected at most T = {T} tokens, got {num_keys}")
    for name in PARAM_NAMES:
        if name not in params:
            raise ValueError(f"params: missing attention parameter {name!r}")
    W_q = check_array("W_q", params["W_q"], ndim=2)
    if W_q.shape[0] != D:
        raise ValueError(f"W_q: expected {D} rows (the token width D of H), got shape {W_q.shape}")
    nhK = W_q.shape[1]
    if nhK % num_heads != 0 or nhK == 0:
        raise ValueError(f"W_q: {nhK} columns are not num_heads = {num_heads} heads of key size >= 1")
    check_array("W_k", params["W_k"], shape=(D, nhK))
    check_array("W_v", params["W_v"], shape=(D, nhK))
    check_array("W_p", params["W_p"], shape=(nhK, D))
    check_same_dtype(H=H, **{n: params[n] for n in PARAM_NAMES})
    return num_heads, num_keys, nhK // num_heads


def _dense(x, W):
    """x (..., D) @ W (D, F) as one 2-D product (one BLAS call instead of one per task)."""
    return (x.reshape(-1, x.shape[-1]) @ W).reshape(*x.shape[:-1], W.shape[1])


def _split_heads(x, num_heads):
    B, T, nhK = x.shape
    return x.reshape(B, T, num_heads, nhK // num_heads).transpose(0, 2, 1, 3)  # (B, nh, T, K)


def _merge_heads(x):
    B, nh, T, K = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, nh * K)  # (B, T, nh*K)


def _project(H, params, num_heads, num_keys):
    """Queries from all T tokens, keys and values from the first N tokens, each (B, nh, T|N, K).

    Also returns the key tokens C, copied once into a contiguous array (three products use it)."""
    Q = _split_heads(_dense(H, params["W_q"]), num_heads)  # (B, nh, T, K)
    C = H[:, :num_keys].copy()  # (B, N, D): the key/value tokens
    Kt = _split_heads(_dense(C, params["W_k"]), num_heads)  # (B, nh, N, K)
    V = _split_heads(_dense(C, params["W_v"]), num_heads)  # (B, nh, N, K)
    return Q, Kt, V, C


def _input_backward(dQ, dKt, dV, cache, input_grad=True):
    """From the gradients of Q, K, V (B, nh, T|N, K) to the weights and (if input_grad) to H."""
    H, C, params = cache["H"], cache["C"], cache["params"]
    D, N = H.shape[-1], C.shape[1]
    dQ, dKt, dV = _merge_heads(dQ), _merge_heads(dKt), _merge_heads(dV)  # (B, T|N, nh*K)
    H2 = H.reshape(-1, D)  # (B*T, D)
    C2 = C.reshape(-1, D)  # (B*N, D)
    grads = {
        "W_q": H2.T @ dQ.reshape(-1, dQ.shape[-1]),  # (D, nh*K)
        "W_k": C2.T @ dKt.reshape(-1, dKt.shape[-1]),  # (D, nh*K)
        "W_v": C2.T @ dV.reshape(-1, dV.shape[-1]),  # (D, nh*K)
    }
    if not input_grad:
        return None, grads
    dH = _dense(dQ, params["W_q"].T)  # (B, T, D): every token is a query
    dH[:, :N] += _dense(dKt, params["W_k"].T)  # the key tokens also feed K ...
    dH[:, :N] += _dense(dV, params["W_v"].T)  # ... and V
    return dH, grads


def _output_forward(A, V, W_p):
    """out = concat_h(A^h V^h) W_p for attention weights A (B, nh, T, N): (out (B, T, D), O)."""
    O = _merge_heads(A @ V)  # (B, T, nh*K)
    out = _dense(O, W_p)  # (B, T, D)
    return out, O


def _output_backward(dout, A, cache):
    """Through out = concat_h(A^h V^h) W_p: returns (dA (B, nh, T, N), dV (B, nh, N, K), dW_p).

    First checks dout like an input: the output has H's shape (B, T, D) and dtype."""
    check_upstream("dout", dout, cache["H"].shape, cache["H"].dtype)
    O, V = cache["O"], cache["V"]
    dW_p = O.reshape(-1, O.shape[-1]).T @ dout.reshape(-1, dout.shape[-1])  # (nh*K, D)
    dO = _split_heads(_dense(dout, cache["params"]["W_p"].T), cache["num_heads"])  # (B, nh, T, K)
    dA = dO @ V.transpose(0, 1, 3, 2)  # (B, nh, T, N)
    dV = A.transpose(0, 1, 3, 2) @ dO  # (B, nh, N, K)
    return dA, dV, dW_p


def _scores_backward(dscores, dV, dW_p, cache, input_grad=True):
    """Through scores = Q K^T (whatever made the weights from them): to Q, K, then to H and weights."""
    Q, Kt = cache["Q"], cache["Kt"]
    dQ = dscores @ Kt  # (B, nh, T, K)
    dKt = dscores.transpose(0, 1, 3, 2) @ Q  # (B, nh, N, K)
    dH, grads = _input_backward(dQ, dKt, dV, cache, input_grad)
    grads["W_p"] = dW_p
    return dH, grads


# ----------------------------------------------------------------------------------------------
def lsa_forward(H, params, num_heads=1, num_keys=None):
    """Linear self-attention. H: (B, T, D); returns (out (B, T, D), cache).

    num_keys: how many leading tokens are keys and values (default T - 1: all but the query).
    """
    num_heads, num_keys, key_size = _check_attention_args(H, params, num_heads, num_keys)
    Q, Kt, V, C = _project(H, params, num_heads, num_keys)
    A = Q @ Kt.transpose(0, 1, 3, 2)  # (B, nh, T, N)
    out, O = _output_forward(A, V, params["W_p"])  # (B, T, D)
    cache = dict(H=H, C=C, params=params, num_heads=num_heads, Q=Q, Kt=Kt, V=V, A=A, O=O)
    return out, cache


def lsa_backward(dout, cache, input_grad=True):
    """Returns (dH (B, T, D), {W_q, W_k, W_v, W_p gradients}); dH is None if not input_grad."""
    dA, dV, dW_p = _output_backward(dout, cache["A"], cache)  # (B, nh, T, N)
    return _scores_backward(dA, dV, dW_p, cache, input_grad)  # A = Q K^T: no nonlinearity between


# ----------------------------------------------------------------------------------------------
def causal_mask(num_tokens, num_keys):
    """(T, N) boolean: query token t sees key s iff s <= t."""
    return np.arange(num_keys)[None, :] <= np.arange(num_tokens)[:, None]


def softmax_attention_forward(H, params, num_heads=1, num_keys=None, causal=False):
    """Softmax self-attention, scores scaled by 1/sqrt(K). H: (B, T, D) -> (out (B, T, D), cache)."""
    num_heads, num_keys, key_size = _check_attention_args(H, params, num_heads, num_keys)
    Q, Kt, V, C = _project(H, params, num_heads, num_keys)
    scores = (Q @ Kt.transpose(0, 1, 3, 2)) / np.sqrt(key_size).astype(H.dtype)  # (B, nh, T, N)
    if causal:
        mask = array_module(H).asarray(causal_mask(H.shape[1], num_keys))  # (T, N)
        scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)  # stable: row max subtracted
    E = np.exp(scores)  # (B, nh, T, N)
    P = E / E.sum(axis=-1, keepdims=True)  # (B, nh, T, N)
    out, O = _output_forward(P, V, params["W_p"])  # (B, T, D)
    cache = dict(H=H, C=C, params=params, num_heads=num_heads, Q=Q, Kt=Kt, V=V, P=P, O=O,
                 key_size=key_size)
    return out, cache


def softmax_attention_backward(dout, cache, input_grad=True):
    """Returns (dH (B, T, D), {W_q, W_k, W_v, W_p gradients}); dH is None if not input_grad."""
    P = cache["P"]
    dP, dV, dW_p = _output_backward(dout, P, cache)  # (B, nh, T, N)
    # softmax Jacobian: dscores = P * (dP - sum_s dP P); masked entries have P = 0, so 0 there too
    dscores = P * (dP - (dP * P).sum(axis=-1, keepdims=True))  # (B, nh, T, N)
    dscores = dscores / np.sqrt(cache["key_size"]).astype(dscores.dtype)  # scores: Q K^T / sqrt(K)
    return _scores_backward(dscores, dV, dW_p, cache, input_grad)
