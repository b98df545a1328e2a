#!/usr/bin/env python
"""Static report of the GPU kernels for sm_90 (H100 / H200), without a GPU: what the compiled
code says about how fast it can stream memory.

    python scripts/kernel_report.py                        # every kernel; markdown to stdout
    python scripts/kernel_report.py --out benchmarks/results/static-sm90
    python scripts/kernel_report.py --smoke                # two CUDA kernels, the two Triton kernels of a pooling forward

CUDA: compiles csrc/cuda/*.cu (every kernel instantiation the extension builds) with
``nvcc -arch=sm_90 -cubin -Xptxas -v`` (registers, spills, shared memory), disassembles the
cubins with ``cuobjdump -sass``, and runs the launchers' real host-side planning code
(scripts/kernel_plans.cpp, built with the host compiler) at the benchmark shapes to get each
launch's grid. Triton: compiles every kernel and launch configuration the benchmark shapes
reach (the fixed-rule kernels with their rule's settings, the autotuned ones with every
candidate) through ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``,
specialised as Triton specialises at launch (arguments equal to 1 as constants, 16-byte
aligned pointers and multiples of 16 marked divisible).

Per kernel it prints: registers, the stack frame (``cuobjdump -res-usage`` STACK: where both
nvcc's spills and Triton's land; Triton's LOCAL is always 0), the local-memory loads and stores
of its SASS (LDL / STL), CUDA's ptxas spill bytes, shared-memory bytes, resident blocks per SM at its block size (register file, 2048 threads,
32 blocks, 228 KB shared memory per SM), and from the SASS of its hot loop (the innermost loop
with the most global memory instructions; the whole function when no loop has any) the global
loads and stores by width, and instructions per element (per thread, per element of the
streamed tensor). Per launch at the benchmark shapes (benchmarks/suites/ops.py, GPU cases
L1-L5; float32 and bfloat16; NCHW and channels_last): the grid and the waves on ``--sms``
SMs; the launches whose kernel streams a whole tensor through a hot loop narrower than 128 bits,
with that loop's expected cost at datasheet rates. With ``--out`` it writes report.md and
report.json (with the commit they describe).
Needs nvcc (CUDA_HOME, default /usr/local/cuda), a host C++ compiler, torch's headers, and
Triton with its NVIDIA backend (whose cuobjdump is used when CUDA's own is missing).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CUDA_SOURCES = ("csrc/cuda/height_pool_kernel.cu", "csrc/cuda/height_gate_kernel.cu")
BENCH_DTYPES = ("float32", "bfloat16")
FORMATS = ("nchw", "channels_last")
ELEMENT_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
TRITON_TYPES = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16"}

# sm_90 limits that decide how many blocks an SM holds.
REGS_PER_SUBPARTITION = 16384  # 64 K registers in 4 quarters, one per warp scheduler
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32
SMEM_PER_SM = 233472  # 228 KB
SMEM_RESERVED_PER_BLOCK = 1024
CUDA_THREADS = 256  # kThreads of kernels/common.cuh: every CUDA kernel's block


def blocks_per_sm(regs: int, threads: int, smem: int) -> int:
    """Resident blocks of ``threads`` threads using ``regs`` registers and ``smem`` bytes each."""
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SUBPARTITION // regs_per_warp) * 4 // warps
    by_smem = SMEM_PER_SM // (smem + SMEM_RESERVED_PER_BLOCK) if smem else MAX_BLOCKS_PER_SM
    return max(0, min(by_regs, MAX_THREADS_PER_SM // threads, MAX_BLOCKS_PER_SM, by_smem))


# ----------------------------------------------------------------------------------------- tools
def _tool(name: str) -> str:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for candidate in (os.path.join(cuda_home, "bin", name), shutil.which(name)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    try:
        import triton

        candidate = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    raise SystemExit(f"kernel_report: {name} not found (set CUDA_HOME, or install triton with its NVIDIA backend)")


def _run(cmd: list[str], **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"kernel_report: {' '.join(cmd[:3])} ... failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def _torch_includes() -> list[str]:
    from torch.utils import cpp_extension

    dirs = list(cpp_extension.include_paths())
    for path in sys.path:
        candidate = os.path.join(path, "nvidia", "cu13", "include")
        if os.path.isdir(candidate):
            dirs.append(candidate)
    return dirs


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> short readable names (namespace and parameter list dropped, types abbreviated)."""
    out = _run(["c++filt"], input="\n".join(names)).splitlines()
    short = {}
    for name, full in zip(names, out):
        full = full.split("(")[0].replace("hanet_fast::cuda::", "")
        full = re.sub(r"^void ", "", full)
        for long, abbrev in (("c10::BFloat16", "bf16"), ("c10::Half", "f16"), ("double", "f64"), ("float", "f32"),
                             ("long", "i64"), ("int", "i32"), ("true", "T"), ("false", "F"), (", ", ",")):
            full = full.replace(long, abbrev)
        short[name] = full
    return short


# ----------------------------------------------------------------------------------------- SASS
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
_BRANCH = re.compile(r"\bBRA\b(?:\s+!?U?P\d+,)?\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")


def split_sass(text: str) -> dict[str, list[tuple[int, str]]]:
    """cuobjdump -sass output -> {function: [(address, instruction)]}."""
    functions: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = _INSTR.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2).strip()))
    return functions


def _mem_width(instr: str) -> int:
    """Bits of a global load / store (32 unless the opcode says otherwise)."""
    m = re.search(r"\.(128|64|U16|S16|U8|S8)\b", instr.split()[0] if not instr.startswith("@") else instr.split()[1])
    if not m:
        return 32
    return {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}[m.group(1)]


def _opcode(instr: str) -> str:
    parts = instr.split()
    return parts[1] if parts[0].startswith("@") else parts[0]


@dataclasses.dataclass
class LoopStats:
    where: str  # "loop 0x..-0x.." or "whole function"
    instructions: int
    loads: dict  # width in bits -> count
    stores: dict
    elements: float  # elements of the streamed tensor per thread per pass
    per_element: float  # instructions per element


def analyze(instrs: list[tuple[int, str]], element_bytes: int, streams_in: int, streams_out: int) -> LoopStats:
    """The hot loop's memory instructions and instructions per element (see the module doc)."""
    loops = []
    for addr, text in instrs:
        m = _BRANCH.search(text)
        if m and m.group(1) and int(m.group(1), 16) <= addr:
            loops.append((int(m.group(1), 16), addr))
    innermost = [l for l in loops if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in loops)]

    def stats(lo: int, hi: int, where: str) -> LoopStats:
        body = [t for a, t in instrs if lo <= a <= hi and _opcode(t) != "NOP"]
        loads: dict[int, int] = {}
        stores: dict[int, int] = {}
        for t in body:
            op = _opcode(t)
            if op.startswith("LDG"):
                loads[_mem_width(t)] = loads.get(_mem_width(t), 0) + 1
            elif op.startswith("STG"):
                stores[_mem_width(t)] = stores.get(_mem_width(t), 0) + 1
        load_bytes = sum(w // 8 * n for w, n in loads.items())
        store_bytes = sum(w // 8 * n for w, n in stores.items())
        if streams_in:
            elements = load_bytes / (streams_in * element_bytes)
        else:
            elements = store_bytes / (max(streams_out, 1) * element_bytes)
        return LoopStats(where, len(body), loads, stores, elements, len(body) / elements if elements else float("nan"))

    candidates = [stats(lo, hi, f"loop {lo:#x}-{hi:#x}") for lo, hi in innermost]
    # A loop that streams: loads when the kernel reads a tensor, else stores (a write-only kernel's
    # loop over a few small inputs, such as the bins of a row, is not its hot loop).
    candidates = [c for c in candidates if (c.loads if streams_in else c.stores)]
    if candidates:
        return max(candidates, key=lambda c: (sum(c.loads.values()) + sum(c.stores.values()), c.elements))
    return stats(0, instrs[-1][0] if instrs else 0, "whole function")


def widths(counts: dict) -> str:
    return " ".join(f"{n}x{w}" for w, n in sorted(counts.items(), reverse=True)) or "-"


def local_accesses(instrs: list[tuple[int, str]]) -> tuple[int, int]:
    """(LDL, STL): the local-memory loads and stores anywhere in a function (spills, or an array
    the compiler could not keep in registers)."""
    ops = [_opcode(t) for _, t in instrs]
    return sum(op.startswith("LDL") for op in ops), sum(op.startswith("STL") for op in ops)


_RES_USAGE = re.compile(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(cubin: Path) -> dict[str, dict]:
    """{function: registers, stack frame, static shared memory and local bytes} of a cubin, as
    ``cuobjdump -res-usage`` gives them."""
    out = _run([_tool("cuobjdump"), "-res-usage", str(cubin)])
    return {m.group(1): dict(regs=int(m.group(2)), stack=int(m.group(3)), shared=int(m.group(4)),
                             local=int(m.group(5))) for m in _RES_USAGE.finditer(out)}


def spills(info: dict) -> bool:
    """True when a compiled kernel (a report row) uses local memory: a stack frame or LDL / STL."""
    return bool(info["stack"] or info["ldl"] or info["stl"])


# ----------------------------------------------------------------------------------------- CUDA
# Kernel family -> (tensors streamed in, tensors streamed out) of the hot loop, to count elements.
CUDA_STREAMS = {
    "rows_nchw_kernel": (1, 0), "rows_nhwc_kernel": (1, 0), "bins_kernel": (1, 1), "avg_coef_kernel": (1, 1),
    "fill_rows_nchw_kernel": (0, 1), "fill_rows_nhwc_kernel": (0, 1), "max_scatter_kernel": (1, 1),
    "max_gather_nchw_kernel": (0, 1), "max_gather_nhwc_kernel": (0, 1), "max_gather_kernel": (0, 1),
    "forward_nchw_kernel": (1, 1), "forward_nhwc_kernel": (1, 1), "backward_nchw_kernel": (2, 1),
    "backward_nhwc_kernel": (2, 1), "attn_grad_kernel": (1, 1),
}
SMOKE_SOURCE = """// kernel_report --smoke: two instantiations instead of the launchers' hundreds.
#include <c10/util/BFloat16.h>
#include "kernels/height_gate.cuh"
#include "kernels/height_pool.cuh"
using namespace hanet_fast::cuda;
template __global__ void gate::forward_nchw_kernel<float, float, int32_t, 4>(float*, const float*, const float*,
                                                                              RowTiling, int64_t, int64_t);
template __global__ void pool::rows_nhwc_kernel<c10::BFloat16, float, int32_t, 8, true>(
    const c10::BFloat16*, float*, int64_t*, PixelTiling);
"""


def _element_bytes_of(short: str) -> int:
    first = short.split("<", 1)[1].split(",", 1)[0] if "<" in short else "f32"
    return {"bf16": 2, "f16": 2, "f32": 4, "f64": 8}.get(first, 4)


def compile_cuda(work: Path, smoke: bool) -> dict[str, dict]:
    """{mangled name: resources and hot-loop stats} of every kernel in the cubins."""
    from torch.utils import cpp_extension

    nvcc, cuobjdump = _tool("nvcc"), _tool("cuobjdump")
    includes = [f"-I{d}" for d in [str(ROOT), *_torch_includes()]]
    if smoke:
        (work / "smoke.cu").write_text(SMOKE_SOURCE)
        sources = [work / "smoke.cu"]
    else:
        sources = [ROOT / s for s in CUDA_SOURCES]

    def build(source: Path) -> tuple[str, str, dict]:
        cubin = work / (source.stem + ".cubin")
        ptxas = _run([nvcc, "-std=c++20", "-arch=sm_90", "-cubin", "-O3", "-lineinfo", "-Xptxas", "-v",
                      *cpp_extension.COMMON_NVCC_FLAGS, *includes, "-o", str(cubin), str(source)], cwd=ROOT)
        return ptxas, _run([cuobjdump, "-sass", str(cubin)]), resource_usage(cubin)

    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        outputs = list(pool.map(build, sources))
    kernels: dict[str, dict] = {}
    for ptxas, sass, usage in outputs:
        for block in re.split(r"ptxas info\s+: Compiling entry function ", ptxas)[1:]:
            name = re.match(r"'(\S+)'", block).group(1)
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
            used = re.search(r"Used (\d+) registers", block)
            smem = re.search(r"(\d+) bytes smem", block)
            kernels[name] = dict(regs=int(used.group(1)), spill_stores=int(spill.group(1)),
                                 spill_loads=int(spill.group(2)), smem=int(smem.group(1)) if smem else 0,
                                 stack=usage[name]["stack"])
        for name, instrs in split_sass(sass).items():
            kernels.setdefault(name, {})["sass"] = instrs
    short = demangle(sorted(kernels))
    for name, info in kernels.items():
        info["short"] = short[name]
        family = short[name].split("::")[-1].split("<")[0]
        streams = CUDA_STREAMS.get(family, (1, 1))
        instrs = info.pop("sass", [])
        info["ldl"], info["stl"] = local_accesses(instrs)
        info["loop"] = analyze(instrs, _element_bytes_of(short[name]), *streams)
    return kernels


def build_plans(work: Path) -> Path:
    """scripts/kernel_plans.cpp built with the host compiler: the launchers' planning code."""
    import torch

    exe = work / "kernel_plans"
    cxx = os.environ.get("CXX", "g++")
    includes = [f"-I{d}" for d in _torch_includes()]
    libdir = str(Path(torch.__file__).parent / "lib")
    _run([cxx, "-std=c++20", "-O0", "-rdynamic", *includes, "-o", str(exe), str(ROOT / "scripts" / "kernel_plans.cpp"),
          f"-L{libdir}", "-lc10", f"-Wl,-rpath,{libdir}"])
    return exe


def run_plans(exe: Path, occupancy: dict[str, int], lines: list[str]) -> list[list[str]]:
    """kernel_plans' launches (id, kernel, planned blocks, grid, threads) for case lines, its
    resident_grid() asking ``occupancy`` (mangled name -> blocks per SM)."""
    table = exe.parent / f"occupancy_{len(list(exe.parent.glob('occupancy_*')))}.txt"
    table.write_text("".join(f"{name} {n}\n" for name, n in occupancy.items()))
    return [line.split("\t") for line in _run([str(exe), str(table)], input="\n".join(lines)).splitlines()]


def cuda_plans(exe: Path, cuda: dict[str, dict], sms: int, smoke: bool) -> list[dict]:
    """Every launch of the CUDA launch sequences at the benchmark shapes, each grid cut to the
    resident blocks of ``sms`` SMs by the kernel's occupancy (its registers in ``cuda``)."""
    from benchmarks.suites.ops import CASES_BY_DEVICE

    occupancy = {name: blocks_per_sm(k["regs"], CUDA_THREADS, k["smem"]) for name, k in cuda.items()}
    cases = {}
    for case in CASES_BY_DEVICE["cuda"].values():
        for dtype in BENCH_DTYPES:
            for fmt in FORMATS:
                low, high = case.low_shape, case.high_shape
                for op, shape in ((f"pool_{case.pooling}_fwd", low), (f"pool_{case.pooling}_bwd", low),
                                  ("gate_fwd", high), ("gate_bwd", high)):
                    cases[f"{case.name}:{op}:{dtype}:{fmt}"] = (op, dtype, fmt, *shape, case.rows)
        if smoke:
            break
    lines = [f"{key} {op} {dtype} {fmt} {B} {C} {H} {W} {R} {sms}" for key, (op, dtype, fmt, B, C, H, W, R) in cases.items()]
    launches = []
    for key, name, blocks, grid, threads in run_plans(exe, occupancy, lines):
        case, op, dtype, fmt = key.split(":")
        launches.append(dict(case=case, op=op, dtype=dtype, format=fmt, kernel=name, blocks=int(blocks),
                             grid=int(grid), threads=int(threads), shape=cases[key][3:]))
    return launches


# ----------------------------------------------------------------------------------------- Triton
def _strides(shape, fmt):
    import torch

    t = torch.empty(shape, device="meta")
    return t.contiguous(memory_format=torch.channels_last).stride() if fmt == "channels_last" else t.stride()


def triton_variants(smoke: bool) -> list[dict]:
    """Every (kernel, launch settings) the Triton ops use at the benchmark shapes, with the
    argument values that decide Triton's specialisation and the grid."""
    import triton

    from benchmarks.suites.ops import CASES_BY_DEVICE
    from hanet_fast.triton import height_gate as hg
    from hanet_fast.triton import height_pool as hp

    out = []

    def add(label, kernel, dtype, values, pointers, blocks, num_warps, grid, streams, case):
        out.append(dict(label=label, kernel=kernel, dtype=dtype, values=values, pointers=pointers, blocks=blocks,
                        num_warps=num_warps, grid=grid, streams=streams, case=case))

    for case in CASES_BY_DEVICE["cuda"].values():
        for dtype in BENCH_DTYPES if not smoke else ("bfloat16",):
            t, acc = TRITON_TYPES[dtype], "fp32"
            for fmt in FORMATS if not smoke else ("channels_last",):
                cl = fmt == "channels_last"
                B, C, H, W = case.low_shape
                R = case.rows
                sx = _strides(case.low_shape, fmt)
                is_max = case.pooling == "max"
                rows_cfg, bins_cfg = hp._forward_config(B, C, H, W, R, cl, is_max, ELEMENT_BYTES[dtype])
                S = triton.cdiv(W, rows_cfg["SEG_W"])
                values = dict(C=C, H=H, W=W, ROWS=rows_cfg["ROWS"], SEG_W=rows_cfg["SEG_W"], S=S,
                              **dict(zip(("sxb", "sxc", "sxh", "sxw"), sx)))
                blocks = dict(BLOCK_C=rows_cfg["BLOCK_C"], BLOCK_W=rows_cfg["BLOCK_W"])
                pointers = {"x_ptr": f"*{t}", "sums_ptr": f"*{acc}", "best_ptr": f"*{acc}", "col_ptr": "*i32"}
                add(f"{case.name} pool_{case.pooling}_fwd(rows) {dtype} {fmt}",
                    hp._rows_max_kernel if is_max else hp._rows_avg_kernel, dtype, values, pointers,
                    dict(IS_FP64=False, **blocks), rows_cfg["num_warps"], hp._rows_grid(B, C, H, W, rows_cfg)[0],
                    (1, 0), case.name)
                add(f"{case.name} pool_{case.pooling}_fwd(bins) {dtype} {fmt}", hp._bins_kernel, dtype,
                    dict(C=C, H=H, W=W, R=R, S=S),
                    {"sums_ptr": f"*{acc}", "col_ptr": "*i32", "out_ptr": f"*{t}", "idx_ptr": "*i64"},
                    dict(IS_MAX=is_max, IS_FP64=False, BLOCK_C=bins_cfg["BLOCK_C"], BLOCK_K=bins_cfg["BLOCK_K"]),
                    bins_cfg["num_warps"], hp._bins_grid(B, C, R, bins_cfg)[0], (1, 0), case.name)
                if smoke:
                    return out
                sg = (C * R, R, 1)
                for i, config in enumerate(hp._backward_autotuner(is_max, cl).configs):
                    kw = config.kwargs
                    grid = B * triton.cdiv(C, kw["BLOCK_C"]) * triton.cdiv(H, kw["BLOCK_H"]) * triton.cdiv(W, kw["BLOCK_W"])
                    values = dict(C=C, H=H, W=W, R=R, MAX_BINS_PER_ROW=(R + H - 1) // H + 1,
                                  **dict(zip(("sgb", "sgc", "sgr"), sg)), **dict(zip(("sib", "sic", "sir"), sg)),
                                  **dict(zip(("sxb", "sxc", "sxh", "sxw"), sx)))
                    add(f"{case.name} pool_{case.pooling}_bwd {dtype} {fmt} autotune#{i}", hp._pool_backward_kernel,
                        dtype, values, {"gx_ptr": f"*{t}", "g_ptr": f"*{t}", "idx_ptr": "*i64" if is_max else f"*{t}"},
                        dict(IS_MAX=is_max, IS_FP64=False, **kw), config.num_warps, grid, (0, 1), case.name)
                B, C, H, W = case.high_shape
                sx = _strides(case.high_shape, fmt)
                sa = (C * R, R, 1)
                for i, config in enumerate((hg._gate_forward_nhwc if cl else hg._gate_forward_nchw).configs):
                    kw = config.kwargs
                    grid = B * triton.cdiv(C, kw["BLOCK_C"]) * triton.cdiv(H, kw["BLOCK_H"]) * triton.cdiv(W, kw["BLOCK_W"])
                    values = dict(C=C, H=H, W=W, R=R, **dict(zip(("sxb", "sxc", "sxh", "sxw"), sx)),
                                  **dict(zip(("syb", "syc", "syh", "syw"), sx)), **dict(zip(("sab", "sac", "sar"), sa)))
                    add(f"{case.name} gate_fwd {dtype} {fmt} autotune#{i}", hg._gate_forward_kernel, dtype, values,
                        {"y_ptr": f"*{t}", "x_ptr": f"*{t}", "attn_ptr": f"*{t}"}, dict(IS_FP64=False, **kw),
                        config.num_warps, grid, (1, 1), case.name)
                cfg = hg._rows_config(B, C, H, W, cl)
                S = triton.cdiv(W, cfg["SEG_W"])
                blocks = {k: v for k, v in cfg.items() if k not in ("num_warps", "SEG_W")}
                ss = (H * S * C, 1, S * C, C) if cl else (C * H * S, H * S, S, 1)
                values = dict(C=C, H=H, W=W, R=R, SEG_W=cfg["SEG_W"], S=S,
                              **{p + s: v for p in ("sgy", "sx", "sgx") for s, v in zip("bchw", sx)},
                              **dict(zip(("ssb", "ssc", "ssh", "sss"), ss)), **dict(zip(("sab", "sac", "sar"), sa)))
                grid = B * triton.cdiv(C, cfg["BLOCK_C"]) * triton.cdiv(H, cfg["BLOCK_H"]) * S
                add(f"{case.name} gate_bwd(rows) {dtype} {fmt}", hg._gate_backward_rows_kernel, dtype, values,
                    {**{n: f"*{t}" for n in ("gx_ptr", "gy_ptr", "x_ptr", "attn_ptr")}, "sums_ptr": f"*{acc}"},
                    dict(WRITE_GRAD_X=True, IS_FP64=False, **blocks), cfg["num_warps"], grid, (2, 1), case.name)
                cfg = hg._attn_config(R)
                blocks = {k: v for k, v in cfg.items() if k != "num_warps"}
                values = dict(C=C, H=H, R=R, S=S, **dict(zip(("ssb", "ssc", "ssh", "sss"), ss)))
                grid = B * triton.cdiv(C, cfg["BLOCK_C"]) * triton.cdiv(R, cfg["BLOCK_R"])
                add(f"{case.name} gate_bwd(attn) {dtype} {fmt}", hg._gate_backward_attn_kernel, dtype, values,
                    {"gattn_ptr": f"*{t}", "sums_ptr": f"*{acc}"}, dict(IS_FP64=False, **blocks), cfg["num_warps"],
                    grid, (1, 1), case.name)
    return out


def compile_triton(variants: list[dict], work: Path) -> list[dict]:
    """Compiles each distinct variant once; returns one row per variant with its figures."""
    from hanet_fast.triton._common import compile_for_sm90

    cuobjdump = _tool("cuobjdump")
    cache: dict[str, dict] = {}
    rows = []
    for v in variants:
        fn = v["kernel"].fn if hasattr(v["kernel"], "configs") else v["kernel"]
        ones = {k: 1 for k, x in v["values"].items() if x == 1 and k in fn.arg_names}
        constants = {**v["blocks"], **ones}
        divisible = [k for k, x in v["values"].items() if x % 16 == 0 and k in fn.arg_names and k not in constants]
        divisible += [name for name in v["pointers"] if name in fn.arg_names]
        key = json.dumps([fn.__name__, v["dtype"], sorted(constants.items()), sorted(divisible), v["num_warps"]])
        if key not in cache:
            compiled = compile_for_sm90(fn, v["pointers"], constants, v["num_warps"], divisible)
            cubin = work / f"triton_{len(cache)}.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            (usage,) = resource_usage(cubin).values()
            instrs = next(iter(split_sass(_run([cuobjdump, "-sass", str(cubin)])).values()))
            ldl, stl = local_accesses(instrs)
            smem = int(getattr(compiled.metadata, "shared", 0))
            cache[key] = dict(regs=usage["regs"], stack=usage["stack"], ldl=ldl, stl=stl, smem=smem,
                              loop=analyze(instrs, ELEMENT_BYTES[v["dtype"]], *v["streams"]))
        info = cache[key]
        threads = v["num_warps"] * 32
        per_sm = blocks_per_sm(info["regs"], threads, info["smem"])
        rows.append(dict(label=v["label"], kernel=fn.__name__, case=v["case"], config=v["blocks"],
                         num_warps=v["num_warps"], grid=v["grid"], blocks_per_sm=per_sm,
                         waves=v["grid"] / (per_sm * SMS_FOR_WAVES[0]) if per_sm else float("inf"), **info))
    return rows


SMS_FOR_WAVES = [132]


# ----------------------------------------------------------------------------------------- report
def _git_commit() -> str:
    try:
        commit = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "kernels", "csrc",
                                "hanet_fast/triton"]).returncode
        return commit + ("-dirty" if dirty else "")
    except SystemExit:
        return "unknown"


def _loop_cells(loop: LoopStats) -> list[str]:
    return [widths(loop.loads), widths(loop.stores), str(loop.instructions), f"{loop.elements:g}",
            f"{loop.per_element:.2f}", f"{loop.per_element / 32:.3f}"]


# H100 SXM datasheet rates, for the expected cost of a hot loop that is not 128-bit (estimates, not
# measurements): DRAM bandwidth, and warp-instructions an SM issues per second (four schedulers,
# one a clock each, at the 1.98 GHz boost clock).
DRAM_BYTES_PER_S = 3.35e12
ISSUE_PER_SM_PER_S = 4 * 1.98e9


def narrow_hot_loops(cuda: dict, launches: list[dict], sms: int) -> list[str]:
    """Markdown rows of the launches at the benchmark shapes whose kernel streams a whole tensor
    (an ``_nchw`` / ``_nhwc`` kernel) with hot-loop accesses to it narrower than 128 bits, and what that
    is expected to cost: the hot loop's issue time (its warp-instructions over the SMs' issue
    rate) against the time its tensors take through DRAM, the larger being about the kernel's."""
    rows = []
    for l in launches:
        k = cuda.get(l["kernel"])
        family = k["short"].split("::")[-1].split("<")[0] if k else ""
        if not k or not re.search(r"_(nchw|nhwc)_kernel$", family):
            continue
        loop = k["loop"]
        streams_in, streams_out = CUDA_STREAMS[family]
        # The streamed tensors' accesses: a write-only kernel's loads read small inputs (bins).
        if all(w >= 128 for w in (*(loop.loads if streams_in else ()), *(loop.stores if streams_out else ()))):
            continue
        elements = math.prod(l["shape"][:4])
        memory_us = elements * ELEMENT_BYTES[l["dtype"]] * (streams_in + streams_out) / DRAM_BYTES_PER_S * 1e6
        issue_us = elements * loop.per_element / 32 / (ISSUE_PER_SM_PER_S * sms) * 1e6
        rows.append("| " + " | ".join([l["case"], l["op"], l["dtype"], l["format"], k["short"], widths(loop.loads),
                                       widths(loop.stores), f"{loop.per_element / 32:.3f}", f"{memory_us:.1f}",
                                       f"{issue_us:.1f}", f"{max(0.0, issue_us - memory_us):.1f}"]) + " |")
    return rows


def markdown(cuda: dict | None, launches: list[dict] | None, triton_rows: list[dict] | None, sms: int,
             commit: str) -> str:
    out = [f"# Static kernel report, sm_90 ({sms} SMs)", "",
           f"Commit `{commit}`; `python scripts/kernel_report.py` (see its docstring for how each column is counted).",
           "Loads / stores: global memory instructions of the hot loop as count x bits; instr/elem: instructions",
           "of the hot loop per element of the streamed tensor, per thread; warp-instr/elem: the same per warp",
           "(a warp issues one instruction for its 32 threads), the figure to hold against the SMs' issue rate",
           "(an H100 issues about 0.7 warp-instructions per bf16 element at 3 TB/s). Waves: the grid, as",
           "launch() cuts it to the resident blocks of the SMs (CUDA: resident_grid() of kernels/common.cuh,",
           "asking each kernel's own occupancy), over blocks/SM x SMs.", ""]
    if launches is not None and cuda is not None:
        out += ["## CUDA launches at the benchmark shapes", "",
                "| case | op | dtype | format | kernel | regs | stack B | LDL/STL | blocks/SM | grid | waves | loads "
                "| stores | loop instr | elem/iter | instr/elem | warp-instr/elem |", "|" + "---|" * 17]
        for l in launches:
            k = cuda.get(l["kernel"])
            if k is None:
                out.append(f"| {l['case']} | {l['op']} | {l['dtype']} | {l['format']} | {l['kernel']} (not in the cubins) |")
                continue
            per_sm = blocks_per_sm(k["regs"], l["threads"], k["smem"])
            grid = l["grid"]  # as resident_grid() of kernels/common.cuh cut it
            waves = grid / (per_sm * sms) if per_sm else float("inf")
            out.append("| " + " | ".join([l["case"], l["op"], l["dtype"], l["format"], k["short"], str(k["regs"]),
                                          str(k["stack"]), f"{k['ldl']}/{k['stl']}", str(per_sm), str(grid),
                                          f"{waves:.2f}",
                                          *_loop_cells(k["loop"])]) + " |")
        out.append("")
        narrow = narrow_hot_loops(cuda, launches, sms)
        out += ["## CUDA hot loops below 128 bits at the benchmark shapes", "",
                "Expected cost, from H100 SXM datasheet rates (3.35 TB/s; 4 warp-instructions per SM per clock at "
                "1.98 GHz), not measured: DRAM us = the kernel's streamed tensors at full bandwidth; issue us =",
                "the hot loop's warp-instructions at the full issue rate; extra us = how much the issue time",
                "exceeds the DRAM time (0: the narrow accesses hide under the memory traffic). A kernel whose",
                "vector width is 1 (`<...,1>`, `<...,1,T>`) is the fallback for a channel count that is not a",
                "multiple of the 16-byte vector (4 float32, 8 bfloat16 channels; C = 19 at L5): in channels_last",
                "a vector would straddle two pixels, and in NCHW a row width that is not a multiple of it would.",
                ""]
        if narrow:
            out += ["| case | op | dtype | format | kernel | loads | stores | warp-instr/elem | DRAM us | issue us "
                    "| extra us |", "|" + "---|" * 11, *narrow, ""]
        else:
            out += ["None.", ""]
    if cuda is not None:
        spilling = sorted(k["short"] for k in cuda.values() if spills(k))
        out += ["## Every CUDA kernel instantiation", "",
                "Kernels with a stack frame or LDL / STL: " + ("; ".join(spilling) if spilling else "none") + ".", "",
                "| kernel | regs | spill st/ld B | stack B | LDL/STL | smem B | blocks/SM | hot loop "
                "| loads | stores | loop instr | elem/iter | instr/elem | warp-instr/elem |", "|" + "---|" * 14]
        for name, k in sorted(cuda.items(), key=lambda kv: kv[1]["short"]):
            out.append("| " + " | ".join([k["short"], str(k["regs"]), f"{k['spill_stores']}/{k['spill_loads']}",
                                          str(k["stack"]), f"{k['ldl']}/{k['stl']}", str(k["smem"]),
                                          str(blocks_per_sm(k["regs"], CUDA_THREADS, k["smem"])),
                                          k["loop"].where, *_loop_cells(k["loop"])]) + " |")
        out.append("")
    if triton_rows is not None:
        spilling = sorted({r["label"] for r in triton_rows if spills(r)})
        out += ["## Triton kernels at the benchmark shapes", "",
                "Kernels with a stack frame or LDL / STL: " + ("; ".join(spilling) if spilling else "none") + ".", "",
                "| case / op / dtype / format | kernel | config | warps | regs | stack B | LDL/STL | smem B | blocks/SM "
                "| grid | waves | loads | stores | loop instr | elem/iter | instr/elem | warp-instr/elem |",
                "|" + "---|" * 17]
        for r in triton_rows:
            config = ",".join(f"{k}={v}" for k, v in r["config"].items() if k.startswith("BLOCK") or k == "IS_MAX")
            out.append("| " + " | ".join([r["label"], r["kernel"], config, str(r["num_warps"]), str(r["regs"]),
                                          str(r["stack"]), f"{r['ldl']}/{r['stl']}", str(r["smem"]), str(r["blocks_per_sm"]), str(r["grid"]),
                                          f"{r['waves']:.2f}", *_loop_cells(r["loop"])]) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--smoke", action="store_true", help="two CUDA kernels and the two Triton kernels of a pooling forward (a check, in seconds)")
    p.add_argument("--out", default=None, help="folder for report.md and report.json (created; files overwritten "
                   "only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace report.md / report.json in --out")
    p.add_argument("--sms", type=int, default=132, help="SMs for the waves column (default %(default)s: H100/H200 SXM)")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: cuda, triton")
    p.add_argument("--only", default=None, metavar="REGEX", help="keep the Triton variants and CUDA launches whose "
                   "label ('L5 pool_max_fwd bfloat16 channels_last ...') matches REGEX")
    args = p.parse_args(argv)
    if args.sms < 1:
        p.error(f"--sms must be >= 1, got {args.sms}")
    skip = {s for s in args.skip.split(",") if s}
    if not skip <= {"cuda", "triton"}:
        p.error(f"--skip: of cuda, triton, got {args.skip!r}")
    if args.out and not args.overwrite and any((Path(args.out) / f).exists() for f in ("report.md", "report.json")):
        p.error(f"--out: {args.out} already holds a report (pass --overwrite to replace it)")
    SMS_FOR_WAVES[0] = args.sms
    started = time.perf_counter()
    import torch.utils.cpp_extension  # noqa: F401  (once, here: importing torch from two threads at once breaks)

    with tempfile.TemporaryDirectory(prefix="kernel_report_") as tmp:
        work = Path(tmp)
        cuda = launches = triton_rows = None
        if "cuda" not in skip:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                plans = pool.submit(build_plans, work)
                cuda = compile_cuda(work, args.smoke)
                launches = cuda_plans(plans.result(), cuda, args.sms, args.smoke)
            if args.smoke:
                launches = [l for l in launches if l["kernel"] in cuda]
            if args.only:
                launches = [l for l in launches if re.search(args.only, f"{l['case']} {l['op']} {l['dtype']} {l['format']}")]
        if "triton" not in skip:
            variants = triton_variants(args.smoke)
            if args.only:
                variants = [v for v in variants if re.search(args.only, v["label"])]
            triton_rows = compile_triton(variants, work)
    commit = _git_commit()
    text = markdown(cuda, launches, triton_rows, args.sms, commit)
    print(text)
    print(f"kernel_report: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text + "\n")
        data = dict(commit=commit, sms=args.sms,
                    cuda={k: {**v, "loop": dataclasses.asdict(v["loop"])} for k, v in (cuda or {}).items()},
                    launches=launches or [],
                    triton=[{**r, "loop": dataclasses.asdict(r["loop"])} for r in (triton_rows or [])])
        (out / "report.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
