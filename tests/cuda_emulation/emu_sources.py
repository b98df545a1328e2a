"""Rewrites the real CUDA launchers (csrc/cuda/*.cu) into C++ sources for the CPU emulation.

Why: CI has no GPU, so the emulation is the only execution of the CUDA code before one is lent.
To test what actually ships, the launchers are used verbatim except for the few lines that
talk to the CUDA runtime, and the kernels (kernels/*.cuh) are included unchanged:

  - the ATen/c10 CUDA includes are dropped and emulation.h is included before the kernels,
  - c10::cuda::CUDAGuard becomes a plain c10::Device (nothing to guard on CPU),
  - the SM count becomes emu::sm_count (set from the test to drive different tilings),
  - the current stream becomes nullptr, C10_CUDA_KERNEL_LAUNCH_CHECK() a no-op,
  - the operators register as CPU kernels of their own `hanet_emu` namespace (schemas copied
    from csrc/hanet_ops.cpp), so they never collide with the real `hanet_fast` library.

Every replacement states how often its pattern must occur, and the result is scanned for
leftover CUDA-runtime code. When the .cu files change in a way this does not understand, a
RewriteError says what was expected where, instead of silently testing something else; then
update the rules below (and emulation.h) to match the new launcher code.
"""

from __future__ import annotations

import pathlib
import re

NAMESPACE = "hanet_emu"

# (pattern, replacement, how often it must occur: an int, or "+" for >= 1).
_KERNELS_INCLUDE = ('#include "../../kernels/', '#include "tests/cuda_emulation/emulation.h"\n#include "kernels/', 1)
# csrc/cuda/launch.h: everything the launchers take from the CUDA runtime.
_LAUNCH_HEADER_RULES: list[tuple[str, str, int | str]] = [
    ("#include <ATen/cuda/CUDAContext.h>\n", "", 1),
    ("#include <c10/cuda/CUDAException.h>\n", "", 1),
    _KERNELS_INCLUDE,
    ("at::cuda::getCurrentDeviceProperties()->multiProcessorCount", "emu::sm_count", 1),
    ("at::cuda::getCurrentCUDAStream().stream()", "nullptr", 1),
    ("C10_CUDA_KERNEL_LAUNCH_CHECK()", "(void)0", 1),
]
# csrc/cuda/*.cu; their `#include "launch.h"` finds the rewritten header next to them.
_LAUNCHER_RULES: list[tuple[str, str, int | str]] = [
    ("#include <c10/cuda/CUDAGuard.h>\n", "", 1),
    _KERNELS_INCLUDE,
    ('#include "../', '#include "csrc/', "+"),
    ('#include "launch.h"\n', '#include "launch.h"\n', 1),
    ("c10::cuda::CUDAGuard", "c10::Device", "+"),
    ("TORCH_LIBRARY_IMPL(hanet_fast, CUDA, m)", f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m)", 1),
]

# Test hooks added to the schema library: the emulated SM count and the launch/error counters.
_EMU_DEFS = (
    f"TORCH_LIBRARY({NAMESPACE}, m) {{\n"
    '  m.def("set_sm_count(int n) -> int", [](int64_t n) {\n'
    "    const int64_t old = emu::sm_count;\n"
    "    emu::sm_count = static_cast<int>(n);\n"
    "    return old;\n"
    "  });\n"
    '  m.def("stats() -> int[]", []() {\n'
    "    return std::vector<int64_t>{emu::launches.load(), emu::errors.load()};\n"
    "  });"
)
_SCHEMA_RULES: list[tuple[str, str, int | str]] = [
    ("#include <torch/library.h>", '#include <torch/library.h>\n#include "tests/cuda_emulation/emulation.h"', 1),
    ("TORCH_LIBRARY(hanet_fast, m) {", _EMU_DEFS, 1),
]

# Anything CUDA-runtime or `hanet_fast`-registering left after rewriting means the rules above
# no longer describe the launchers.
_LEFTOVERS = re.compile(
    r"at::cuda::|c10::cuda::|C10_CUDA_|cuda_runtime|<<<|cudaGetLastError|cudaDeviceProp|"
    r"#include\s*[<\"](?:ATen|c10)/cuda/|TORCH_LIBRARY(?:_IMPL|_FRAGMENT)?\(\s*hanet_fast\b|#include \"\.\./"
)

# The launchers this emulation was written for; a new one needs new checks in emu_checks.py.
EXPECTED_LAUNCHERS = ("height_gate_kernel.cu", "height_pool_kernel.cu")


class RewriteError(RuntimeError):
    """The CUDA sources changed in a way the emulation's rewriting rules do not cover."""


def _apply(text: str, rules: list[tuple[str, str, int | str]], origin: pathlib.Path) -> str:
    for old, new, expected in rules:
        found = text.count(old)
        if (expected == "+" and found == 0) or (expected != "+" and found != expected):
            want = "at least once" if expected == "+" else f"exactly {expected} time(s)"
            raise RewriteError(
                f"{origin}: expected {old!r} {want}, found it {found} time(s). The CUDA emulation "
                "(tests/cuda_emulation/emu_sources.py) rewrites these lines for the CPU; update its rules "
                "to the new launcher code."
            )
        text = text.replace(old, new)
    return text


def _check_leftovers(text: str, origin: pathlib.Path) -> None:
    for lineno, line in enumerate(text.splitlines(), 1):
        match = _LEFTOVERS.search(line)
        if match:
            raise RewriteError(
                f"{origin}:{lineno}: {match.group(0)!r} is left after rewriting for the CPU emulation "
                f"({line.strip()!r}); tests/cuda_emulation/emu_sources.py does not know how to emulate it."
            )


def rewrite_launcher(text: str, origin: pathlib.Path) -> str:
    """A csrc/cuda/*.cu launcher as emulated C++ (see the module docstring)."""
    text = _apply(text, _LAUNCHER_RULES, origin)
    _check_leftovers(text, origin)
    return f"// Generated from {origin.name} by tests/cuda_emulation/emu_sources.py; do not edit.\n" + text


def rewrite_launch_header(text: str, origin: pathlib.Path) -> str:
    """csrc/cuda/launch.h with the CUDA-runtime calls replaced (see the module docstring)."""
    text = _apply(text, _LAUNCH_HEADER_RULES, origin)
    _check_leftovers(text, origin)
    return f"// Generated from {origin.name} by tests/cuda_emulation/emu_sources.py; do not edit.\n" + text


def rewrite_schema(text: str, origin: pathlib.Path) -> str:
    """csrc/hanet_ops.cpp with the schemas defined under `hanet_emu`, plus the test hooks."""
    text = _apply(text, _SCHEMA_RULES, origin)
    _check_leftovers(text, origin)
    return f"// Generated from {origin.name} by tests/cuda_emulation/emu_sources.py; do not edit.\n" + text


def schema_ops(root: pathlib.Path) -> list[str]:
    """Every operator defined in csrc/hanet_ops.cpp."""
    return re.findall(r'm\.def\(\s*"(\w+)\(', (root / "csrc" / "hanet_ops.cpp").read_text())


def write_sources(root: pathlib.Path, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes the emulated sources of repository `root` into `out_dir`; returns the paths to compile.

    A file is only rewritten when its content changes, so cached builds stay valid.
    """
    launchers = sorted((root / "csrc" / "cuda").glob("*.cu"))
    names = tuple(p.name for p in launchers)
    if names != EXPECTED_LAUNCHERS:
        raise RewriteError(
            f"csrc/cuda has launchers {names}, the CUDA emulation covers {EXPECTED_LAUNCHERS}: "
            "add the new ones to EXPECTED_LAUNCHERS in tests/cuda_emulation/emu_sources.py and checks for "
            "their operators to tests/cuda_emulation/emu_checks.py."
        )
    schema = root / "csrc" / "hanet_ops.cpp"
    generated = {"schema.cpp": rewrite_schema(schema.read_text(), schema)}
    for cu in launchers:
        generated[cu.stem + ".cpp"] = rewrite_launcher(cu.read_text(), cu)
    header = root / "csrc" / "cuda" / "launch.h"
    generated[header.name] = rewrite_launch_header(header.read_text(), header)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generated.items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        if path.suffix == ".cpp":
            paths.append(path)
    return paths
