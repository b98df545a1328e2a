"""What every benchmark suite shares: interleaved timing, statistics, the time budget, machine info.

One source of truth for how a call is timed: :func:`time_interleaved` runs the variants of one
case round-robin (so that load from other processes hits them alike) and times each call alone,
with CUDA events on a GPU and ``time.perf_counter`` on a CPU.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import torch

import hanet_fast

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*args: object) -> None:
    """Progress goes to stderr, so that stdout carries only the markdown report."""
    print(*args, file=sys.stderr, flush=True)


def parse_list(text: str, allowed: Iterable[str] | None, what: str) -> list[str]:
    """Comma-separated ``text`` as a list; a clear error names the unknown items and the choices."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise SystemExit(f"--{what}: empty list")
    if allowed is not None:
        allowed = list(allowed)
        bad = [s for s in items if s not in allowed]
        if bad:
            raise SystemExit(f"unknown {what} {bad}; choose from {allowed}")
    return items


# --------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call; its outputs are freed before the clock stops.

    On CUDA the call is bracketed by events on the current stream (the GPU's own clock, free of
    host-side jitter) after a synchronize, so that no earlier work overlaps it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Warm every callable up, then time them round-robin ``repeats`` times; seconds per call.

    Round ``i`` of every variant runs back to back, so ``times[a][i] / times[b][i]`` is a paired
    ratio (see :func:`paired_overhead`)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return times


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (both the single value when there is one)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def time_stats(seconds: Sequence[float]) -> dict:
    """Median, quartiles and minimum in milliseconds, and every time, of one variant."""
    ms = [s * 1e3 for s in seconds]
    q1, q3 = quartiles(ms)
    return {"ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "min_ms": min(ms), "times_ms": ms}


def paired_overhead(times: Sequence[float], baseline: Sequence[float]) -> dict:
    """Overhead of ``times`` over ``baseline`` in %: the median and quartiles of the per-round
    overheads ``(times[i] / baseline[i] - 1) * 100``. The rounds are interleaved, so each ratio
    compares two calls made back to back under the same load; its median discounts load that
    drifts over the run, which a ratio of the two medians would not."""
    ratios = [100 * (t / b - 1) for t, b in zip(times, baseline)]
    q1, q3 = quartiles(ratios)
    return {
        "overhead_pct": statistics.median(ratios),
        "overhead_q1_pct": q1,
        "overhead_q3_pct": q3,
    }


# --------------------------------------------------------------------------------------------- memory


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Device memory in MB (10^6 bytes) allocated at the peak of one call, everything resident
    included (weights, optimizer state, inputs); None on CPU, where no allocator statistics
    exist (the process's peak RSS never goes down, so it cannot tell variants apart)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    del result
    return torch.cuda.max_memory_allocated(device) / 1e6


# --------------------------------------------------------------------------------------------- budget


class Budget:
    """Wall-clock budget of a whole run: before each case, a suite asks :meth:`allows` with the
    case's predicted duration (the duration of the suite's previous case); a case that would end
    past the budget is skipped and recorded as such, never run partly."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.started = time.perf_counter()
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows(self, what: str, predicted_s: float) -> bool:
        if self.seconds is None or self.elapsed() + predicted_s <= self.seconds:
            return True
        self.skipped.append(what)
        log(f"  budget: skipping {what} (elapsed {self.elapsed():.0f} s + predicted {predicted_s:.0f} s "
            f"> --budget-s {self.seconds:.0f})")
        return False


# --------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """HEAD, with ``-dirty`` when tracked files differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def scheduling() -> str:
    """The process's scheduling policy, so the report says whether it ran under ``chrt``."""
    try:
        policy = os.sched_getscheduler(0)
    except (AttributeError, OSError):
        return "unknown"
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
    name = names.get(policy, str(policy))
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        name += f" priority {os.sched_getparam(0).sched_priority}"
    else:
        name += f" nice {os.nice(0)}"
    return name


def device_slug(device: torch.device) -> str:
    """``cpu`` or the GPU's name in lower case with dashes (``nvidia-h100-80gb-hbm3``): the
    results folder's prefix."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "hanet_fast": hanet_fast.__version__,
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_slug": device_slug(device),
        "scheduling": scheduling(),
        "command": " ".join(["python", *sys.argv]),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1e9, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"
