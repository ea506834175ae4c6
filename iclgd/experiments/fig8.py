"""Figures 7 and 8, the in-distribution comparison: figure 3's weight-tied and deep LSA models, with
several heads per layer and an MLP after each attention, against L-step GD and GD++ (SPEC 4.1, 4.2).
The paper's text: deeper models "with multiple heads and equipped with MLPs" give "qualitatively
equivalent results" to figure 3's. It does not give the head count or the depths of these figures;
`heads` and `mlp` are config keys, so `iclgd sweep fig8 --grid heads=1,2,4 --grid mlp=false,true`
covers the combinations. Everything else (variants, training, the GD++ fits, the results keys) is
fig3's; Figure 7's out-of-distribution panels are not computed here (fig7 computes them for figure
3's one-head models without MLPs, through fig3.run's per_variant).
"""
from dataclasses import dataclass

from iclgd.experiments import fig3


@dataclass(frozen=True)
class Config(fig3.Config):
    heads: int = 2  # attention heads per layer, each of key size D (paper: "multiple heads", number not given)
    mlp: bool = True  # H <- H + MLP(H) after each attention, D -> 4D -> D, GELU (paper: "equipped with MLPs")

    def __post_init__(self):
        super().__post_init__()
        if self.heads < 1:
            raise ValueError(f"heads: expected an integer >= 1, got {self.heads}")

    def model_options(self):
        return {"num_heads": self.heads, "mlp": self.mlp}


QUICK = fig3.QUICK
run = fig3.run
