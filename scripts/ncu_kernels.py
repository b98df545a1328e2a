#!/usr/bin/env python
"""The four main kernels of each GPU backend, once each, at a benchmark shape: the program that
``scripts/gpu_session.sh`` runs under Nsight Compute (``ncu --profile-from-start off``).

    python scripts/ncu_kernels.py [--case L1] [--backends cuda,triton] [--dtypes float32,bfloat16]
                                  [--formats nchw,channels_last]

For every (backend, dtype, memory format) it runs height_pool forward, height_pool backward,
height_gate forward and height_gate backward at the benchmark case's shapes (x_low pooled,
x_high gated, as in benchmarks/suites/ops.py): first untimed, outside the profiled range, so
that Triton's autotuning and first-call compilation are not what ncu measures; then once more
between ``torch.cuda.profiler.start()`` and ``stop()``, each op inside an NVTX range named
``<backend>/<dtype>/<format>/<op>`` (so ncu's ``--nvtx`` output can tell the rows apart).
Without a GPU it exits 2 with one line on stderr.

``--summarize NCU_CSV`` instead turns ncu's ``--csv`` output into a markdown table, one row per
profiled kernel: its NVTX range, name, duration, DRAM throughput (% of peak), achieved
occupancy and L2 write requests (no GPU needed).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.suites.ops import CASES_BY_DEVICE, DTYPES, FORMATS  # noqa: E402
from hanet_fast import ops  # noqa: E402

OPS = ("pool_fwd", "pool_bwd", "gate_fwd", "gate_bwd")
# What gpu_session.sh asks ncu for, and the column each becomes in the summary.
METRICS = {
    "gpu__time_duration.sum": "time",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "DRAM % of peak",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "achieved occupancy %",
    "lts__t_requests_srcunit_tex_op_write.sum": "L2 write requests",
    "dram__bytes_read.sum": "DRAM read",
    "dram__bytes_write.sum": "DRAM write",
}


def summarize(path: str) -> str:
    """A markdown table of ncu's ``--csv --metrics ...`` output (one row per kernel launch)."""
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu prefixes its own messages with ==
    launches: dict[str, dict] = {}
    for row in csv.DictReader(lines):
        launch = launches.setdefault(row["ID"], {"kernel": row.get("Kernel Name", "?"), "range": ""})
        for key, value in row.items():
            if key and ("nvtx" in key.lower() or "range" in key.lower()) and value:  # ncu --nvtx column names vary
                launch["range"] = value
        name = row.get("Metric Name")
        if name in METRICS:
            launch[METRICS[name]] = f"{row.get('Metric Value', '')} {row.get('Metric Unit', '')}".strip()
    header = ["range", "kernel", *METRICS.values()]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for launch in launches.values():
        kernel = launch["kernel"].split("(")[0][-60:]
        out.append("| " + " | ".join([launch["range"], kernel] + [launch.get(h, "") for h in header[2:]]) + " |")
    return "\n".join(out)


def _calls(case, backend: str, dtype: torch.dtype, memory_format: torch.memory_format) -> dict:
    """The four ops of ``case`` on ``backend`` as argument-free callables (inputs made once)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x_low = torch.randn(case.low_shape, device="cuda", dtype=dtype, generator=gen).contiguous(
        memory_format=memory_format)
    x_high = torch.randn(case.high_shape, device="cuda", dtype=dtype, generator=gen).contiguous(
        memory_format=memory_format)
    attn = torch.rand((case.batch, case.c_high, case.rows), device="cuda", dtype=dtype, generator=gen)
    grad_z = torch.randn((case.batch, case.c_low, case.rows), device="cuda", dtype=dtype, generator=gen)
    grad_y = torch.randn_like(x_high)
    suffix = "" if backend == "cuda" else "_triton"
    op = lambda name: getattr(torch.ops.hanet_fast, name + suffix)  # noqa: E731
    height, width = case.hw_low
    channels_last = memory_format == torch.channels_last
    if case.pooling == "max":
        _, indices = op("height_pool_max")(x_low, case.rows)
        pool_fwd = lambda: op("height_pool_max")(x_low, case.rows)  # noqa: E731
        pool_bwd = lambda: op("height_pool_max_backward")(grad_z, indices, height, width, channels_last)  # noqa: E731
    else:
        pool_fwd = lambda: op("height_pool_avg")(x_low, case.rows)  # noqa: E731
        pool_bwd = lambda: op("height_pool_avg_backward")(grad_z, height, width, channels_last)  # noqa: E731
    return {
        "pool_fwd": pool_fwd,
        "pool_bwd": pool_bwd,
        "gate_fwd": lambda: op("height_gate")(x_high, attn),
        "gate_bwd": lambda: op("height_gate_backward")(grad_y, x_high, attn),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="L1", help="benchmark case, of L1..L5 (default %(default)s)")
    p.add_argument("--backends", default="cuda,triton", help="comma-separated, of cuda,triton")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated, of " + ",".join(DTYPES))
    p.add_argument("--formats", default="nchw,channels_last", help="comma-separated, of " + ",".join(FORMATS))
    p.add_argument("--summarize", metavar="NCU_CSV", default=None, help="print ncu's CSV output as a table and exit")
    args = p.parse_args(argv)
    if args.summarize is not None:
        if not os.path.isfile(args.summarize):
            p.error(f"--summarize: no such file {args.summarize!r}")
        print(summarize(args.summarize))
        return 0
    cases = CASES_BY_DEVICE["cuda"]
    if args.case not in cases:
        p.error(f"--case: one of {', '.join(cases)}, got {args.case!r}")
    if not torch.cuda.is_available():
        print("ncu_kernels: no CUDA device visible to torch", file=sys.stderr)
        return 2
    available = ops.available_backends()
    plans = []
    for backend in args.backends.split(","):
        if backend not in ("cuda", "triton"):
            p.error(f"--backends: cuda or triton, got {backend!r}")
        if available.get(backend) is not None:
            print(f"ncu_kernels: backend {backend} skipped: {available[backend]}", file=sys.stderr)
            continue
        for dtype in args.dtypes.split(","):
            if dtype not in DTYPES:
                p.error(f"--dtypes: of {', '.join(DTYPES)}, got {dtype!r}")
            for fmt in args.formats.split(","):
                if fmt not in FORMATS:
                    p.error(f"--formats: of {', '.join(FORMATS)}, got {fmt!r}")
                plans.append((f"{backend}/{dtype}/{fmt}", _calls(cases[args.case], backend, DTYPES[dtype], FORMATS[fmt])))
    for _, calls in plans:  # autotuning, compilation, module loads: outside the profiled range
        for name in OPS:
            calls[name]()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for label, calls in plans:
        for name in OPS:
            torch.cuda.nvtx.range_push(f"{label}/{name}")
            calls[name]()
            torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"ncu_kernels: ran {len(plans) * len(OPS)} ops of case {args.case} in the profiled range")
    return 0


if __name__ == "__main__":
    sys.exit(main())
