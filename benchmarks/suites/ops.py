"""Suites ``ops`` (``height_pool``, ``height_gate``) and ``module`` (``hanet_fast.nn.HANet``):
every backend side by side on HANet's five places in DeepLabv3+ ResNet-101 OS8 (L1-L5).

Each (case, op, pass) is timed for every selected backend with the repeats interleaved across
backends, compared with the reference backend (``reference_ms / backend_ms``) and with a copy
roofline measured in the same run (``dst.copy_(x)`` of the largest tensor of the run into a
preallocated ``dst``). Backends: ``reference`` / ``cpu`` / ``cuda`` / ``triton`` run the public
ops (the reference functions are imported from the package, never copied); ``compile`` is
``torch.compile`` of the reference (function or module); ``compile-<name>`` is ``torch.compile``
of the public op or module with ``backend=<name>``. Backends that cannot run on the chosen
device are skipped, with the reason recorded. See benchmarks/README.md for the columns and how
bytes are counted.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from copy import copy as shallow_copy
from typing import Callable

import torch

from benchmarks.common import fmt_ms, log, parse_list, synchronize, time_interleaved
from benchmarks.suites import Context
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
PASSES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
INDEX_BYTES = 8  # int64 argmax saved by max pooling

# --------------------------------------------------------------------------------------------- backends
# The device each fused backend's tensors live on; reference and compile run anywhere.
FUSED_DEVICE = {"cpu": "cpu", "cuda": "cuda", "triton": "cuda"}


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
    why = ops.available_backends(device)[backend.ops_backend]
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

    def in_float64(self) -> "Suite":
        """The same suite with every tensor (inputs, module state) in float64: the oracle that
        low-precision results are checked against."""
        twin = shallow_copy(self)
        twin.dtype = torch.float64
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                converted = value.detach().double()
                setattr(twin, name, _leaf(converted) if value.requires_grad else converted)
            elif isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):  # a state dict
                setattr(twin, name, {k: v.double() if v.is_floating_point() else v for k, v in value.items()})
        return twin


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


def flat_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat_tensors(v)]
    return []


def tensor_errors(actual, expected) -> list[float]:
    """Per output and gradient (None gradients skipped), ``max |a - e| / scale``, with
    ``scale`` the tensor's ``max |e|`` floored at 1% of the largest ``max |e|`` of the result: a
    gradient that is zero in exact arithmetic (a conv bias followed by BN) is only rounding noise."""
    pairs = [(a.detach().double(), e.detach().double()) for a, e in zip(flat_tensors(actual), flat_tensors(expected))]
    pairs = [(a, e) for a, e in pairs if e.numel()]
    if not pairs:
        return []
    largest = max(e.abs().max().item() for _, e in pairs)
    oracle = flat_tensors(expected)[0].dtype == torch.float64 and flat_tensors(actual)[0].dtype != torch.float64
    errors = []
    for a, e in pairs:
        if oracle and e.abs().max().item() <= 1e-9 * largest:
            errors.append(0.0)  # zero in exact arithmetic (float64 shows ~1e-15): the rest is rounding noise
            continue
        scale = max(e.abs().max().item(), 1e-2 * largest)
        err = (a - e).abs().max().item()
        if not math.isfinite(err) and not (a.isnan() == e.isnan()).all().item():
            err = math.inf
        err = 0.0 if math.isnan(err) else err  # NaN where the reference has NaN
        errors.append(err / scale if scale > 0 else err)
    return errors


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 2e-2)


LOW_PRECISION = (torch.float16, torch.bfloat16)
# In float16/bfloat16 every backend is checked against a float64 run of the reference on the same
# inputs, tensor by tensor, and passes where its error is within the tolerance or no more than
# this many times the reference's own error on that tensor: train-mode module gradients (BN batch
# statistics, sigmoid, dropout) in bfloat16 are far from float64 for the reference itself, so
# comparing two bfloat16 runs with each other would measure rounding, not correctness.
LOW_PRECISION_SLACK = 1.5


def check_passes(errors: list[float], reference_errors: list[float] | None, dtype: torch.dtype) -> bool:
    """Whether a backend's per-tensor check ``errors`` pass (``reference_errors``: the reference's
    own errors against the float64 oracle, for low-precision dtypes)."""
    limit = tolerance(dtype)
    if dtype in LOW_PRECISION and reference_errors is not None:
        return all(e <= max(limit, LOW_PRECISION_SLACK * r) for e, r in zip(errors, reference_errors))
    return max(errors, default=0.0) <= limit


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
    return out


def peak_call_mb(fn: Callable[[], object], device: torch.device) -> float | None:
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


def run_suite(suite: Suite, backends: list[Backend], repeats: int, warmup: int,
              device: torch.device) -> tuple[list[dict], dict[str, str]]:
    """Time one (case, op) for every backend; returns the table rows and backends that failed."""
    built: dict[str, dict[str, Callable]] = {}
    first_call: dict[str, float] = {}
    errors: dict[str, list[float] | None] = {}
    peak_mb: dict[str, float | None] = {}
    failed: dict[str, str] = {}
    expected = None
    oracle = suite.dtype in LOW_PRECISION
    if oracle and any(b.name == "reference" for b in backends):
        oracle_fns = suite.in_float64().build(parse_backend("reference"))
        torch.manual_seed(1)  # after building, as for the backends below: the same dropout and jitter draws
        expected = oracle_fns["fwd+bwd"]()
        del oracle_fns
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
        peak_mb[backend.name] = peak_call_mb(fns["fwd+bwd"], device)
        random = not suite.deterministic_train and backend.compiled  # compiled RNG differs from eager
        if backend.name == "reference" and not oracle:
            expected = result
            errors[backend.name] = []
        elif expected is not None and not random:
            errors[backend.name] = tensor_errors(result, expected)
        else:
            errors[backend.name] = None
        del result
        built[backend.name] = fns
    del expected

    rows = []
    for pass_ in PASSES:
        times = time_interleaved({name: fns[pass_] for name, fns in built.items()}, repeats, warmup, device)
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
                    "check_max_rel_err": None if errors[name] is None else max(errors[name], default=0.0),
                    "check_ok": None if errors[name] is None else check_passes(errors[name], errors.get("reference"),
                                                                               suite.dtype),
                }
            )
    del built
    return rows, failed


# --------------------------------------------------------------------------------------------- suite entry

# Per-device defaults of the suite's flags: on CPU the recorded run's sweep; on a GPU the
# training step's dtypes and memory format, without torch.compile (a fresh compile per case
# would not fit the 8-minute run). --smoke runs two cases once, without torch.compile.
DEFAULTS_BY_DEVICE = {
    "cpu": {"backends": "reference,cpu,compile", "dtype": "float32", "formats": "nchw",
            "smoke_backends": "reference,cpu"},
    "cuda": {"backends": "reference,cuda,triton", "dtype": "float32,bfloat16", "formats": "channels_last",
             "smoke_backends": "reference,cuda,triton"},
}
DEFAULT_REPEATS = 7
SMOKE = {"cases": "L1,L5", "repeats": 1}


def select_backends(names: list[str], device: torch.device) -> tuple[list[Backend], dict[str, str]]:
    backends, skipped = [], {}
    for name in names:
        backend = parse_backend(name)
        why = unavailable_reason(backend, device)
        if why is None:
            backends.append(backend)
        else:
            skipped[name] = why
    return backends, skipped


def copy_roofline(ctx: Context, cases: list[Case]) -> dict:
    """Measured once per run (both suites compare with the same roofline), on the largest tensor."""
    if "copy" not in ctx.cache:
        largest = max(math.prod(s) for c in cases for s in (c.low_shape, c.high_shape))
        ctx.cache["copy"] = measure_copy(largest, torch.float32, ctx.device, ctx.args.repeats or DEFAULT_REPEATS)
        copy = ctx.cache["copy"]
        log(f"copy roofline: clone {copy['clone']['gbps']:.1f} GB/s, copy_ {copy['copy_']['gbps']:.1f} GB/s")
    return ctx.cache["copy"]


def run(ctx: Context, op_names: tuple[str, ...]) -> dict:
    """One of the two suites: ``op_names`` is ("pool", "gate") for ``ops``, ("module",) for ``module``."""
    args, device = ctx.args, ctx.device
    defaults = DEFAULTS_BY_DEVICE[device.type]
    if args.smoke:
        defaults = {**defaults, **SMOKE, "backends": defaults["smoke_backends"]}
    table = CASES_BY_DEVICE[device.type]
    cases = [table[n] for n in parse_list(args.cases or defaults.get("cases", ",".join(table)), table, "case")]
    if args.small or args.smoke:
        cases = [c.small() for c in cases]
    dtype_names = parse_list(args.dtype or defaults["dtype"], DTYPES, "dtype")
    format_names = parse_list(args.formats or defaults["formats"], FORMATS, "format")
    backends, skipped = select_backends(parse_list(args.backends or defaults["backends"], None, "backend"), device)
    for name, why in skipped.items():
        log(f"skipping backend {name}: {why}")
    repeats = args.repeats or defaults.get("repeats", DEFAULT_REPEATS)
    warmup = 1 if args.warmup is None else args.warmup
    copy = copy_roofline(ctx, cases)

    rows, failed, predicted = [], {}, 0.0
    for dtype_name in dtype_names:
        for format_name in format_names:
            dtype, memory_format = DTYPES[dtype_name], FORMATS[format_name]
            for case in cases:
                for op in op_names:
                    what = f"{op} {case.name} {dtype_name} {format_name}"
                    if not ctx.budget.allows(what, predicted):
                        continue
                    torch.manual_seed(0)
                    suite = SUITES[op](case, device, dtype, memory_format)
                    t0 = time.perf_counter()
                    suite_rows, suite_failed = run_suite(suite, backends, repeats, warmup, device)
                    for row in suite_rows:
                        row["dtype"], row["format"] = dtype_name, format_name
                        row["pct_copy"] = 100 * row["gbps"] / copy["copy_"]["gbps"]
                        row["pct_clone"] = 100 * row["gbps"] / copy["clone"]["gbps"]
                    rows += suite_rows
                    failed.update({f"{what} {b}": why for b, why in suite_failed.items()})
                    del suite
                    torch._dynamo.reset()  # compiled graphs of this case are not reused; keep caches small
                    gc.collect()
                    predicted = time.perf_counter() - t0
                    log(f"  {what}: {predicted:.1f} s")
    return {
        "config": {"cases": [c.name for c in cases], "ops": list(op_names), "backends": [b.name for b in backends],
                   "dtypes": dtype_names, "formats": format_names, "repeats": repeats, "warmup": warmup,
                   "small": bool(args.small or args.smoke)},
        "cases": {c.name: {**dataclasses.asdict(c), "low_shape": list(c.low_shape), "high_shape": list(c.high_shape)}
                  for c in cases},
        "copy": copy,
        "roofline": "copy_",
        "skipped": skipped,
        "failed": failed,
        "rows": rows,
    }


def fmt_check(row: dict) -> str:
    if row["backend"] == "reference":
        # In float16/bfloat16 the oracle is a float64 run: the reference's own error is shown.
        return "oracle" if not row["check_max_rel_err"] else f"oracle, {row['check_max_rel_err']:.1e} off fp64"
    if row["check_max_rel_err"] is None:
        return "-"
    return "ok" if row["check_ok"] else f"FAIL {row['check_max_rel_err']:.1e}"


def markdown(result: dict) -> str:
    copy, cfg = result["copy"], result["config"]
    lines = [
        f"- repeats {cfg['repeats']} (median, interleaved across backends), warmup {cfg['warmup']} + 1 checked call"
        f"{', small sizes (a quarter of C, H, W)' if cfg['small'] else ''}; dtypes {', '.join(cfg['dtypes'])}; "
        f"formats {', '.join(cfg['formats'])}",
        f"- copy roofline on {copy['bytes'] / 2**20 / 2:.0f} MiB ({copy['numel']} x {copy['dtype']}), "
        f"bytes = read + write: `dst.copy_(x)` {copy['copy_']['gbps']:.1f} GB/s "
        f"(**the 100% of '% copy'**), `x.clone()` {copy['clone']['gbps']:.1f} GB/s",
    ]
    lines += [f"- skipped backend `{name}`: {why}" for name, why in result["skipped"].items()]
    lines += [f"- FAILED `{key}`: {why}" for key, why in result["failed"].items()]
    lines += ["", "| case | where | x_low | x_high | rows | pooling |", "|---|---|---|---|---|---|"]
    for c in result["cases"].values():
        lines.append(f"| {c['name']} | {c['where']} | {c['low_shape']} | {c['high_shape']} | {c['rows']} | {c['pooling']} |")
    lines += [
        "",
        "| case | op | pass | dtype | format | shape | MB moved | backend | ms | ref/this | GB/s | % copy | % clone "
        "| peak MB | check |",
        "|---|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else "-"
        lines.append(
            f"| {r['case']} | {r['op']} | {r['pass']} | {r['dtype']} | {r['format']} | {r['shape']} "
            f"| {r['bytes'] / 1e6:.0f} | {r['backend']} | {fmt_ms(r['ms'])} | {ratio} | {r['gbps']:.1f} "
            f"| {r['pct_copy']:.0f} | {r['pct_clone']:.0f} | {peak} | {fmt_check(r)} |"
        )
    return "\n".join(lines)
