"""CI checks of the CUDA kernels without a GPU: every kernels/cupy/cuda/*.cu source compiles with NVRTC
(the options CuPy uses) for sm_80 and sm_90, float and double; the host-side launch shapes, packed
parameter layout and argument lists agree with the kernels and with refimpl.params."""
import os

import numpy as np
import pytest

from kernels.cupy import build as cb
from refimpl.config import AdamConfig, ModelConfig
from refimpl.params import init_params, param_shapes


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("src", sorted(cb.KERNELS))
def test_source_compiles_with_nvrtc(src, arch):
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings not installed "
                        "(pip install 'cuda-bindings>=12.6,<13' nvidia-cuda-nvrtc-cu12)")
    try:
        lowered = cb.nvrtc_compile(src, arch)
    except (RuntimeError, OSError) as e:  # the NVRTC shared library itself is missing
        pytest.skip(f"NVRTC library not loadable: {e} (pip install nvidia-cuda-nvrtc-cu12)")
    # one lowered symbol per kernel and dtype, distinct: both instantiations exist
    assert sorted(lowered) == sorted(cb.name_expressions(src))
    assert len(set(lowered.values())) == len(lowered)


def test_compile_error_is_reported_with_the_log(monkeypatch):
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings not installed")
    monkeypatch.setattr(cb, "source", lambda name: "template <typename real> __global__ void "
                        "adam_sumsq(int n) { undeclared_name(n); }\n"
                        "template <typename real> __global__ void adam_apply(int n) {}\n")
    with pytest.raises(ValueError, match="undeclared_name"):
        cb.nvrtc_compile("adam.cu", 90)


def test_every_source_has_a_header_naming_what_it_mirrors():
    for src in cb.KERNELS:
        head = open(os.path.join(cb.CUDA_DIR, src)).read()[:1500]
        assert head.startswith(f"// {src} -- "), src
        for word in ("Mirrors", "Versions", "Launch shape"):
            assert word in head, f"{src}: header lacks '{word}'"


# ----------------------------------------------------------------------------------------------
C_TYPES = {"int": np.int32, "unsigned int": np.uint32, "unsigned long long": np.uint64,
           "double": np.float64}


class Buffer:
    """Stands for a device array in the argument lists."""


def check_args(src, kernel, args):
    sig = cb.kernel_signature(src, kernel)
    assert len(args) == len(sig), f"{kernel}: {len(args)} arguments for {len(sig)} parameters"
    for (ctype, name), arg in zip(sig, args):
        if ctype.endswith("*"):
            assert isinstance(arg, Buffer) or (type(arg) is np.uint64 and arg == 0), \
                f"{kernel}.{name}: pointer parameter given {arg!r}"
        else:
            assert type(arg) is C_TYPES[ctype], f"{kernel}.{name}: {ctype} given {type(arg).__name__}"


def test_argument_lists_match_kernel_signatures():
    cfg = ModelConfig(num_layers=2, weight_tied=True)
    dims = cb.model_dims(cfg, 11)
    launch = cb.model_step_launch(2048, dims, 10, np.float32)
    X = Buffer()
    for draw in (None, (3, 10, 10, 1.0, 1.0)):
        for grads, adam in ((X, None), (None, AdamConfig())):
            args = cb.model_step_args(dims, 2048, launch, None if draw else X, None if draw else X,
                                      draw, X, X, X, grads, X, int(adam is not None),
                                      X if adam else None, X if adam else None, X, adam, np.float32)
            check_args("model_step.cu", "model_step", args)
    b = cb.block_dims(ModelConfig(layernorm=True, mlp=True), 0, 11)
    bl = cb.block_launch(64, b, np.float64)
    check_args("block.cu", "block_forward", cb.block_forward_args(b, 64, X, X, X))
    check_args("block.cu", "block_backward", cb.block_backward_args(b, 64, bl, X, X, X, X, X, X, X))
    check_args("tasks.cu", "draw_tasks", cb.draw_tasks_args(1, 2, 8, 10, 10, 1.0, 1.0, X, X))
    check_args("adam.cu", "adam_sumsq", cb.adam_sumsq_args(100, X, X))
    check_args("adam.cu", "adam_apply", cb.adam_apply_args(100, X, X, X, X, X, X, X, X, AdamConfig()))


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B", [1, 7, 100, 2048, 5000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_step_launch_covers_every_task_once_within_limits(B, dtype):
    for cfg in (ModelConfig(), ModelConfig(num_layers=5, token_clip=10.0),
                ModelConfig(num_layers=2, weight_tied=True, num_heads=3, key_size=5)):
        dims = cb.model_dims(cfg, 11)
        ln = cb.model_step_launch(B, dims, 10, dtype)
        assert ln.block == 32 * ln.warps_per_block and ln.block <= 256
        assert ln.warps_per_block & (ln.warps_per_block - 1) == 0
        assert ln.smem_bytes == ln.warps_per_block * dims.warp_bytes(10, dtype) <= cb.SMEM_LIMIT
        # warp w of block g takes tasks [(g wpb + w) tpw, ... + tpw): all of 0..B-1, once each
        tasks = [(g * ln.warps_per_block + w) * ln.tasks_per_warp + i
                 for g in range(ln.grid) for w in range(ln.warps_per_block)
                 for i in range(ln.tasks_per_warp)]
        tasks = [t for t in tasks if t < B]
        assert sorted(tasks) == list(range(B))
        assert (ln.grid - 1) * ln.warps_per_block * ln.tasks_per_warp < B  # no idle block
        assert ln.partial_cols == dims.num_params + dims.L


def test_launch_rejects_what_does_not_fit():
    big = cb.model_dims(ModelConfig(token_dim=64, key_size=64, num_layers=8), 41)
    with pytest.raises(ValueError, match="shared memory"):
        cb.model_step_launch(64, big, 63, np.float64)
    with pytest.raises(ValueError, match="B: expected"):
        cb.model_step_launch(0, cb.model_dims(ModelConfig(), 11), 10, np.float32)
    with pytest.raises(ValueError, match="LayerNorm"):
        cb.model_dims(ModelConfig(layernorm=True), 11)
    with pytest.raises(ValueError, match="front end"):
        cb.block_dims(ModelConfig(embed_dim=8), 0, 11)


@pytest.mark.parametrize("cfg", [
    ModelConfig(), ModelConfig(num_layers=3), ModelConfig(num_layers=3, weight_tied=True),
    ModelConfig(num_layers=2, layernorm=True, mlp=True, num_heads=2, key_size=4),
    ModelConfig(num_layers=2, weight_tied=True, layernorm=True, mlp=True, mlp_widening=3)])
def test_packed_layout_is_param_shapes_order_and_layers_are_contiguous(cfg, rng):
    params = init_params(cfg, rng)
    vec = cb.pack(params, cfg)
    offs, n = cb.param_offsets(cfg)
    assert vec.shape == (n,) == (sum(int(np.prod(s)) for s in param_shapes(cfg).values()),)
    back = cb.unpack(vec, cfg)
    assert list(back) == list(param_shapes(cfg))
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])
    sets = 1 if cfg.weight_tied else cfg.num_layers
    for p in range(sets):
        o = cb.set_offset(cfg, p)
        if cfg.layernorm or cfg.mlp:  # block.cu reads one layer's parameters from its set offset
            b = cb.block_dims(cfg, p, 11)
            names = [f"layer{p}.{name}" for name, _ in b.param_layout()]
            assert names == [k for k in param_shapes(cfg) if k.startswith(f"layer{p}.")]
            assert o + b.num_params == (cb.set_offset(cfg, p + 1) if p + 1 < sets else n)
        else:  # model_step.cu: set p at p * 4 D H K, in the order W_q, W_k, W_v, W_p
            dims = cb.model_dims(cfg, 11)
            assert o == p * dims.set_size
            assert offs[f"layer{p}.attn.W_p"][0] == o + 3 * cfg.token_dim * cfg.num_heads * cfg.key_size
    with pytest.raises(ValueError, match="vector: expected shape"):
        cb.unpack(vec[:-1], cfg)


def test_adam_launch():
    assert cb.adam_launch(1) == (1, 256)
    assert cb.adam_launch(121 * 4) == (1, 256)
    assert cb.adam_launch(10**8) == (1024, 256)
    with pytest.raises(ValueError, match="n: expected"):
        cb.adam_launch(0)
