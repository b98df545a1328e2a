#!/usr/bin/env python
"""Benchmarks of hanet_fast: the ops, the HANet module, DeepLabv3+ training steps and inference.

    python benchmarks/run.py                         # every suite, sized for the device (GPU if any)
    python benchmarks/run.py --suites train-step     # a selection
    python benchmarks/run.py --smoke                 # minutes on a CPU (torch.compile): tiny sizes, 1 repeat

Suites (``--suites``, run in the order given; default all, in this priority order):

    train-step   DeepLabv3+ training step: no HANet vs HANet L1-L4 fused vs reference vs fused compiled
    inference    DeepLabv3+ eval-mode images/s, the same variants (+ onnxruntime on a CPU)
    module       hanet_fast.nn.HANet forward and forward+backward, every backend
    ops          height_pool and height_gate forward and forward+backward, every backend

Every case times its variants with interleaved repeats, so that a ratio (speedup, overhead)
compares calls made under the same conditions. Results go to ``--out`` (default
``benchmarks/results/<device>-<YYYY-MM-DD>/``): results.json, one CSV per suite, results.md and
PNG charts; the markdown report also goes to stdout, progress to stderr. A run is held to
``--budget-s``: a case that would end past it is skipped, and the report lists it. Exit status
1 when a case or backend failed or a result check failed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable

# Run as a script, this file's folder is on sys.path, not the repository: put the repository
# first so that ``benchmarks`` imports as a package (and hanet_fast from the checkout).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.common import REPO_ROOT, Budget, device_slug, load_average, log, machine_info, parse_list  # noqa: E402
from benchmarks.suites import SUITE_NAMES, Context, inference, ops, train_step  # noqa: E402
from hanet_fast._cli import DEFAULT_COMPILE_BACKEND, compile_backend  # noqa: E402
from hanet_fast._io import folder_problem  # noqa: E402

# Priority order: the training step's headline case first, the cheap op suites last.
DEFAULT_ORDER = ("train-step", "inference", "module", "ops")
# Budgets of the cases (start-up and the report excluded): a GPU run must fit one 8-minute call
# of the device tool, a CPU run 10 minutes on the 2-core machine; each keeps a margin for
# imports, CUDA start-up and the case that runs past the budget's prediction.
DEFAULT_BUDGET_S = {"cuda": 420.0, "cpu": 540.0}
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


RUNNERS: dict[str, Callable[[Context], dict]] = {
    "ops": lambda ctx: ops.run(ctx, ("pool", "gate")),
    "module": lambda ctx: ops.run(ctx, ("module",)),
    "train-step": train_step.run,
    "inference": inference.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    g = p.add_argument_group("run")
    g.add_argument("--suites", default=",".join(DEFAULT_ORDER), help="comma-separated, of %(default)s")
    g.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available, else cpu)")
    g.add_argument("--out", default=None, help="results folder (default benchmarks/results/<device>-<YYYY-MM-DD>/; "
                   "with --smoke, benchmarks/results/tmp-smoke-<device>/)")
    g.add_argument("--budget-s", type=float, default=None,
                   help=f"wall-clock budget in s; 0 = none (default {DEFAULT_BUDGET_S['cuda']:.0f} on a GPU, "
                        f"{DEFAULT_BUDGET_S['cpu']:.0f} on a CPU)")
    g.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat, MobileNetV2 only: checks the "
                   "machinery in minutes, most of them torch.compile's (timings meaningless)")
    g.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default per suite and device)")
    g.add_argument("--warmup", type=int, default=None, help="untimed calls per variant after the first (default "
                   "per suite and device)")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    g = p.add_argument_group("ops and module suites")
    g.add_argument("--cases", default=None, help="comma-separated, of L1,L2,L3,L4,L5 (default all)")
    g.add_argument("--backends", default=None, help="comma-separated: reference, cpu, cuda, triton, compile "
                   "(torch.compile of the reference), compile-<backend> (default: reference,cpu,compile on a CPU; "
                   "reference,cuda,triton on a GPU)")
    g.add_argument("--dtype", default=None, help="comma-separated, of float32,float64,float16,bfloat16 (default "
                   "float32 on a CPU, float32,bfloat16 on a GPU)")
    g.add_argument("--small", action="store_true", help="a quarter of every channel count, height and width")
    g = p.add_argument_group("all suites")
    g.add_argument("--formats", default=None, help="comma-separated, of nchw,channels_last (default: nchw for the "
                   "ops on a CPU, channels_last otherwise)")
    g = p.add_argument_group("train-step and inference suites")
    g.add_argument("--models", default=None, help="comma-separated backbones, of resnet101_deepstem,resnet50,"
                   "mobilenet_v2 (default all three)")
    g.add_argument("--output-strides", default=None, help="comma-separated, of 8,16 (default 8,16 for train-step, "
                   "8 for inference)")
    g.add_argument("--precisions", default=None, help="comma-separated, of fp32,bf16 (bf16 = autocast; default "
                   "bf16,fp32 on a GPU, fp32 on a CPU)")
    g.add_argument("--variants", default=None, help="comma-separated: none (no HANet, required), fused (the "
                   "device's fused backend), compile (fused under torch.compile), onnxruntime (fused, exported to ONNX; "
                   "inference on a CPU), or a backend name such as reference or triton (default "
                   "none,fused,reference, then compile, and onnxruntime where it runs)")
    g.add_argument("--compile-backend", default=DEFAULT_COMPILE_BACKEND, type=compile_backend,
                   help="torch.compile backend of the compile variant (default %(default)s; aot_eager traces "
                        "without generating code: a quick check, not a speed)")
    g.add_argument("--image-size", default=None, help="HxW for both model suites (default per suite and device)")
    g.add_argument("--batch", type=int, default=None, help="batch size for both model suites (train-step >= 2)")
    args = p.parse_args(argv)
    for flag in ("repeats", "batch", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.budget_s is not None and args.budget_s < 0:
        p.error(f"--budget-s must be >= 0 (0 = no budget), got {args.budget_s}")
    try:
        args.device = _device(args.device)
    except ValueError as e:
        p.error(str(e))
    problem = folder_problem(args.out) if args.out else None
    if problem:
        p.error(f"--out {args.out}: {problem}")
    return args


def _device(text: str | None) -> torch.device:
    """``--device``: cpu or cuda[:i] (default cuda when available); ValueError naming the problem."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEFAULT_BUDGET_S:
        raise ValueError(f"--device: cpu or cuda[:i], got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: no CUDA device available")
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = load_average()
    device = args.device
    if device.index is not None:
        torch.cuda.set_device(device)  # CUDA events and the allocator statistics use the current device
    suites = parse_list(args.suites, SUITE_NAMES, "suites")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget_s = DEFAULT_BUDGET_S[device.type] if args.budget_s is None else args.budget_s or None
    slug = device_slug(device)
    out = args.out or os.path.join(
        RESULTS_DIR, f"tmp-smoke-{slug}" if args.smoke else f"{slug}-{datetime.date.today().isoformat()}")
    ctx = Context(device=device, args=args, budget=Budget(budget_s))
    log(f"suites {suites} on {device} ({slug}); budget {'none' if budget_s is None else f'{budget_s:.0f} s'}; "
        f"results to {out}")

    results = {}
    for name in suites:
        log(f"suite {name} (run elapsed {ctx.budget.elapsed():.0f} s)")
        results[name] = RUNNERS[name](ctx)

    machine = machine_info(device)
    machine["loadavg_start"], machine["loadavg_end"] = load_start, load_average()
    full = {
        "machine": machine,
        "config": vars(args) | {"suites": suites, "device": str(device)},
        "budget": {"seconds": budget_s, "skipped": ctx.budget.skipped},
        "suites": results,
        "total_s": time.perf_counter() - started,
    }
    written = report.write_folder(full, out)
    print(report.markdown(full))
    log(f"wrote {', '.join(written)} to {out} in {full['total_s']:.0f} s"
        + (f"; skipped for the budget: {', '.join(ctx.budget.skipped)}" if ctx.budget.skipped else ""))
    bad_checks = any(r.get("check_ok") is False for res in results.values() for r in res["rows"])
    return 1 if bad_checks or any(res["failed"] for res in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
