"""CI checks of the CUDA kernels without a GPU: every kernels/cupy/cuda/*.cu source compiles with NVRTC
(the options CuPy uses) for sm_80 and sm_90, float and double; the host-side launch shapes, packed
parameter layout and argument lists agree with the kernels and with refimpl.params."""
import os
import shutil

import numpy as np
import pytest

from kernels.cupy import build as cb
from kernels.cupy import sources as cs
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
    monkeypatch.setattr(cs, "source", lambda name: "template <typename real> __global__ void "
                        "adam_sumsq(int n) { undeclared_name(n); }\n"
                        "template <typename real> __global__ void adam_apply(int n) {}\n")
    with pytest.raises(ValueError, match="undeclared_name"):
        cb.nvrtc_compile("adam.cu", 90)


NVCC = shutil.which("nvcc")


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH (CUDA toolkit not installed)")
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("src", sorted(cb.KERNELS))
def test_source_compiles_with_plain_nvcc(src, arch, tmp_path):
    """nvcc without NVRTC's definitions (what a profiler's source build sees), both dtypes."""
    cubin = cb.nvcc_compile(src, arch, str(tmp_path))
    assert os.path.getsize(cubin) > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_model_step_compiles_with_the_shapes_fixed(arch, tmp_path):
    """model_step.cu with model_step_defines (the form the backend compiles), by NVRTC and by nvcc."""
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings not installed")
    defines = cb.model_step_defines(cb.model_dims(ModelConfig(num_layers=5, token_clip=0.5), 11))
    lowered = cb.nvrtc_compile("model_step.cu", arch, (np.float32,), defines=defines)
    assert sorted(lowered) == ["model_step<float>", "model_step_finish<float>"]
    if NVCC is not None:
        assert os.path.getsize(cs.nvcc_compile("model_step.cu", arch, str(tmp_path), (np.float64,),
                                               defines=defines)) > 0


def test_model_step_defines_fix_every_shape_and_flag():
    dims = cb.model_dims(ModelConfig(num_layers=3, weight_tied=True, y_update=True, num_heads=2,
                                     key_size=5, first_layer_softmax=True, include_query=True), 9)
    d = dict(o[2:].split("=") for o in cb.model_step_defines(dims))
    assert d == {"MS_T": "9", "MS_D": "11", "MS_H": "2", "MS_K": "5", "MS_S": "9", "MS_L": "3",
                 "MS_TIED": "1", "MS_FSOFT": "1", "MS_SOFT": "0", "MS_CAUSAL": "0", "MS_YUP": "1"}
    src = cs.source("model_step.cu")
    for name in d:  # each is used by the kernel, and checked against the launch's arguments
        assert src.count(name) >= 2, name


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH (CUDA toolkit not installed)")
def test_nvcc_compile_error_is_reported_with_its_output(tmp_path):
    (tmp_path / "broken.cu").write_text("__global__ void k() { undeclared_name(); }\n")
    with pytest.raises(ValueError, match="undeclared_name"):
        cs.nvcc_compile("broken.cu", 90, str(tmp_path), dtypes=(), include_dir=str(tmp_path))


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
    check_args("block.cu", "block_add_partials", cb.block_add_partials_args(bl, X, X))
    for grads, adam in ((X, None), (None, AdamConfig())):
        check_args("model_step.cu", "model_step_finish",
                   cb.model_step_finish_args(dims, 2048, launch, X, X, X, grads, X,
                                             int(adam is not None), X, X if adam else None,
                                             X if adam else None, X, adam))
    check_args("tasks.cu", "draw_tasks", cb.draw_tasks_args(1, 2, 8, 10, 10, 1.0, 1.0, X, X))
    check_args("adam.cu", "adam_sumsq", cb.adam_sumsq_args(100, X, X))
    check_args("adam.cu", "adam_apply", cb.adam_apply_args(100, X, X, X, X, X, X, X, X, AdamConfig()))


# ----------------------------------------------------------------------------------------------
DEVICES = {"h100": cb.H100,
           "a100": cb.DeviceLimits(num_sms=108, smem_optin=163 * 1024, smem_per_sm=164 * 1024),
           "small": cb.DeviceLimits(num_sms=2, smem_optin=64 * 1024, smem_per_sm=64 * 1024)}


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("B", [1, 7, 100, 2048, 5000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_threads, regs", [(1024, 0), (512, 128), (384, 168), (1024, 40)])
def test_model_step_launch_covers_every_task_once_in_one_wave(B, dtype, device, max_threads, regs):
    dev = DEVICES[device]
    for cfg in (ModelConfig(), ModelConfig(num_layers=5, token_clip=10.0),
                ModelConfig(num_layers=2, weight_tied=True, num_heads=3, key_size=5)):
        dims = cb.model_dims(cfg, 11)
        ln = cb.model_step_launch(B, dims, 10, dtype, dev, max_threads=max_threads, regs_per_thread=regs)
        wb = dims.warp_bytes(10, dtype)
        assert ln.block == 32 * ln.warps_per_block and 1 <= ln.warps_per_block <= cb.WARPS_PER_SM
        assert ln.block <= max_threads and ln.block * regs <= dev.regs_per_sm
        assert ln.smem_bytes == max(ln.warps_per_block * wb, 8 * ln.block)  # scratch: a double a thread
        assert ln.smem_bytes <= dev.smem_optin - cb.SMEM_STATIC_RESERVE
        # warp w of block g takes tasks [(g wpb + w) tpw, ... + tpw): all of 0..B-1, once each
        tasks = [(g * ln.warps_per_block + w) * ln.tasks_per_warp + i
                 for g in range(ln.grid) for w in range(ln.warps_per_block)
                 for i in range(ln.tasks_per_warp)]
        tasks = [t for t in tasks if t < B]
        assert sorted(tasks) == list(range(B))
        assert (ln.grid - 1) * ln.warps_per_block * ln.tasks_per_warp < B  # no idle block
        # one wave: every block resident at once (shared memory and ~WARPS_PER_SM warps per SM)
        per_sm = max(1, min(dev.smem_per_sm // (ln.smem_bytes + cb.SMEM_STATIC_RESERVE),
                            cb.WARPS_PER_SM // ln.warps_per_block,
                            dev.regs_per_sm // (ln.block * regs) if regs else cb.WARPS_PER_SM))
        assert ln.grid <= dev.num_sms * per_sm
        # more tasks per warp only where the resident warps are all taken
        if ln.tasks_per_warp > 1:
            assert B > dev.num_sms * per_sm * ln.warps_per_block
        assert ln.partial_cols == dims.num_params + dims.L
        assert ln.finish_in_kernel == (ln.grid * ln.partial_cols <= cb.REDUCE_IN_KERNEL_ENTRIES)
        assert ln.finish_grid * cb.SUM_COLUMNS >= ln.partial_cols > (ln.finish_grid - 1) * cb.SUM_COLUMNS


def test_fig2_launch_on_an_h100_fills_the_sms():
    """B = 2048 fig2 tasks, float32: one task per warp, ~16 warps on nearly every SM."""
    ln = cb.model_step_launch(2048, cb.model_dims(ModelConfig(), 11), 10, np.float32, cb.H100)
    assert ln.tasks_per_warp == 1 and ln.warps_per_block == cb.WARPS_PER_SM
    assert cb.H100.num_sms - 8 <= ln.grid <= cb.H100.num_sms
    assert ln.finish_in_kernel  # 128 rows x 485 columns


def test_launch_rejects_a_kernel_without_room_for_a_warp():
    with pytest.raises(ValueError, match="max_threads: expected at least one warp"):
        cb.model_step_launch(64, cb.model_dims(ModelConfig(), 11), 10, np.float32, max_threads=16)


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


def test_python_mirrors_of_the_cuda_constants_agree():
    import re
    for name, value in (("SUM_COLUMNS", cb.SUM_COLUMNS), ("FINISH_THREADS", cb.FINISH_THREADS)):
        found = {int(v) for src in cb.KERNELS for v in re.findall(rf"#define {name} (\d+)", cs.source(src))}
        assert found == {value}, (name, found)
    # block_add_partials' static scratch holds FINISH_THREADS doubles
    assert f"__shared__ double scratch[{cb.FINISH_THREADS}]" in cs.source("block.cu")


@pytest.mark.parametrize("field, value", [("num_sms", 0), ("smem_optin", 1.5), ("regs_per_sm", -1)])
def test_device_limits_reject_bad_values(field, value):
    kw = dict(num_sms=2, smem_optin=1024, smem_per_sm=1024)
    kw[field] = value
    with pytest.raises(ValueError, match=f"DeviceLimits.{field}: expected a positive int, got {value!r}"):
        cb.DeviceLimits(**kw)
