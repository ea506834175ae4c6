import re
from pathlib import Path

from setuptools import find_packages, setup

# the one place the version is written: iclgd/__init__.py
VERSION = re.search(r'__version__ = "([^"]+)"', (Path(__file__).parent / "iclgd" / "__init__.py").read_text()).group(1)

setup(
    name="iclgd",
    version=VERSION,
    description="Auditable reference implementation of 'Transformers learn in-context by gradient "
                "descent' and its second-order follow-up, with hand-written backward passes and "
                "custom CPU/GPU kernels",
    python_requires=">=3.10",
    # three floors: the oracle, the fast backends, the application (each imports only from below)
    packages=find_packages(include=["refimpl", "refimpl.*", "kernels", "kernels.*", "iclgd", "iclgd.*"]),
    package_data={"kernels.cupy": ["cuda/*.cu", "cuda/*.cuh"]},
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "numba>=0.59",
        "tqdm>=4.60",
    ],
    extras_require={
        # CI without a GPU: NVRTC compiles every kernels/cupy/cuda/*.cu source (tests/kernels/test_cuda_build.py);
        # numba-cuda runs its kernels under the simulator and compiles them to PTX with NVVM.
        # numba-cuda is in maintenance mode: pinned. 0.30.4 with the cu12 extra (NVVM, NVRTC) leaves
        # numba 0.68.1 / llvmlite 0.50 / numpy untouched (checked with pip install --dry-run).
        # dask[distributed] (pure Python, about 30 MB installed with its dependencies) runs the sweep tests on a LocalCluster
        "test": ["pytest>=7", "hypothesis>=6.100", "cuda-bindings>=12.6,<13", "nvidia-cuda-nvrtc-cu12",
                 "numba-cuda[cu12]==0.30.4", "dask[distributed]>=2024.1"],
        # iclgd sweep --scheduler ADDRESS (a dask.distributed Client) and --cluster slurm (dask-jobqueue)
        "cluster": ["dask[distributed]>=2024.1", "dask-jobqueue>=0.8.2"],
        "gpu": ["cupy-cuda12x>=13", "nvidia-cuda-nvrtc-cu12", "numba-cuda[cu12]==0.30.4"],
        "peers": ["jax[cpu]==0.10.2", "torch==2.13.0"],  # CPU builds; cross-tests against autodiff
    },
    entry_points={"console_scripts": ["iclgd=iclgd.cli:main"]},
)
