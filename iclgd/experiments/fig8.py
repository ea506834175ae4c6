"""Figures 7 and 8, the in-distribution comparison: figure 3's weight-tied and deep LSA models, with
several heads per layer and an MLP after each attention, against L-step GD and GD++ (SPEC 4.1, 4.2).
The paper's text: deeper models "with multiple heads and equipped with MLPs" give "qualitatively
equivalent results" to figure 3's. It does not give the head count or the depths of these figures;
`heads` and `mlp` are config keys, so `iclgd sweep fig8 --grid heads=1,2,4 --grid mlp=false,true`
covers the combinations. Everything else is fig7's, which is fig3's (variants, training, the GD++
fits, the in-distribution results keys) plus, per variant, Figure 7's out-of-distribution curves of
the TF, the token-clipped L-step GD and GD++ (iclgd.experiments.fig7.variant_ood; its grid keys and
results keys). The figure is fig3's (fig8.png) and fig7's (fig8-ood.png).
"""
from dataclasses import dataclass

from iclgd.experiments import fig7


@dataclass(frozen=True)
class Config(fig7.Config):
    heads: int = 2  # attention heads per layer, each of key size D (paper: "multiple heads", number not given)
    mlp: bool = True  # H <- H + MLP(H) after each attention, D -> 4D -> D, GELU (paper: "equipped with MLPs")

    def __post_init__(self):
        super().__post_init__()
        if self.heads < 1:
            raise ValueError(f"heads: expected an integer >= 1, got {self.heads}")

    def model_options(self):
        return {"num_heads": self.heads, "mlp": self.mlp}


QUICK = fig7.QUICK


def run(cfg: Config, seeds, backend, out_dir=None, resume=False, progress=True):
    r = fig7.run(cfg, seeds, backend, out_dir, resume, progress)
    r["notes"] = (f"fig3's and fig7's keys for models of {cfg.heads} heads per layer (key size D each), MLP "
                  f"{'on' if cfg.mlp else 'off'}. " + r["notes"])
    return r
