"""numba-cpu kernels of the GPT-2 style in-context model (refimpl.gpt2, SPEC 2.7): the forward, the
MSE gradient and the backward of a chunk of whole prompts, chunks on threads in parallel.

Mirrors refimpl.gpt2.gpt2_forward / gpt2_backward / loss_and_grads (float64: equal to rounding;
float32 computed in float32). kernels/numba/gpt2_host.py builds the buffers and runs the kernels.

Shape legend: B prompts, n = T/2 read-outs per prompt, T tokens, d token width, M = B*T token rows,
R = B*n read-out rows, E model width, nh heads, K = E / nh head size, F MLP width, L blocks,
P parameters, C chunks. A chunk is prompts [b0, b1): token rows [b0 T, b1 T), read-out rows
[b0 n, b1 n). Every linear layer of a chunk is one BLAS product over the chunk's rows (np.dot).
    H = tokens W_in + b_in + pos[:T]                                  (M, E)  the residual stream
    per block l: a_in = LN1(H); qkv = a_in [W_q W_k W_v] + [b_q b_k b_v] (M, 3E); o = heads(qkv)
                 H += o W_p + b_p; m_in = LN2(H); h = m_in W1 + b1; g = gelu(h) (M, F); H += g W2 + b2
    Hx = H at the x positions (R, E); Hf = LN_f(Hx); pred = Hf w_out + b_out (R, 1)
The three attention input products are one, with [W_q W_k W_v] (E, 3E) concatenated by the host.
Only the x positions are read out, so the final LayerNorm runs on those rows alone (its backward
gives 0 on the others, as the oracle's does). Backward: the same steps in reverse.

Kernels (`@njit(cache=True, nogil=True)`, run by gpt2_host on a pool of threads, one chunk per task):
    chunk_forward   refimpl.gpt2.gpt2_forward on one chunk: its activations and predictions
    chunk_backward  refimpl.gpt2.gpt2_backward on one chunk, from d pred (the host makes it: the
                    oracle's mse_backward, or a given one): its own gradient row Gp[c] (P,) and,
                    when asked, d tokens
    sum_chunks      a piece of the gradient vector: each entry the sum of the C rows in chunk order,
                    and the piece's sum of squares (the global norm's, for the clipping)
    adam_piece      a piece of kernels.numba.adam's clipped Adam step, in place
launch shape: C chunks handed to the threads one at a time (dynamic), forward then backward, then
PIECES fixed pieces of the sum, then of Adam. Each chunk has its own scratch (the attention's, the exp's). The
building blocks (kernels/numba/gpt2_ops.py) are plain `@njit` functions of one chunk: linear_fwd/bwd
(refimpl.layers.linear_*), ln_fwd/bwd (layernorm_*), gelu_fwd/bwd (gelu_*, with
kernels.numba.front's arithmetic), head_fwd/bwd (refimpl.gpt2.causal_attention_* for one prompt
and head). `error_model="numpy"`: a division is the CPU's (as NumPy's), without Python's zero
test, which would keep every loop with a division from vectorising.
Determinism: chunks are fixed by B alone and pieces by P alone, every entry is written by one
chunk, rows are summed in chunk order and the pieces' squares in piece order: the same bits
whatever the thread count. Each thread's BLAS runs on one
thread (gpt2_host.blas_one_thread).
"""
import numpy as np
from numba import njit

from kernels.numba.adam import adam_element
from kernels.numba.ops import C_ZERO
from kernels.numba.gpt2_ops import (  # noqa: F401  (the building blocks and layout, re-exported)
    BLOCK_NAMES, EXP_DEGREE, E_BIAS, E_LIM, E_LN2_HI, E_LN2_LO, E_LOG2E, E_POLY, E_SHIFT, GLOBAL_NAMES,
    G_BIN, G_BOUT, G_LNFO, G_LNFS, G_POS, G_POS_ROWS, G_WIN, G_WOUT, NUM_GPT2_CONSTS, O_B1, O_B2,
    O_BK, O_BP, O_BQ, O_BV, O_LN1O, O_LN1S, O_LN2O, O_LN2S, O_W1, O_W2, O_WK, O_WP, O_WQ, O_WV, _head_in,
    _head_out, _mat, _part, gelu_bwd, gelu_fwd, head_bwd, head_fwd, linear_bwd, linear_fwd, ln_bwd,
    ln_fwd)


@njit(cache=True, nogil=True, error_model="numpy")
def chunk_forward(b0, b1, tok, pv, off, Wqkv, bqkv, acts, S, W, Ib, Fb, cst):
    """refimpl.gpt2.gpt2_forward on prompts [b0, b1). acts holds one block's buffers per block, or
    one for all (a forward that keeps nothing: block l uses slot l % slots)."""
    H, a_in, xh1, r1, qkv, P, o, m_in, xh2, r2, hh, tt, gg, Hx, Hf, xhf, rf, pred = acts
    T, d = tok.shape[1], tok.shape[2]
    E, F, nh, L, slots = H.shape[1], hh.shape[2], P.shape[2], off.shape[0] - 1, a_in.shape[0]
    K, n = E // nh, T // 2
    ra, rb, xa, xb = b0 * T, b1 * T, b0 * n, b1 * n
    g = off[L]
    Hc, Sc = H[ra:rb], S[ra:rb]  # (m, E)
    linear_fwd(tok[b0:b1].reshape((rb - ra, d)), _mat(pv, g[G_WIN], d, E), pv[g[G_BIN]:g[G_BIN] + E], Hc, Sc, 0)
    pos = _mat(pv, g[G_POS], g[G_POS_ROWS], E)
    for i in range(rb - ra):
        for j in range(E):
            Hc[i, j] += pos[i % T, j]
    for l in range(L):
        q, k = off[l], l % slots
        ln_fwd(Hc, pv[q[O_LN1S]:q[O_LN1S] + E], pv[q[O_LN1O]:q[O_LN1O] + E], a_in[k, ra:rb], xh1[k, ra:rb],
               r1[k, ra:rb], cst)
        linear_fwd(a_in[k, ra:rb], Wqkv[l], bqkv[l], qkv[k, ra:rb], Sc, 0)
        for b in range(b0, b1):
            for h in range(nh):
                head_fwd(qkv[k], P[k, b, h], o[k], b * T, h * K, W, cst)
        linear_fwd(o[k, ra:rb], _mat(pv, q[O_WP], E, E), pv[q[O_BP]:q[O_BP] + E], Hc, Sc, 1)
        ln_fwd(Hc, pv[q[O_LN2S]:q[O_LN2S] + E], pv[q[O_LN2O]:q[O_LN2O] + E], m_in[k, ra:rb], xh2[k, ra:rb],
               r2[k, ra:rb], cst)
        linear_fwd(m_in[k, ra:rb], _mat(pv, q[O_W1], E, F), pv[q[O_B1]:q[O_B1] + F], hh[k, ra:rb], Sc, 0)
        gelu_fwd(hh[k, ra:rb], gg[k, ra:rb], tt[k, ra:rb], Ib, Fb, cst)
        linear_fwd(gg[k, ra:rb], _mat(pv, q[O_W2], F, E), pv[q[O_B2]:q[O_B2] + E], Hc, Sc, 1)
    for i in range(xb - xa):  # the x positions: token 2i of each prompt
        for j in range(E):
            Hx[xa + i, j] = Hc[2 * i, j]
    ln_fwd(Hx[xa:xb], pv[g[G_LNFS]:g[G_LNFS] + E], pv[g[G_LNFO]:g[G_LNFO] + E], Hf[xa:xb], xhf[xa:xb], rf[xa:xb],
           cst)
    linear_fwd(Hf[xa:xb], _mat(pv, g[G_WOUT], E, 1), pv[g[G_BOUT]:g[G_BOUT] + 1], pred[xa:xb], Sc, 0)


@njit(cache=True, nogil=True, error_model="numpy")
def chunk_backward(b0, b1, dpred, tok, pv, off, Wqkv, acts, scratch, dWqkv, dbqkv, W, ds, Gc, dtok, input_grad, cst):
    """refimpl.gpt2.gpt2_backward on prompts [b0, b1): dpred (R, 1) -> this chunk's gradient row
    Gc (P,) (every entry written) and, when input_grad, dtok[b0:b1]. Steps of chunk_forward in reverse."""
    H, a_in, xh1, r1, qkv, P, o, m_in, xh2, r2, hh, tt, gg, Hx, Hf, xhf, rf, pred = acts
    dH, dE, dF, dQKV, dHf, dHx = scratch
    T, d = tok.shape[1], tok.shape[2]
    E, F, nh, L = H.shape[1], hh.shape[2], P.shape[2], off.shape[0] - 1
    K, n = E // nh, T // 2
    ra, rb, xa, xb = b0 * T, b1 * T, b0 * n, b1 * n
    g = off[L]
    # read-out and final LayerNorm: dHf = dpred w_out^T (one term per entry), then d at the x rows
    w_out = pv[g[G_WOUT]:g[G_WOUT] + E]
    for i in range(xa, xb):
        for j in range(E):
            dHf[i, j] = dpred[i, 0] * w_out[j]
    linear_bwd(Hf[xa:xb], _mat(pv, g[G_WOUT], E, 1).T, dpred[xa:xb], dHf[xa:xb], _mat(Gc, g[G_WOUT], E, 1),
               Gc[g[G_BOUT]:g[G_BOUT] + 1], False)
    ln_bwd(dHf[xa:xb], xhf[xa:xb], rf[xa:xb], pv[g[G_LNFS]:g[G_LNFS] + E], dHx[xa:xb], 0,
           Gc[g[G_LNFS]:g[G_LNFS] + E], Gc[g[G_LNFO]:g[G_LNFO] + E], cst)
    dHc, dEc = dH[ra:rb], dE[ra:rb]  # (m, E)
    for i in range(rb - ra):
        for j in range(E):
            dHc[i, j] = dHx[xa + i // 2, j] if i % 2 == 0 else cst[C_ZERO]  # only x positions are read out
    for l in range(L - 1, -1, -1):
        q = off[l]
        # MLP branch: dH -> dg -> dh -> dm_in; LN2 adds its input gradient to dH
        linear_bwd(gg[l, ra:rb], _mat(pv, q[O_W2], F, E).T, dHc, dF[ra:rb], _mat(Gc, q[O_W2], F, E),
                   Gc[q[O_B2]:q[O_B2] + E], True)
        gelu_bwd(dF[ra:rb], hh[l, ra:rb], tt[l, ra:rb], cst)
        linear_bwd(m_in[l, ra:rb], _mat(pv, q[O_W1], E, F).T, dF[ra:rb], dEc, _mat(Gc, q[O_W1], E, F),
                   Gc[q[O_B1]:q[O_B1] + F], True)
        ln_bwd(dEc, xh2[l, ra:rb], r2[l, ra:rb], pv[q[O_LN2S]:q[O_LN2S] + E], dHc, 1,
               Gc[q[O_LN2S]:q[O_LN2S] + E], Gc[q[O_LN2O]:q[O_LN2O] + E], cst)
        # attention branch: dH -> do -> d[q k v] -> da_in; LN1 adds its input gradient to dH
        linear_bwd(o[l, ra:rb], _mat(pv, q[O_WP], E, E).T, dHc, dEc, _mat(Gc, q[O_WP], E, E),
                   Gc[q[O_BP]:q[O_BP] + E], True)
        for b in range(b0, b1):
            for h in range(nh):
                head_bwd(dE, qkv[l], P[l, b, h], dQKV, b * T, h * K, W, ds, cst)
        linear_bwd(a_in[l, ra:rb], Wqkv[l].T, dQKV[ra:rb], dEc, dWqkv, dbqkv, True)  # da_in: the three in one
        for c, (ow, ob) in enumerate(((O_WQ, O_BQ), (O_WK, O_BK), (O_WV, O_BV))):
            Gw = _mat(Gc, q[ow], E, E)
            for i in range(E):
                for j in range(E):
                    Gw[i, j] = dWqkv[i, c * E + j]
                Gc[q[ob] + i] = dbqkv[c * E + i]
        ln_bwd(dEc, xh1[l, ra:rb], r1[l, ra:rb], pv[q[O_LN1S]:q[O_LN1S] + E], dHc, 1,
               Gc[q[O_LN1S]:q[O_LN1S] + E], Gc[q[O_LN1O]:q[O_LN1O] + E], cst)
    Gpos = _mat(Gc, g[G_POS], g[G_POS_ROWS], E)  # pos[:T] is added to every prompt: the chunk's sum
    for t in range(g[G_POS_ROWS]):
        for j in range(E):
            Gpos[t, j] = cst[C_ZERO]  # positions a shorter prompt does not reach stay 0
    for i in range(rb - ra):
        for j in range(E):
            Gpos[i % T, j] += dHc[i, j]
    linear_bwd(tok[b0:b1].reshape((rb - ra, d)), _mat(pv, g[G_WIN], d, E).T, dHc,
               dtok[b0:b1].reshape((rb - ra, d)) if input_grad else dtok[0], _mat(Gc, g[G_WIN], d, E),
               Gc[g[G_BIN]:g[G_BIN] + E], input_grad)


# ------------------------------------------------------------------------------ the gradient's sum, Adam
@njit(cache=True, nogil=True)
def sum_chunks(Gp, grad, sq, piece, npieces):
    """Piece `piece` of npieces of range(P): grad[j] = sum over chunks of Gp[c, j] in chunk order,
    and sq[piece] = the sum of its grad[j]^2 in float64 (a piece of refimpl.optim.global_norm^2)."""
    j0, j1 = _part(piece, npieces, grad.shape[0])
    acc = 0.0
    for j in range(j0, j1):
        s = Gp[0, j]
        for c in range(1, Gp.shape[0]):
            s += Gp[c, j]
        grad[j] = s
        acc += np.float64(s) * np.float64(s)
    sq[piece] = acc


@njit(cache=True, nogil=True)
def adam_piece(p, g, m, v, h, piece, npieces):
    """kernels.numba.adam.adam_kernel on piece `piece` of npieces of the flat vectors: clipping
    (g * h.clip_factor) and Adam in place."""
    j0, j1 = _part(piece, npieces, p.shape[0])
    for i in range(j0, j1):
        adam_element(p, m, v, i, g[i] * h.clip_factor, h)
