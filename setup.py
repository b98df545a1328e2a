"""Builds the hanet_fast op library (hanet_fast._C) from csrc/.

The C++ (CPU) kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are built
too when nvcc and a CUDA-enabled torch are present; no GPU is needed to compile them.

Environment:
  HANET_FAST_CUDA        unset: build CUDA when possible; 0: never; 1: insist (fail if impossible)
  TORCH_CUDA_ARCH_LIST   GPU architectures; defaults to "8.0;9.0" when no GPU is visible
  CUDA_HOME              CUDA toolkit; defaults to /usr/local/cuda when that exists
  MAX_JOBS               parallel compile jobs (ninja)
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"

# torch.utils.cpp_extension fixes CUDA_HOME when imported; a wrapper script named nvcc on
# PATH (as on some machines) would otherwise make it guess the wrong folder.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda() -> bool:
    setting = os.environ.get("HANET_FAST_CUDA", "")
    if setting not in ("", "0", "1"):
        sys.exit(f"HANET_FAST_CUDA must be unset, 0 or 1, got {setting!r}")
    if setting == "0":
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append("torch was built without CUDA")
    if cpp_extension.CUDA_HOME is None or not os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")):
        problems.append("nvcc not found (set CUDA_HOME)")
    if problems and setting == "1":
        sys.exit("HANET_FAST_CUDA=1 but CUDA cannot be built: " + "; ".join(problems))
    if problems:
        print("hanet_fast: building without CUDA: " + "; ".join(problems))
    return not problems


def _cuda_include_dirs() -> list[str]:
    # Pip CUDA builds of torch keep cuBLAS/cuSPARSE headers in the nvidia wheels.
    dirs = []
    for path in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include", "nvidia/cublas/include"):
            candidate = os.path.join(path, sub)
            if os.path.isdir(candidate):
                dirs.append(candidate)
    return dirs


def _extension():
    cxx_flags = ["-O3"]  # BuildExtension adds the C++ standard the installed torch needs
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inlined from ATen's OpenMP header: without -fopenmp it runs serially.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    include_dirs = [ROOT]
    cuda_sources = _sources("csrc/cuda/*.cu")
    if _want_cuda() and cuda_sources:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        return cpp_extension.CUDAExtension(
            "hanet_fast._C",
            sources + cuda_sources,
            include_dirs=include_dirs + _cuda_include_dirs(),
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
        )
    return cpp_extension.CppExtension(
        "hanet_fast._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
