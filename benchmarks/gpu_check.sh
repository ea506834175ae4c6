#!/usr/bin/env bash
# The first run on a CUDA GPU, in one command, from the repository root:
#
#     bash benchmarks/gpu_check.sh OUTDIR
#
# Stage by stage, each under its own timeout (seconds, in brackets; all together under 9 minutes,
# compiles included), everything teed to OUTDIR/<stage>.log and one line per stage to
# OUTDIR/summary.txt:
#   1_env       [10]  nvidia-smi, driver, compilers, Python packages, the device as CuPy sees it
#   2_compile   [60]  every CUDA module the later stages load, compiled in parallel processes into
#                     CuPy's on-disk cache (python -m benchmarks.gpu_compile)
#   3_smoke     [110] every backend (cupy, cupy-unfused, numba-cuda) against the oracle: fig2, tied-2,
#                     deep-5 with clipping; float32 and float64 (python -m benchmarks.gpu_smoke)
#   4_sanitizer [80]  compute-sanitizer memcheck, racecheck, synccheck on a small smoke run of cupy
#                     (one and two launch steps, graph replay, the task draw)
#   5_tests     [110] the GPU tests (pytest -m gpu) of tests/kernels/, but the thread-per-task
#                     numba-cuda suite (minutes of compiling; run it alone:
#                     python -m pytest -m gpu tests/kernels/test_numba_cuda_sim.py)
#   6_bench     [130] python -m benchmarks.bench_cupy --sweep: per-step time by CUDA events over
#                     replayed graphs for B = 256 .. 4096, the whole 5 000-step fig2, the tail
#                     (reduction + Adam) versus compute split, the unfused path, numba-cuda and the
#                     JAX / PyTorch (eager) peers on the same GPU -> OUTDIR/bench_cupy.json, written
#                     after every part (a timeout keeps what was measured)
# A stage that fails or times out is recorded and the next one runs; the exit status is 0 when every
# stage passed, 1 otherwise. Without a GPU (no nvidia-smi, or it lists no GPU) or without Python it
# exits 2 at once with the reason, before installing or compiling anything. Nothing is installed and
# no network is assumed: CuPy, JAX and PyTorch are used where installed, recorded as missing where not
# (pip install -e ".[gpu,test]" "jax[cuda12]" torch beforehand where there is a network).
# Stage timeouts can be changed through T_ENV, T_COMPILE, T_SMOKE, T_SANITIZER, T_TESTS, T_BENCH.
set -uo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2
    exit 2
fi

# ---- 0. is there a GPU? (nothing is installed, compiled or written before this passes)
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no GPU: nvidia-smi not found (no NVIDIA driver on this machine)" >&2
    exit 2
fi
if ! gpus=$(nvidia-smi -L 2>&1); then
    echo "gpu_check: no GPU: nvidia-smi -L failed: $(echo "$gpus" | head -n 1)" >&2
    exit 2
fi
if ! echo "$gpus" | grep -q '^GPU [0-9]'; then
    echo "gpu_check: no GPU: nvidia-smi -L lists none: $(echo "$gpus" | head -n 1)" >&2
    exit 2
fi
PY=$(command -v python || command -v python3 || true)
if [ -z "$PY" ]; then
    echo "gpu_check: neither python nor python3 found on PATH" >&2
    exit 2
fi

cd "$(dirname "$0")/.." || exit 2
OUT=$1
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
failed=0
T_ENV=${T_ENV:-10}
T_COMPILE=${T_COMPILE:-60}
T_SMOKE=${T_SMOKE:-110}
T_SANITIZER=${T_SANITIZER:-80}
T_TESTS=${T_TESTS:-110}
T_BENCH=${T_BENCH:-130}
KILL_AFTER=5  # a stage that ignores its TERM is killed this many seconds later

# stage NAME SECONDS COMMAND...: runs COMMAND under its own timeout, output teed to the log
stage() {
    local name=$1 secs=$2 log rc start
    shift 2
    log="$OUT/$name.log"
    start=$(date +%s)
    echo "== $name (timeout ${secs} s): $*" | tee "$log"
    timeout --kill-after="$KILL_AFTER" "$secs" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    local took=$(( $(date +%s) - start ))
    if [ "$rc" -eq 0 ]; then
        echo "$name: ok (${took} s)" | tee -a "$SUMMARY"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "$name: TIMED OUT after ${secs} s" | tee -a "$SUMMARY"
        failed=1
    else
        echo "$name: FAILED (exit $rc, ${took} s)" | tee -a "$SUMMARY"
        failed=1
    fi
}

env_report() {
    date -u +"date_utc %Y-%m-%dT%H:%M:%SZ"
    echo "python $PY"
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,compute_mode,mig.mode.current --format=csv
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    git rev-parse HEAD 2>/dev/null
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for mod in ("numpy", "scipy", "numba", "numba_cuda", "cupy", "jax", "jaxlib", "torch", "cuda.bindings"):
    try:
        m = importlib.import_module(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as e:
        print(mod, "MISSING", type(e).__name__, e)
try:
    import cupy as cp
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    print("cupy device", props["name"].decode(), "cc", props["major"], props["minor"],
          "driver", cp.cuda.runtime.driverGetVersion(), "runtime", cp.cuda.runtime.runtimeGetVersion())
    for k in ("MultiProcessorCount", "MaxSharedMemoryPerBlockOptin", "MaxSharedMemoryPerMultiprocessor"):
        print(k, dev.attributes[k])
except Exception as e:
    print("cupy device: unavailable", type(e).__name__, e)
EOF
}

sanitizer_runs() {
    local cs
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
    if [ -z "$cs" ]; then
        echo "compute-sanitizer not found (CUDA toolkit not installed): not run"
        return 3
    fi
    local rc=0 tool
    for tool in memcheck racecheck synccheck; do
        echo "-- $tool"
        "$cs" --tool "$tool" --error-exitcode 9 "$PY" -m benchmarks.gpu_smoke --small --backends cupy \
            --models fig2,deep5_clip || rc=1
    done
    return $rc
}

export -f env_report sanitizer_runs
export PY

stage 1_env "$T_ENV" bash -c env_report
stage 2_compile "$T_COMPILE" "$PY" -m benchmarks.gpu_compile
stage 3_smoke "$T_SMOKE" "$PY" -m benchmarks.gpu_smoke
stage 4_sanitizer "$T_SANITIZER" bash -c sanitizer_runs
stage 5_tests "$T_TESTS" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests/kernels/ \
    --deselect tests/kernels/test_numba_cuda_sim.py::test_numba_cuda_matches_oracle_on_gpu
stage 6_bench "$T_BENCH" "$PY" -m benchmarks.bench_cupy --out "$OUT/bench_cupy.json" --sweep \
    --peers jax,torch,numba_cuda,unfused

echo "summary ($SUMMARY):"
cat "$SUMMARY"
exit $failed
