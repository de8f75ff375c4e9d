"""Builds fusedopt._C, the native ops, with torch.utils.cpp_extension and ninja.

Install with `pip install --no-build-isolation .` (torch must already be
importable: an isolated build would fetch a fresh multi-GB torch).
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))

# No -march=native: the CPU kernels are compiled once per ISA
# (csrc/cpu/kernels_<isa>.cpp) and picked at run time, so one build runs on
# any x86-64. -fno-math-errno and -fno-trapping-math let GCC vectorize sqrt
# and if-convert selects; neither changes any result (no -ffast-math).
# -fopenmp for one region in csrc/cpu/slot_pool.cpp, where a CPU step borrows
# torch's OpenMP team while its threads are still spinning after torch's own
# work; everything else shares work through fusedopt's helper threads and is
# vectorized without `#pragma omp simd`. The link line has no -fopenmp: the
# OpenMP calls resolve to the runtime torch itself loads, never a second one.
# No -std: torch's build helpers add the C++ standard torch itself was built
# with (C++17 before torch 2.13, C++20 from it).
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]

NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "--fmad=false"]

sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))


def build_cuda():
    """FUSEDOPT_CUDA=1 or 0 decides; unset or empty, CUDA kernels are built when this
    torch has CUDA, a GPU is visible and nvcc is found."""
    flag = os.environ.get("FUSEDOPT_CUDA", "")
    if flag:
        return flag == "1"
    return torch.version.cuda is not None and torch.cuda.is_available() and CUDA_HOME is not None


options = dict(include_dirs=[os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")])
if build_cuda():
    extension = CUDAExtension("fusedopt._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
                              extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, **options)
else:
    extension = CppExtension("fusedopt._C", sources, extra_compile_args={"cxx": CXX_FLAGS}, **options)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
