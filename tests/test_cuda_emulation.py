"""The CUDA kernels, executed on the CPU: the only run of the CUDA code before a GPU is lent.

CI has no GPU, so tests/test_cuda_build.py can only prove that csrc/cuda/*.cu compiles and
the `[cuda]` cases of tests/test_ops.py skip. This module runs the real device code
(kernels/*.cuh) and the real launchers (csrc/cuda/*.cu) on CPU threads instead:
tests/cuda_emulation/ holds the shim (emulation.h: warp lanes as threads, shuffles as barrier
exchanges), the rewriter of the launchers' few CUDA-runtime lines (emu_sources.py), the build
helper (emu_build.py: ASan + UBSan) and the checks (emu_checks.py: every operator vs the
reference and bit for bit vs the CPU backend, all dtypes and layouts, odd shapes, several
emulated SM counts, NaN/inf/ties/signed zeros, determinism). When it was written it caught
each of 8 deliberately planted kernel bugs (wrong tail masks, skipped shuffles, misaligned
vector paths, index overflow and tie-breaking among them).

The emulated operators register as `hanet_emu::*`, never touching `hanet_fast`; the sanitized
library needs the ASan runtime preloaded, so the checks run in a subprocess. The build is
cached in build/cuda_emulation/ (gitignored; ninja rebuilds what changed). The quick
configuration runs here; `python tests/cuda_emulation/emu_checks.py --full ...` runs all of it.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emulation"
sys.path.insert(0, str(EMU))

import emu_build  # noqa: E402
import emu_sources  # noqa: E402

# Lines of the checks' output that say what went wrong.
_KEY_LINES = r"^FAIL |^REWRITE ERROR|^emu: |ERROR: AddressSanitizer|runtime error:|^SUMMARY: |^\s+#\d+ 0x"


def test_rewriter_understands_the_launchers(tmp_path):
    """The rewriting rules match csrc/cuda/*.cu (cheap, so it runs without `slow` too)."""
    paths = emu_sources.write_sources(ROOT, tmp_path)
    assert sorted(p.name for p in paths) == ["height_gate_kernel.cpp", "height_pool_kernel.cpp", "schema.cpp"]
    for path in paths:
        text = path.read_text()
        assert "hanet_emu" in text and "emulation.h" in text


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("launch.h", "at::cuda::getCurrentCUDAStream().stream()", "c10::cuda::getStreamFromPool().stream()"),
        ("launch.h", "C10_CUDA_KERNEL_LAUNCH_CHECK()", "C10_CUDA_CHECK(cudaGetLastError())"),
        ("height_pool_kernel.cu", "TORCH_LIBRARY_IMPL(hanet_fast, CUDA, m)", "TORCH_LIBRARY_IMPL(hanet_fast, AutogradCUDA, m)"),
        ("height_pool_kernel.cu", "#include <torch/library.h>\n", "#include <torch/library.h>\n#include <ATen/cuda/CUDAEvent.h>\n"),
    ],
    ids=["stream", "launch_check", "registration", "new_cuda_include"],
)
def test_rewriter_fails_loudly_on_unknown_launcher_code(name, old, new):
    """A launcher changed beyond the rules is an error naming the file, not a silent mis-rewrite."""
    source = ROOT / "csrc" / "cuda" / name
    text = source.read_text()
    assert old in text
    rewrite = emu_sources.rewrite_launch_header if name == "launch.h" else emu_sources.rewrite_launcher
    with pytest.raises(emu_sources.RewriteError, match=name.replace(".", r"\.")):
        rewrite(text.replace(old, new), source)


def _skip_reason() -> str | None:
    """Why the emulation cannot be built here, or None."""
    if shutil.which(emu_build.compiler()) is None:
        return f"no C++ compiler {emu_build.compiler()!r}"
    try:
        from torch.utils import cpp_extension

        cpp_extension.verify_ninja_availability()
    except (ImportError, RuntimeError) as e:
        return f"cannot build torch extensions: {e}"
    try:
        emu_build.sanitizer_preload()
    except FileNotFoundError as e:
        return str(e)
    return None


@pytest.mark.slow
def test_cuda_kernels_under_cpu_emulation():
    """Builds the sanitized emulation and runs the quick checks in a subprocess.

    On 2 cores: ~2 min with the build cached in build/cuda_emulation/, ~4 min from scratch.
    """
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(f"CUDA emulation unavailable: {reason}")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(emu_build.sanitizer_preload() + [env.get("LD_PRELOAD", "")]).strip()
    # Leaks are torch's (global registries), not the kernels'; UBSan findings abort (see emu_build).
    env["ASAN_OPTIONS"] = "detect_leaks=0"
    env.setdefault("MAX_JOBS", "2")
    build_dir = ROOT / "build" / "cuda_emulation" / "san"
    proc = subprocess.run(
        [sys.executable, str(EMU / "emu_checks.py"), "--build-dir", str(build_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = proc.stdout + proc.stderr
    print(proc.stdout)  # the build time and the per-plan check counts, shown by `pytest -s` / `-rP`
    # The failed checks and sanitizer verdicts first, then the end of the output for context.
    key = [line for line in output.splitlines() if re.search(_KEY_LINES, line)]
    summary = "\n".join(key[:40])
    assert proc.returncode == 0, f"CUDA emulation failed (exit {proc.returncode}):\n{summary}\n...\n{output[-8000:]}"
    assert re.search(r"\n\d+ checks, 0 failures, [1-9]\d* launches, 0 emulation errors\n", proc.stdout), output[-4000:]
