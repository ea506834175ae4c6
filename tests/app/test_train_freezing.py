"""Freezing named parameters in the training loop (train.frozen): their gradients are exactly zero,
they keep their initial values bit for bit, and every other parameter moves as it would unfrozen."""
import numpy as np
import pytest

import kernels
from refimpl.config import ModelConfig, TaskConfig
from refimpl.params import init_params
from refimpl.tasks import TaskSource
from iclgd.train import TrainConfig, frozen_names, train

CFG = ModelConfig(token_dim=5, key_size=6, embed_dim=7, input_mlp=True, mlp_widening=2)
TASK = TaskConfig(input_dim=4, num_context=5)


def _train(frozen, steps=3, clip=0.0):
    tc = TrainConfig(steps=steps, batch=16, lr=1e-2, grad_clip=clip, frozen=frozen)
    return train(CFG, tc, TaskSource(TASK, 16), 0, kernels.get_backend("numpy"), progress=False).params


def test_frozen_parameters_keep_their_initial_values_and_the_rest_trains_as_unfrozen():
    init = init_params(CFG, np.random.default_rng(0))
    frozen = _train(("layer0.attn", "embed.W"))
    free = _train(())
    names = frozen_names(("layer0.attn", "embed.W"), list(init))
    assert names == {"embed.W", "layer0.attn.W_q", "layer0.attn.W_k", "layer0.attn.W_v", "layer0.attn.W_p"}
    for k in names:
        np.testing.assert_array_equal(frozen[k], init[k])
    for k in set(init) - names:
        assert np.max(np.abs(frozen[k] - init[k])) > 0, k
    # one step without clipping: the unfrozen parameters take exactly the unfrozen run's step
    one_frozen, one_free = _train(("layer0.attn", "embed.W"), steps=1), _train((), steps=1)
    for k in set(init) - names:
        np.testing.assert_array_equal(one_frozen[k], one_free[k])
    assert any(np.max(np.abs(free[k] - init[k])) > 0 for k in names)  # unfrozen they would move


def test_the_global_norm_clip_sees_no_frozen_gradient():
    """One clipped step equals: gradients, frozen ones set to zero, the clip over what is left, Adam."""
    from refimpl.config import AdamConfig
    from refimpl.loss import loss_and_grads
    from refimpl.optim import adam_init, adam_update, clip_by_global_norm
    rng = np.random.default_rng(0)  # as train(): the init, then the first batch, from one Generator
    init = init_params(CFG, rng)
    tokens, y = TaskSource(TASK, 16).next_batch(rng, 0)
    _, _, grads = loss_and_grads(init, tokens, y, CFG)
    names = frozen_names(("input_mlp",), list(init))
    zeroed = {k: (g * 0 if k in names else g) for k, g in grads.items()}
    clip = 0.5 * clip_by_global_norm(zeroed, 0)[1]  # a clip that acts
    assert clip_by_global_norm(grads, 0)[1] > clip_by_global_norm(zeroed, 0)[1]  # the frozen part counts
    expected, _, _ = adam_update(init, zeroed, adam_init(init), AdamConfig(lr=1e-2, grad_clip=clip))
    got = _train(("input_mlp",), steps=1, clip=clip)
    for k in init:
        np.testing.assert_array_equal(got[k], expected[k])


def test_unknown_frozen_names_are_refused():
    with pytest.raises(ValueError, match="train.frozen: 'layer1.attn' names no parameter of this model; valid names: embed.W"):
        _train(("layer1.attn",), steps=1)
    with pytest.raises(ValueError, match="train.frozen: expected a list of parameter names or prefixes, got \\[3\\]"):
        TrainConfig(frozen=(3,))
