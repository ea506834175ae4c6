"""The weights of a peer model (JAX or PyTorch) as its forward pass reads them, whatever tree they
are stored in: the public notebooks' Haiku tree, a torch state_dict, or refimpl's flat names.

    weights = {"embed":     E (D_in, D) or None,
               "input_mlp": (W_1 (D, F), b_1 (F,), W_2 (F, D), b_2 (D,)) or None,
               "sets":      [one set per parameter set p = cfg.param_layer(l)]}
    set     = {"W_q", "W_k", "W_v": (D, H*K),  "W_p": (H*K, D),
               "ln1": (scale (D,), offset (D,)) or None    LayerNorm before the attention
               "ln2": (scale (D,), offset (D,)) or None    LayerNorm before the MLP
               "mlp": (W_1, b_1, W_2, b_2) or None}
Arrays are the framework's own, oriented (in, out): y = x @ W + b. Building a view only indexes,
so autodiff through it reaches the stored tree.
"""


def attention_set(W_q, W_k, W_v, W_p, ln1=None, ln2=None, mlp=None):
    return {"W_q": W_q, "W_k": W_k, "W_v": W_v, "W_p": W_p, "ln1": ln1, "ln2": ln2, "mlp": mlp}


def from_refimpl(params, cfg):
    """The view of refimpl.params' names: "embed.W", "input_mlp.W1" ..., and per parameter set p
    "layer{p}.attn.W_q" ..., "layer{p}.ln1.scale" / ".offset", "layer{p}.ln2.*", "layer{p}.mlp.W1" ...
    (whichever the config has)."""
    def norm(prefix):
        return (params[prefix + "scale"], params[prefix + "offset"]) if prefix + "scale" in params else None

    def mlp(prefix):
        return tuple(params[prefix + n] for n in ("W1", "b1", "W2", "b2")) if prefix + "W1" in params else None

    sets = []
    for p in range(1 if cfg.weight_tied else cfg.num_layers):
        prefix = f"layer{p}."
        sets.append(attention_set(*(params[prefix + "attn." + n] for n in ("W_q", "W_k", "W_v", "W_p")),
                                  ln1=norm(prefix + "ln1."), ln2=norm(prefix + "ln2."), mlp=mlp(prefix + "mlp.")))
    return {"embed": params["embed.W"] if "embed.W" in params else None, "input_mlp": mlp("input_mlp."),
            "sets": sets}
