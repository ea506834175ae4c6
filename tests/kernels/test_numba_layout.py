"""kernels/numba/layout.py: the index names the kernels read (I_*, Y_*) are the positions of the
TaskLayout / LayerLayout fields, and build_layout fills ii and lay through them."""
import numpy as np
import pytest

from kernels.numba import layout
from refimpl.config import ModelConfig
from refimpl.params import param_offsets


@pytest.mark.parametrize("prefix, fields", [("I_", layout.TaskLayout._fields),
                                            ("Y_", layout.LayerLayout._fields)])
def test_index_names_are_the_field_positions(prefix, fields):
    assert [getattr(layout, prefix + f) for f in fields] == list(range(len(fields)))
    defined = sorted(n for n in vars(layout) if n.startswith(prefix))  # no index without a field
    assert defined == sorted(prefix + f for f in fields)


def test_build_layout_entries_are_read_back_by_name():
    cfg = ModelConfig(token_dim=5, num_layers=2, num_heads=2, key_size=4, attention="softmax",
                      layernorm=True, ln_placement="pre", mlp=True)
    ii, lay = layout.build_layout(cfg, 6)
    task = layout.TaskLayout(*ii.tolist())
    assert (task.T, task.D, task.S, task.H, task.K, task.F, task.L) == (6, 5, 5, 2, 4, 20, 2)
    assert task.NP == param_offsets(cfg)[1] and ii[layout.I_NP] == task.NP
    assert task.W_SIZE > task.W_DG > task.W_LAYER
    offs, _ = param_offsets(cfg)
    row = layout.LayerLayout(*lay[1].tolist())
    assert row.SOFTMAX == 1 and row.LN1 == 1
    assert row.WQ == offs["layer1.attn.W_q"][0] and row.B2 == offs["layer1.mlp.b2"][0]
    assert lay.dtype == ii.dtype == np.int64
