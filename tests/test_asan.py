"""The CPU op library under AddressSanitizer (issue 13: height_pool_max_backward wrote outside
its output through bad indices): scripts/asan_cpu.sh builds a sanitized copy of the library in
a temporary folder and runs the CPU op tests against it. About 2 minutes on an idle 2-core
machine (build about 1, tests about 1); more under load."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hanet_fast import _extension

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_ops_pass_under_address_sanitizer():
    if not _extension.is_loaded():
        pytest.skip(_extension.LOAD_ERROR)
    if shutil.which("g++") is None:
        pytest.skip("no g++ to build the sanitized library")
    libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("g++ has no AddressSanitizer runtime (libasan.so)")
    start = time.perf_counter()
    run = subprocess.run(["bash", str(REPO / "scripts" / "asan_cpu.sh")], cwd=REPO, capture_output=True, text=True,
                         timeout=1800)
    elapsed = time.perf_counter() - start
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"asan_cpu.sh failed after {elapsed:.0f} s:\n{output[-20000:]}"
    assert "AddressSanitizer" not in output and " passed" in output, output[-5000:]
    print(f"asan_cpu.sh: {elapsed:.0f} s\n" + "\n".join(line for line in output.splitlines() if "asan_cpu.sh" in line))
