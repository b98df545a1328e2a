"""The CMake build (CMakeLists.txt) produces an op library that torch.ops.load_library loads.

The library is configured and built into a temporary folder, then loaded in a fresh Python
process: this process may already have imported hanet_fast._C, and a second
TORCH_LIBRARY(hanet_fast, ...) in the same process is an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMAKE = shutil.which("cmake")
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
# One architecture keeps an nvcc build (once csrc/cuda/*.cu exist) short: the visible GPU's,
# else 9.0. TORCH_CUDA_ARCH_LIST in the environment wins.
if torch.cuda.is_available():
    _DEFAULT_ARCH = "{}.{}".format(*torch.cuda.get_device_capability())
else:
    _DEFAULT_ARCH = "9.0"
ARCH_LIST = os.environ.get("TORCH_CUDA_ARCH_LIST") or _DEFAULT_ARCH

# Run in a fresh interpreter with the built library's path as argv[1].
CHECK_SCRIPT = textwrap.dedent(
    """
    import ctypes
    import sys

    import torch
    import torch.nn.functional as F

    path = sys.argv[1]
    torch.ops.load_library(path)
    ops = torch.ops.hanet_fast
    # csrc/python_module.cpp is for setup.py only: no Python module init in this library.
    assert not hasattr(ctypes.CDLL(path), "PyInit__C"), "the CMake library contains PyInit__C"

    def has_kernel(op, key):
        return torch._C._dispatch_has_kernel_for_dispatch_key("hanet_fast::" + op, key)

    devices = ["cpu"]
    if torch.cuda.is_available() and has_kernel("height_gate", "CUDA") and has_kernel("height_pool_avg", "CUDA"):
        devices.append("cuda")
    torch.manual_seed(0)
    checked = 0
    for device in devices:
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
            for b, c, h, w, rows in ((2, 3, 32, 8, 16), (2, 5, 37, 9, 16), (1, 4, 5, 7, 16)):
                for memory_format in (torch.contiguous_format, torch.channels_last):
                    x = torch.randn(b, c, h, w, dtype=dtype, device=device).contiguous(memory_format=memory_format)
                    attn = torch.randn(b, c, rows, dtype=dtype, device=device)
                    where = f"{device} {dtype} {tuple(x.shape)} rows={rows} {memory_format}"

                    y = ops.height_gate(x, attn)
                    expected = x * F.interpolate(attn, size=h, mode="linear")[..., None]
                    assert y.shape == expected.shape, (where, y.shape)
                    torch.testing.assert_close(y, expected, atol=tol, rtol=tol, msg=lambda m: f"height_gate {where}: {m}")

                    pooled = ops.height_pool_avg(x, rows)
                    expected = F.adaptive_avg_pool2d(x, (rows, 1))[..., 0]
                    assert pooled.shape == expected.shape, (where, pooled.shape)
                    torch.testing.assert_close(pooled, expected, atol=tol, rtol=tol, msg=lambda m: f"height_pool_avg {where}: {m}")
                    checked += 1
    print("checked", checked, "cases on", ",".join(devices))
    """
)


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    assert result.returncode == 0, f"{what} failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout[-8000:]}"
    return result


def _configure(build, cuda: str) -> str:
    """Configures the CMake build into ``build`` with ``HANET_FAST_CUDA=cuda``; returns its log."""
    configure = [
        CMAKE,
        "-S", ROOT,
        "-B", str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DHANET_FAST_PYTHON={sys.executable}",
    ]
    # Through the environment: a -D variable would be reported unused when no CUDA is built.
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=ARCH_LIST, HANET_FAST_CUDA=cuda)
    return _run(configure, "cmake configure", env=env).stdout


def test_cmake_configures_the_cuda_build(tmp_path):
    """With a CUDA torch and nvcc, the CUDA configuration (toolkit, nvrtc, headers of the pip CUDA
    wheels) succeeds even without a GPU. Compiling the .cu files is what setup.py does at install
    (sm_80 and sm_90), so it is not repeated here unless a GPU can run the result (below)."""
    if CMAKE is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    if torch.version.cuda is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        pytest.skip(f"needs a CUDA build of torch and nvcc (CUDA_HOME={CUDA_HOME})")
    log = _configure(tmp_path / "build", "ON")
    assert "-- hanet_fast: building with CUDA" in log, log[-4000:]


@pytest.mark.slow
def test_cmake_build_loads_with_torch_ops(tmp_path):
    """Builds the library (CUDA only where a GPU can run it) and checks its ops in a new process."""
    if CMAKE is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    build = tmp_path / "build"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=ARCH_LIST)
    started = time.monotonic()
    log = _configure(build, "ON" if torch.cuda.is_available() else "OFF")
    configured = time.monotonic()
    _run([CMAKE, "--build", str(build), "--parallel", "2"], "cmake build", env=env)
    built = time.monotonic()

    libraries = sorted(p for p in build.iterdir() if p.name.startswith("libhanet_fast_ops") and ".so" in p.name)
    assert libraries, f"no libhanet_fast_ops.so in {build}: {sorted(p.name for p in build.iterdir())}"
    check = _run([sys.executable, "-c", CHECK_SCRIPT, str(libraries[0])], "loading the library", cwd=str(tmp_path))
    assert "checked" in check.stdout, check.stdout
    print(
        f"configure {configured - started:.1f}s, build {built - configured:.1f}s; "
        + check.stdout.strip().splitlines()[-1]
        + "; "
        + " ".join(line for line in log.splitlines() if line.startswith("-- hanet_fast:"))
    )
