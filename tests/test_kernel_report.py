"""scripts/kernel_report.py: the static sm_90 report of the CUDA and Triton kernels, in smoke mode
(two CUDA kernels, the two Triton kernels of a pooling forward), and its occupancy and SASS
arithmetic on hand-made input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import kernel_report  # noqa: E402


def test_blocks_per_sm_follows_the_register_file():
    assert kernel_report.blocks_per_sm(32, 256, 0) == 8  # thread limit
    assert kernel_report.blocks_per_sm(64, 256, 0) == 4  # 64 regs x 256 threads = 16 K: 4 blocks
    assert kernel_report.blocks_per_sm(72, 256, 0) == 3  # 72 regs rounds to 2304 per warp: 7 warps a quarter
    assert kernel_report.blocks_per_sm(40, 128, 48 * 1024) == 4  # shared memory limit


def test_hot_loop_counts_wide_accesses_and_instructions_per_element():
    sass = [
        (0x00, "LDC R1, c[0x0][0x28]"),
        (0x10, "LDG.E.128.CONSTANT R8, desc[UR4][R2.64]"),  # hot loop: 0x10-0x50
        (0x20, "FMUL R8, R8, R0"),
        (0x30, "STG.E.128 desc[UR4][R4.64], R8"),
        (0x40, "NOP"),
        (0x50, "@!P0 BRA 0x10"),
        (0x60, "STG.E desc[UR4][R4.64], R8"),  # outside the loop
        (0x70, "EXIT"),
    ]
    loop = kernel_report.analyze(sass, element_bytes=4, streams_in=1, streams_out=1)
    assert loop.where == "loop 0x10-0x50"
    assert loop.loads == {128: 1} and loop.stores == {128: 1}
    assert loop.instructions == 4 and loop.elements == 4 and loop.per_element == 1.0


def test_a_write_only_kernel_is_measured_by_its_stores_not_a_small_loop_of_loads():
    sass = [
        (0x00, "LDG.E.U16 R2, desc[UR4][R4.64]"),  # a loop over a few bins: loads only
        (0x10, "@!P0 BRA 0x0"),
        (0x20, "STG.E.128 desc[UR4][R6.64], R8"),
        (0x30, "EXIT"),
    ]
    loop = kernel_report.analyze(sass, element_bytes=2, streams_in=0, streams_out=1)
    assert loop.where == "whole function" and loop.stores == {128: 1} and loop.elements == 8


def test_local_memory_is_counted_anywhere_in_the_function():
    sass = [
        (0x00, "STL [R1], R2"),  # a spill before the loop
        (0x10, "LDG.E.128 R8, desc[UR4][R2.64]"),
        (0x20, "@P0 LDL.64 R4, [R1+0x8]"),
        (0x30, "@!P0 BRA 0x10"),
        (0x40, "LDL R6, [R1]"),
        (0x50, "EXIT"),
    ]
    assert kernel_report.local_accesses(sass) == (2, 1)
    assert kernel_report.spills(dict(stack=0, ldl=0, stl=1))
    assert kernel_report.spills(dict(stack=16, ldl=0, stl=0))  # Triton's spills: a stack frame, LOCAL 0
    assert not kernel_report.spills(dict(stack=0, ldl=0, stl=0))


@pytest.mark.slow
def test_each_cuda_kernel_is_cut_to_its_own_occupancy_whatever_launches_first(tmp_path):
    """launch()'s grid rule (resident_grid() of kernels/common.cuh, run by scripts/kernel_plans.cpp
    at the benchmark shapes with an occupancy per kernel given to it): every launch gets
    min(planned blocks, SMs x its own kernel's blocks per SM), in either order of the launches,
    also for the kernels that share a parameter list (one cache per list gave them the value of
    whichever launched first)."""
    if shutil.which("c++filt") is None or shutil.which("g++") is None:
        pytest.skip("needs binutils' c++filt and g++")
    exe = kernel_report.build_plans(tmp_path)
    sms = 132
    lines = [f"{op}:{dtype}:{fmt} {op} {dtype} {fmt} 4 256 96 96 16 {sms}"
             for op in ("pool_avg_fwd", "pool_max_fwd", "pool_avg_bwd", "pool_max_bwd", "gate_fwd", "gate_bwd")
             for dtype in ("float32", "bfloat16") for fmt in ("nchw", "channels_last")]
    names = sorted({name for _, name, *_ in kernel_report.run_plans(exe, {}, lines)})
    occupancy = {name: 1 + i % 7 for i, name in enumerate(names)}  # neighbours (siblings) differ
    signatures = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    params = [sig[sig.index("("):] for sig in signatures]
    assert len(set(params)) < len(names)  # some kernels share a parameter list
    for order in (lines, lines[::-1]):
        launches = kernel_report.run_plans(exe, occupancy, order)
        assert len(launches) >= len(lines)
        for case, name, blocks, grid, threads in launches:
            assert int(grid) == min(int(blocks), sms * occupancy[name]), (case, name)
            assert int(threads) == kernel_report.CUDA_THREADS


def test_narrow_hot_loops_are_listed_with_their_expected_cost():
    def kernel(short, loads, stores, per_element):
        loop = kernel_report.LoopStats("loop", 0, loads, stores, 1.0, per_element)
        return dict(short=short, loop=loop)

    cuda = {"wide": kernel("gate::forward_nhwc_kernel<f32,f32,i32,4>", {128: 4}, {128: 4}, 2.0),
            "narrow": kernel("gate::forward_nhwc_kernel<f32,f32,i32,1>", {32: 4}, {32: 4}, 128.0),
            "small": kernel("gate::attn_grad_kernel<f32,f32>", {32: 16}, {}, 4.0),
            "bins": kernel("pool::max_gather_nhwc_kernel<f32,f32,i32,4>", {64: 2, 32: 2}, {128: 1}, 9.0)}
    shape = (4, 19, 192, 192, 16)
    launches = [dict(case="L5", op="gate_fwd", dtype="float32", format="channels_last", kernel=name, shape=shape)
                for name in cuda]
    (row,) = kernel_report.narrow_hot_loops(cuda, launches, sms=132)  # not the wide ones, nor a small input's loop
    cells = [c.strip() for c in row.strip("|").split("|")]
    elements = 4 * 19 * 192 * 192
    dram_us = elements * 4 * 2 / kernel_report.DRAM_BYTES_PER_S * 1e6  # x read, y written
    issue_us = elements * 128.0 / 32 / (kernel_report.ISSUE_PER_SM_PER_S * 132) * 1e6
    assert cells[4] == "gate::forward_nhwc_kernel<f32,f32,i32,1>" and cells[5] == "4x32"
    assert cells[8:] == [f"{dram_us:.1f}", f"{issue_us:.1f}", f"{issue_us - dram_us:.1f}"]


def _needs_triton_sm90():
    triton = pytest.importorskip("triton")
    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend")
    try:
        kernel_report._tool("cuobjdump")
    except SystemExit as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_no_autotune_candidate_spills_at_the_benchmark_shapes(tmp_path):
    """Every candidate of every autotune list, for each kernel using the list, compiled for sm_90
    as Triton specialises it at the benchmark shapes (float32 and bfloat16, NCHW and
    channels_last): the autotuner would otherwise time a kernel that lives in local memory."""
    _needs_triton_sm90()
    variants = [v for v in kernel_report.triton_variants(smoke=False) if "autotune#" in v["label"]]
    rows = kernel_report.compile_triton(variants, tmp_path)
    assert {r["kernel"] for r in rows} == {"_pool_backward_kernel", "_gate_forward_kernel"}
    assert {"pool_avg_bwd", "pool_max_bwd", "gate_fwd"} <= {r["label"].split()[1] for r in rows}
    spilling = [f"{r['label']} {r['config']} warps={r['num_warps']}: {r['regs']} regs, {r['stack']} B stack, "
                f"{r['ldl']} LDL / {r['stl']} STL" for r in rows if kernel_report.spills(r)]
    assert not spilling, "\n".join(spilling)


@pytest.mark.slow
def test_smoke_report(tmp_path):
    pytest.importorskip("triton")
    if shutil.which("c++filt") is None or shutil.which("g++") is None:
        pytest.skip("needs binutils' c++filt and g++")
    try:
        kernel_report._tool("nvcc")
    except SystemExit as e:
        pytest.skip(str(e))
    out = tmp_path / "static"
    run = subprocess.run([sys.executable, "scripts/kernel_report.py", "--smoke", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    data = json.loads((out / "report.json").read_text())
    shorts = {k["short"]: k for k in data["cuda"].values()}
    gate = shorts["gate::forward_nchw_kernel<f32,f32,i32,4>"]
    assert gate["regs"] > 0 and gate["loop"]["loads"] and gate["loop"]["per_element"] > 0
    assert any(l["kernel"] in data["cuda"] and l["blocks"] >= 1 for l in data["launches"])
    assert [t["kernel"] for t in data["triton"]] == ["_rows_avg_kernel", "_bins_kernel"]
    assert all(t["regs"] > 0 and t["grid"] >= 1 for t in data["triton"])
    assert all(t["stack"] == 0 and t["ldl"] == t["stl"] == 0 for t in data["triton"])
    assert gate["stack"] == 0 and gate["ldl"] == gate["stl"] == 0
    assert "## CUDA launches at the benchmark shapes" in (out / "report.md").read_text()
    again = subprocess.run([sys.executable, "scripts/kernel_report.py", "--smoke", "--out", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # never overwrites silently
