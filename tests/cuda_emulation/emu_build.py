"""Builds the emulated CUDA kernels (emu_sources.py output + emulation.h) as a CPU torch library.

Why: this library is the only way the CUDA code runs without a GPU. It is compiled with
AddressSanitizer and UndefinedBehaviorSanitizer (out-of-bounds and misaligned 16-byte vector
accesses, overflow) unless `sanitize` is False. A sanitized library can only be loaded into a
process whose LD_PRELOAD starts with the ASan runtime (see sanitizer_preload()), so the checks
run in a subprocess (emu_checks.py), which keeps it apart from the real `hanet_fast._C` too.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

from emu_sources import write_sources

NAME = "hanet_emu"


def compiler() -> str:
    """The C++ compiler torch.utils.cpp_extension uses."""
    return os.environ.get("CXX", "c++")


def sanitizer_preload() -> list[str]:
    """Paths of the compiler's ASan and UBSan runtimes; raises FileNotFoundError when absent."""
    cxx = shutil.which(compiler())
    if cxx is None:
        raise FileNotFoundError(f"no C++ compiler {compiler()!r} on PATH")
    paths = []
    for lib in ("libasan.so", "libubsan.so"):
        out = subprocess.run([cxx, f"-print-file-name={lib}"], capture_output=True, text=True, check=False)
        path = out.stdout.strip()
        # An unknown file name is echoed back as is, without a directory.
        if out.returncode != 0 or not os.path.isabs(path) or not os.path.exists(path):
            raise FileNotFoundError(f"{compiler()} has no {lib} (sanitizer runtime not installed)")
        paths.append(os.path.realpath(path))
    return paths


def build(root: pathlib.Path, build_dir: pathlib.Path, sanitize: bool = True, verbose: bool = False) -> None:
    """Generates the sources of repository `root`, builds them in `build_dir` and loads the library.

    The `hanet_emu` operators are then available as torch.ops.hanet_emu.*. Rebuilds only what
    changed (ninja), so a persistent `build_dir` makes reruns fast.
    """
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    sources = write_sources(root, build_dir / "src")
    flags = ["-O1", "-g", f"-I{root}", "-std=c++20", "-pthread", "-Wall", "-Wno-unused-function"]
    ldflags = ["-pthread"]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        ldflags += ["-fsanitize=address,undefined"]
    # The compiler must not run with the sanitizer runtimes preloaded into this process.
    env_preload = os.environ.pop("LD_PRELOAD", None)
    try:
        cpp_extension.load(
            name=NAME + ("_san" if sanitize else ""),
            sources=[str(p) for p in sources],
            extra_cflags=flags,
            extra_ldflags=ldflags,
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=verbose,
        )
    finally:
        if env_preload is not None:
            os.environ["LD_PRELOAD"] = env_preload
