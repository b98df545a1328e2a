#!/usr/bin/env python
"""Benchmarks of hanet_fast: height_pool, height_gate and the HANet module, every backend side by side.

Each (case, op, pass) is timed for every selected backend in the same run, with the repeats
interleaved across backends (so that noise from other processes hits them alike), and compared
with the reference backend (``reference_ms / backend_ms``) and with a copy roofline measured in
the same run (``dst.copy_(x)`` of the largest tensor of the run into a preallocated ``dst``).

    python benchmarks/run.py                                # all cases, ops and backends
    python benchmarks/run.py --cases L1,L3 --ops pool,gate  # a selection
    python benchmarks/run.py --small --repeats 2            # quick check at reduced sizes
    python benchmarks/run.py --json /tmp/bench.json         # also write every number as JSON

See benchmarks/README.md for what each column means and how bytes are counted.
Backends: ``reference`` / ``cpu`` / ``cuda`` / ``triton`` run the public ops (the reference
functions are imported from the package, never copied); ``compile`` is ``torch.compile`` of the
reference (function or module); ``compile-<name>`` is ``torch.compile`` of the public op or
module with ``backend=<name>``. Backends that cannot run on the chosen device are skipped,
with the reason printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

import hanet_fast
from hanet_fast import ops
from hanet_fast.ops import reference

# --------------------------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    where: str  # x_low -> x_high in the network
    batch: int
    c_low: int
    hw_low: tuple[int, int]
    c_high: int
    hw_high: tuple[int, int]
    rows: int = 16
    pooling: str = "avg"  # height_pool mode on x_low, and the HANet module's pooling

    @property
    def low_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.c_low, *self.hw_low)

    @property
    def high_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.c_high, *self.hw_high)

    def small(self) -> "Case":
        """A reduced copy for quick checks: a quarter of the channels, height and width."""
        quarter = lambda n: max(1, n // 4)  # noqa: E731
        return dataclasses.replace(
            self,
            c_low=quarter(self.c_low),
            hw_low=tuple(quarter(n) for n in self.hw_low),
            c_high=quarter(self.c_high),
            hw_high=tuple(quarter(n) for n in self.hw_high),
        )


def _case_table(batch: int, coarse: tuple[int, int], fine: tuple[int, int]) -> dict[str, "Case"]:
    """HANet's five places in DeepLabv3+ ResNet-101 at output stride 8 (DESIGN §4): stage 3/4 and
    ASPP at `coarse` resolution (1/8 of the input), the decoder at `fine` (1/4)."""
    return {
        c.name: c
        for c in (
            Case("L1", "stage-3 out -> stage-4 out", batch, 1024, coarse, 2048, coarse),
            Case("L2", "stage-4 out -> ASPP concat", batch, 2048, coarse, 1280, coarse),
            Case("L3", "ASPP concat -> ASPP 1x1", batch, 1280, coarse, 256, coarse),
            Case("L4", "decoder in -> decoder block", batch, 304, fine, 256, fine),
            Case("L5", "decoder block -> logits", batch, 256, fine, 19, fine, pooling="max"),
        )
    }


# CPU: batch 2 of 512x1024 images; GPU: batch 4 of 768x768 training crops (paper §4.1).
CASES_BY_DEVICE: dict[str, dict[str, Case]] = {
    "cpu": _case_table(2, (64, 128), (128, 256)),
    "cuda": _case_table(4, (96, 96), (192, 192)),
}
CASES = CASES_BY_DEVICE["cpu"]

OPS = ("pool", "gate", "module")
PASSES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
INDEX_BYTES = 8  # int64 argmax saved by max pooling

# --------------------------------------------------------------------------------------------- backends
# The device each fused backend's tensors live on; reference and compile run anywhere.
FUSED_DEVICE = {"cpu": "cpu", "cuda": "cuda", "triton": "cuda"}
DEFAULT_BACKENDS = (*ops.BACKENDS, "compile")


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str  # as shown in the table
    ops_backend: str  # the hanet_fast backend it runs
    compiled: bool  # wrapped in torch.compile


def parse_backend(name: str) -> Backend:
    if name == "compile":
        return Backend(name, "reference", True)
    if name.startswith("compile-"):
        return Backend(name, name[len("compile-") :], True)
    return Backend(name, name, False)


def unavailable_reason(backend: Backend, device: torch.device) -> str | None:
    if backend.ops_backend not in ops.BACKENDS:
        return f"unknown backend {backend.ops_backend!r} (one of {ops.BACKENDS})"
    why = ops.available_backends()[backend.ops_backend]
    if why is not None:
        return why
    wanted = FUSED_DEVICE.get(backend.ops_backend)
    if wanted is not None and wanted != device.type:
        return f"runs on {wanted} tensors, this run is on {device.type}"
    return None


def maybe_compile(fn: Callable, backend: Backend) -> Callable:
    # dynamic=False: every case compiles for its exact shapes (no automatic dynamic shapes).
    return torch.compile(fn, dynamic=False) if backend.compiled else fn


# --------------------------------------------------------------------------------------------- suites
# A suite holds the inputs of one (case, op), shared by all backends, and builds per backend the
# two timed callables. Each callable returns its outputs (forward output, and the gradients for
# fwd+bwd); the timer drops them at once, so freeing them is inside the timed region.


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


class Suite:
    op: str = ""
    deterministic_train = True  # False when the forward draws random numbers (dropout)

    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype, memory_format: torch.memory_format):
        self.case, self.device, self.dtype, self.memory_format = case, device, dtype, memory_format

    def randn(self, shape, fmt: bool = True) -> torch.Tensor:
        t = torch.randn(shape, device=self.device, dtype=self.dtype)
        return t.contiguous(memory_format=self.memory_format) if fmt else t

    def bytes(self, pass_: str) -> int:
        raise NotImplementedError

    def shape_text(self) -> str:
        raise NotImplementedError

    def build(self, backend: Backend) -> dict[str, Callable[[], object]]:
        """{"fwd": callable, "fwd+bwd": callable} for ``backend``."""
        raise NotImplementedError


def pool_bytes(case: Case, elem: int, pass_: str) -> int:
    """Minimum bytes of height_pool on x_low: fwd reads x and writes z (+ the argmax for max);
    bwd reads grad_z (+ the argmax) and writes grad_x."""
    n, small = math.prod(case.low_shape), case.batch * case.c_low * case.rows
    index = INDEX_BYTES * small if case.pooling == "max" else 0
    fwd = elem * (n + small) + index
    bwd = elem * (small + n) + index
    return fwd if pass_ == "fwd" else fwd + bwd


def gate_bytes(case: Case, elem: int, pass_: str) -> int:
    """Minimum bytes of height_gate on x_high: fwd reads x and attn, writes y; bwd reads grad_y,
    x and attn, writes grad_x and grad_attn."""
    n, small = math.prod(case.high_shape), case.batch * case.c_high * case.rows
    fwd = elem * (2 * n + small)
    bwd = elem * (3 * n + 2 * small)
    return fwd if pass_ == "fwd" else fwd + bwd


class PoolSuite(Suite):
    op = "pool"

    def __init__(self, *args):
        super().__init__(*args)
        c = self.case
        self.x = _leaf(self.randn(c.low_shape))
        self.grad = self.randn((c.batch, c.c_low, c.rows), fmt=False)

    def bytes(self, pass_):
        return pool_bytes(self.case, self.x.element_size(), pass_)

    def shape_text(self):
        return f"x {list(self.case.low_shape)} {self.case.pooling}"

    def build(self, backend):
        if backend.ops_backend == "reference":
            fn = reference.height_pool
        else:
            def fn(x, rows, mode, _b=backend.ops_backend):
                return ops.height_pool(x, rows, mode, backend=_b)
        fn = maybe_compile(fn, backend)
        x, grad, rows, mode = self.x, self.grad, self.case.rows, self.case.pooling

        def fwd():
            return fn(x, rows, mode)

        def fwd_bwd():
            z = fn(x, rows, mode)
            return z, torch.autograd.grad(z, (x,), grad)

        return {"fwd": fwd, "fwd+bwd": fwd_bwd}


class GateSuite(Suite):
    op = "gate"

    def __init__(self, *args):
        super().__init__(*args)
        c = self.case
        self.x = _leaf(self.randn(c.high_shape))
        self.attn = _leaf(torch.sigmoid(self.randn((c.batch, c.c_high, c.rows), fmt=False)))
        self.grad = self.randn(c.high_shape)

    def bytes(self, pass_):
        return gate_bytes(self.case, self.x.element_size(), pass_)

    def shape_text(self):
        return f"x {list(self.case.high_shape)}"

    def build(self, backend):
        if backend.ops_backend == "reference":
            fn = reference.height_gate
        else:
            def fn(x, attn, _b=backend.ops_backend):
                return ops.height_gate(x, attn, backend=_b)
        fn = maybe_compile(fn, backend)
        x, attn, grad = self.x, self.attn, self.grad

        def fwd():
            return fn(x, attn)

        def fwd_bwd():
            y = fn(x, attn)
            return y, torch.autograd.grad(y, (x, attn), grad)

        return {"fwd": fwd, "fwd+bwd": fwd_bwd}


class ModuleSuite(Suite):
    """hanet_fast.nn.HANet in train mode (dropout, BN batch statistics, position jitter); the
    gradients of x_low, x_high and every parameter come from torch.autograd.grad, so nothing
    accumulates in .grad between repeats."""

    op = "module"
    deterministic_train = False

    def __init__(self, *args):
        super().__init__(*args)
        from hanet_fast.nn import HANet  # imported here: the op suites run without the module

        self.HANet = HANet
        c = self.case
        self.x_low = _leaf(self.randn(c.low_shape))
        self.x_high = _leaf(self.randn(c.high_shape))
        self.grad = self.randn(c.high_shape)
        torch.manual_seed(0)
        self.state = self._make("reference").state_dict()

    def _make(self, ops_backend: str):
        c = self.case
        module = self.HANet(c.c_low, c.c_high, rows=c.rows, pooling=c.pooling, backend=ops_backend)
        return module.to(device=self.device, dtype=self.dtype).train()

    def bytes(self, pass_):
        elem = self.x_low.element_size()
        return pool_bytes(self.case, elem, pass_) + gate_bytes(self.case, elem, pass_)

    def shape_text(self):
        c = self.case
        return f"{c.c_low}->{c.c_high}ch {c.pooling}"

    def build(self, backend):
        module = self._make(backend.ops_backend)
        module.load_state_dict(self.state)
        fn = maybe_compile(module, backend)
        x_low, x_high, grad = self.x_low, self.x_high, self.grad
        wrt = (x_low, x_high, *[p for p in module.parameters() if p.requires_grad])

        def fwd():
            return fn(x_low, x_high)

        def fwd_bwd():
            out = fn(x_low, x_high)
            return out, torch.autograd.grad(out, wrt, grad, allow_unused=True)

        return {"fwd": fwd, "fwd+bwd": fwd_bwd}


SUITES = {"pool": PoolSuite, "gate": GateSuite, "module": ModuleSuite}

# --------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call; the call's outputs are freed before the clock stops."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Warm every callable up, then time them round-robin ``repeats`` times; seconds per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return times


def flat_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat_tensors(v)]
    return []


def max_rel_error(actual, expected) -> float:
    """Worst ``max |a - e| / scale`` over every output and gradient (None gradients skipped), with
    ``scale`` the tensor's ``max |e|`` floored at 1% of the largest ``max |e|`` of the result: a
    gradient that is zero in exact arithmetic (a conv bias followed by BN) is only rounding noise."""
    pairs = [(a.detach().double(), e.detach().double()) for a, e in zip(flat_tensors(actual), flat_tensors(expected))]
    pairs = [(a, e) for a, e in pairs if e.numel()]
    if not pairs:
        return 0.0
    largest = max(e.abs().max().item() for _, e in pairs)
    worst = 0.0
    for a, e in pairs:
        scale = max(e.abs().max().item(), 1e-2 * largest)
        err = (a - e).abs().max().item()
        if not math.isfinite(err) and not (a.isnan() == e.isnan()).all().item():
            return math.inf
        err = 0.0 if math.isnan(err) else err  # NaN where the reference has NaN
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 2e-2)


def measure_copy(numel: int, dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    """Copy bandwidth on ``numel`` elements: ``dst.copy_(x)`` into a preallocated tensor (the
    roofline: memory traffic alone) and ``x.clone()`` (which also allocates its output, as an op
    does; on CPU, faulting in fresh pages can cost more than the copy itself)."""
    x = torch.randn(numel, device=device, dtype=dtype)
    dst = torch.empty_like(x)
    moved = 2 * numel * x.element_size()
    times = time_interleaved({"clone": x.clone, "copy_": lambda: dst.copy_(x)}, max(repeats, 5), 2, device)
    out = {"numel": numel, "bytes": moved, "dtype": str(dtype).replace("torch.", "")}
    for name, t in times.items():
        ms = statistics.median(t) * 1e3
        out[name] = {"ms": ms, "times_ms": [s * 1e3 for s in t], "gbps": moved / (ms * 1e-3) / 1e9}
    del x, dst
    return out


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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


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
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# --------------------------------------------------------------------------------------------- main


def parse_list(text: str, allowed, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if allowed is not None and s not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; choose from {list(allowed)}")
    return items


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Device memory one call allocates at its peak beyond what was allocated before it, in MB
    (10^6 bytes); None on CPU, where the caching allocator's statistics do not exist."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    synchronize(device)
    del result
    return (torch.cuda.max_memory_allocated(device) - before) / 1e6


def run_suite(suite: Suite, backends: list[Backend], args, device) -> tuple[list[dict], dict[str, str]]:
    """Time one (case, op) for every backend; returns the table rows and backends that failed."""
    built: dict[str, dict[str, Callable]] = {}
    first_call: dict[str, float] = {}
    checks: dict[str, float | None] = {}
    peak_mb: dict[str, float | None] = {}
    failed: dict[str, str] = {}
    expected = None
    for backend in backends:
        # The first fwd+bwd call compiles (for compile backends), checks the result against the
        # reference and warms up; its time is kept as first_call_s, out of the timings.
        try:
            fns = suite.build(backend)
            torch.manual_seed(1)
            start = time.perf_counter()
            result = fns["fwd+bwd"]()
            synchronize(device)
            first_call[backend.name] = time.perf_counter() - start
        except Exception as error:  # one broken backend must not end the run
            failed[backend.name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            log(f"  {suite.case.name} {suite.op}: backend {backend.name} failed: {failed[backend.name]}")
            continue
        peak_mb[backend.name] = peak_memory_mb(fns["fwd+bwd"], device)
        random = not suite.deterministic_train and backend.compiled  # compiled RNG differs from eager
        if backend.name == "reference":
            expected = result
            checks[backend.name] = 0.0
        elif expected is not None and not random:
            checks[backend.name] = max_rel_error(result, expected)
        else:
            checks[backend.name] = None
        del result
        built[backend.name] = fns
    del expected

    rows = []
    for pass_ in PASSES:
        times = time_interleaved({name: fns[pass_] for name, fns in built.items()}, args.repeats, args.warmup, device)
        moved = suite.bytes(pass_)
        ref_ms = statistics.median(times["reference"]) * 1e3 if "reference" in times else None
        for name, t in times.items():
            ms = statistics.median(t) * 1e3
            rows.append(
                {
                    "case": suite.case.name,
                    "op": suite.op,
                    "pass": pass_,
                    "shape": suite.shape_text(),
                    "backend": name,
                    "ms": ms,
                    "times_ms": [s * 1e3 for s in t],
                    "min_ms": min(t) * 1e3,
                    "ratio": ref_ms / ms if ref_ms else None,
                    "bytes": moved,
                    "gbps": moved / (ms * 1e-3) / 1e9,
                    "first_call_s": first_call[name],
                    "peak_mb": peak_mb[name],
                    "check_max_rel_err": checks[name],
                    "check_ok": None if checks[name] is None else checks[name] <= tolerance(suite.dtype),
                }
            )
    del built
    return rows, failed


def fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def fmt_check(row: dict) -> str:
    if row["backend"] == "reference":
        return "oracle"
    if row["check_max_rel_err"] is None:
        return "-"
    return "ok" if row["check_ok"] else f"FAIL {row['check_max_rel_err']:.1e}"


def markdown(report: dict) -> str:
    m, copy = report["machine"], report["copy"]
    cfg = report["config"]
    lines = [
        f"# hanet_fast benchmarks ({m['device']}, {'/'.join(cfg['dtypes'])}, {'/'.join(cfg['formats'])})",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, {m['cpu_capability']}"
        + (f"; GPU {m['gpu']}" if "gpu" in m else ""),
        f"- torch {m['torch']}, python {m['python']}, hanet_fast {m['hanet_fast']} @ {m['git_commit']}, {m['date']}",
        f"- load average (1/5/15 min) at start {m['loadavg_start']}, at end {m['loadavg_end']}",
        f"- repeats {cfg['repeats']} (median, interleaved across backends), warmup {cfg['warmup']} + 1 checked call"
        f"{', small sizes' if cfg['small'] else ''}",
        f"- copy roofline on {copy['bytes'] / 2**20 / 2:.0f} MiB ({copy['numel']} x {copy['dtype']}), "
        f"bytes = read + write: `dst.copy_(x)` {copy['copy_']['gbps']:.1f} GB/s "
        f"(**the 100% of '% copy'**), `x.clone()` {copy['clone']['gbps']:.1f} GB/s",
    ]
    for name, why in report["skipped"].items():
        lines.append(f"- skipped backend `{name}`: {why}")
    for key, why in report["failed"].items():
        lines.append(f"- FAILED `{key}`: {why}")
    lines += ["", "| case | where | x_low | x_high | rows | pooling |", "|---|---|---|---|---|---|"]
    for c in report["cases"].values():
        lines.append(
            f"| {c['name']} | {c['where']} | {c['low_shape']} | {c['high_shape']} | {c['rows']} | {c['pooling']} |"
        )
    lines += [
        "",
        "| case | op | pass | dtype | format | shape | MB moved | backend | ms | ref/this | GB/s | % copy | % clone "
        "| peak MB | check |",
        "|---|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else "-"
        lines.append(
            f"| {r['case']} | {r['op']} | {r['pass']} | {r['dtype']} | {r['format']} | {r['shape']} "
            f"| {r['bytes'] / 1e6:.0f} | {r['backend']} | {fmt_ms(r['ms'])} | {ratio} | {r['gbps']:.1f} "
            f"| {r['pct_copy']:.0f} | {r['pct_clone']:.0f} | {peak} | {fmt_check(r)} |"
        )
    lines += ["", f"total runtime: {report['total_s']:.0f} s"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {','.join(CASES)} (default all)")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {','.join(OPS)} (default all)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help="comma-separated: reference, cpu, cuda, triton, compile (= torch.compile of the reference), "
                        "compile-<backend> (default: %(default)s; those that cannot run are skipped)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--dtype", default="float32",
                   help=f"comma-separated, of {','.join(DTYPES)}: each is a separate sweep (default float32)")
    p.add_argument("--formats", default="nchw", help="comma-separated, of nchw,channels_last (default nchw)")
    p.add_argument("--channels-last", action="store_true", help="same as --formats channels_last")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per backend, median reported (default 7, >= 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per pass after the checked first call (default 1)")
    p.add_argument("--small", action="store_true", help="a quarter of every channel count, height and width")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--json", metavar="PATH", help="write the machine, config and every row as JSON")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    load_start = load_average()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    dtype_names = parse_list(args.dtype, DTYPES, "dtype")
    format_names = parse_list("channels_last" if args.channels_last else args.formats, FORMATS, "format")
    table = CASES_BY_DEVICE[device.type]
    cases = [table[n] for n in parse_list(args.cases, table, "case")]
    if args.small:
        cases = [c.small() for c in cases]
    op_names = parse_list(args.ops, OPS, "op")

    backends, skipped = [], {}
    for name in parse_list(args.backends, None, "backend"):
        backend = parse_backend(name)
        why = unavailable_reason(backend, device)
        if why is None:
            backends.append(backend)
        else:
            skipped[name] = why
            log(f"skipping backend {name}: {why}")
    if "module" in op_names:
        try:
            import hanet_fast.nn  # noqa: F401
        except Exception as error:
            op_names.remove("module")
            skipped["module suite"] = f"hanet_fast.nn is not importable ({type(error).__name__}: {error})"
            log(f"skipping the module suite: {skipped['module suite']}")

    config = {
        "cases": [c.name for c in cases], "ops": op_names, "backends": [b.name for b in backends],
        "device": str(device), "dtypes": dtype_names, "formats": format_names,
        "repeats": args.repeats, "warmup": args.warmup, "small": args.small,
    }
    log(f"benchmarking {config['cases']} x {op_names} x {config['backends']} on {device}")

    largest = max(math.prod(s) for c in cases for s in (c.low_shape, c.high_shape))
    copy = measure_copy(largest, torch.float32, device, args.repeats)
    log(f"copy roofline: clone {copy['clone']['gbps']:.1f} GB/s, copy_ {copy['copy_']['gbps']:.1f} GB/s")

    rows, failed = [], {}
    for dtype_name in dtype_names:
        for format_name in format_names:
            dtype, memory_format = DTYPES[dtype_name], FORMATS[format_name]
            for case in cases:
                for op in op_names:
                    torch.manual_seed(0)
                    suite = SUITES[op](case, device, dtype, memory_format)
                    t0 = time.perf_counter()
                    suite_rows, suite_failed = run_suite(suite, backends, args, device)
                    for row in suite_rows:
                        row["dtype"], row["format"] = dtype_name, format_name
                        row["pct_copy"] = 100 * row["gbps"] / copy["copy_"]["gbps"]
                        row["pct_clone"] = 100 * row["gbps"] / copy["clone"]["gbps"]
                    rows += suite_rows
                    failed.update({f"{case.name} {op} {dtype_name} {format_name} {b}": why for b, why in suite_failed.items()})
                    del suite
                    torch._dynamo.reset()  # compiled graphs of this case are not reused; keep caches small
                    gc.collect()
                    log(f"  {case.name} {op} {dtype_name} {format_name}: {time.perf_counter() - t0:.1f} s")

    machine = machine_info(device)
    machine["loadavg_start"], machine["loadavg_end"] = load_start, load_average()  # 1, 5, 15 min
    report = {
        "machine": machine,
        "config": config,
        "copy": copy,
        "roofline": "copy_",
        "skipped": skipped,
        "failed": failed,
        "cases": {
            c.name: {**dataclasses.asdict(c), "low_shape": list(c.low_shape), "high_shape": list(c.high_shape)}
            for c in cases
        },
        "rows": rows,
        "total_s": time.perf_counter() - started,
    }
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {args.json}")
    return 1 if failed or any(r["check_ok"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
