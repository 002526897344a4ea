"""Builds robustx and its operator library robustx._C.

C++ CPU kernels are always built. CUDA kernels are built too when the installed torch
has CUDA and nvcc is found; ROBUSTX_CUDA=0 / ROBUSTX_CUDA=1 forces them off / on.
Install with ``pip install --no-build-isolation -e .`` so the build uses the installed
torch (an isolated build would fetch another torch).
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-std=c++20", "-DNDEBUG", "-ffp-contract=off"]
NVCC_FLAGS = ["-O3", "-std=c++20", "-DNDEBUG"]
LINK_FLAGS = ["-fopenmp", "-g0"]


def build_cuda() -> bool:
    """Whether to compile csrc/cuda/*.cu (ROBUSTX_CUDA overrides the detection)."""
    wanted = os.environ.get("ROBUSTX_CUDA", "auto").lower()
    if wanted not in ("0", "1", "auto"):
        raise ValueError(f"ROBUSTX_CUDA must be 0, 1 or unset, got {wanted!r}")
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if wanted == "1" and not available:
        raise RuntimeError("ROBUSTX_CUDA=1 but the installed torch has no CUDA or nvcc was not found")
    return available if wanted == "auto" else wanted == "1"


class IncrementalBuild(BuildExtension):
    """torch's BuildExtension with its objects kept in build/temp-<kind> (pip's editable
    install would use a fresh temporary folder), so ninja recompiles only changed sources."""

    def finalize_options(self):
        super().finalize_options()
        kind = "cuda" if build_cuda() else "cpu"
        self.build_temp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", f"temp-{kind}")


def extension():
    here = os.path.dirname(os.path.abspath(__file__))
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(here, "csrc", "include")]
    if build_cuda():
        return CUDAExtension(
            "robustx._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            extra_link_args=LINK_FLAGS,
        )
    return CppExtension(
        "robustx._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=LINK_FLAGS,
    )


setup(
    packages=find_packages(include=["robustx", "robustx.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": IncrementalBuild},
)
