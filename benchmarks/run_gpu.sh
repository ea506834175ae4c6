#!/usr/bin/env bash
# On a machine with a CUDA GPU, from the repository root:  bash benchmarks/run_gpu.sh
# 1) the GPU tests of the cupy backend (every function vs the oracle, Adam trajectory, device tasks,
#    graph replay), 2) the benchmark, whose JSON lands in benchmarks/results/.
# Installs the GPU extra if CuPy is missing; JAX and PyTorch peers run only if their CUDA builds are
# installed (pip install "jax[cuda12]" torch), and are recorded as skipped with the reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import cupy" 2>/dev/null || python -m pip install -e ".[gpu,test]"
python -m pytest -m gpu -q -rs tests/kernels/test_cupy_backend.py
python -m benchmarks.bench_cupy "$@"
