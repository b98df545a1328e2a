"""What the ``train-step`` and ``inference`` suites share: the model cases, the variants (no
HANet, fused kernels, reference backend, and the deployment variants: the fused network under
``torch.compile``, or exported to ONNX and run by onnxruntime) built with the same weights, the
inputs, and the loop that times a case's variants interleaved and turns the times into rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch

from benchmarks.common import fmt_ms, log, paired_overhead, parse_list, peak_memory_mb, time_interleaved, time_stats
from benchmarks.suites import Context
from benchmarks.suites.ops import FUSED_DEVICE
from hanet_fast._cli import DEFAULT_COMPILE_BACKEND, compile_model
from hanet_fast.models import HANetConfig, deeplabv3plus
from hanet_fast.ops import BACKENDS, available_backends

BACKBONES = ("resnet101_deepstem", "resnet50", "mobilenet_v2")
SHORT_NAMES = {"resnet101_deepstem": "R101", "resnet50": "R50", "mobilenet_v2": "MNv2"}
OUTPUT_STRIDES = (8, 16)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # the autocast dtype (None: no autocast)
FORMATS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
HANET_ON = (1, 1, 1, 1, 0)  # L1-L4: the paper's best (Table 3)
HANET_OFF = (0, 0, 0, 0, 0)
NUM_CLASSES = 19  # Cityscapes
# "none" is the network without HANet (the baseline of the overhead); "fused" is the device's
# first available fused backend (as backend="auto" picks it, regardless of HANET_FAST_BACKEND);
# "compile" is the fused network under torch.compile (nn.Module.compile); "onnxruntime" is the
# fused network exported to ONNX (python -m hanet_fast.export) and run by onnxruntime on the CPU
# (inference only); any other variant name is a hanet_fast backend used as is (e.g. "triton").
DEFAULT_VARIANTS = ("none", "fused", "reference")
COMPILED = "compile"
ONNXRUNTIME = "onnxruntime"
FUSED_CANDIDATES = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}
BASELINE = "none"


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """One network configuration; every variant of it runs on the same inputs."""

    backbone: str
    output_stride: int
    precision: str
    memory_format: str
    size: tuple[int, int]
    batch: int
    repeats: int
    warmup: int

    @property
    def name(self) -> str:
        return f"{SHORT_NAMES.get(self.backbone, self.backbone)} OS{self.output_stride} {self.precision}"


@dataclasses.dataclass(frozen=True)
class Plan:
    """A suite's per-device defaults: the sizes, the repeats (the first case, the headline, may
    get more) and the sweeps, in priority order (the budget skips from the end)."""

    size: tuple[int, int]
    batch: int
    precisions: tuple[str, ...]
    backbones: tuple[str, ...]
    output_strides: tuple[int, ...]
    repeats: int
    warmup: int
    headline_repeats: int | None = None
    extra_variants: tuple[str, ...] = ()  # run by default after DEFAULT_VARIANTS (see variant_backends)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--image-size: expected HxW such as 768x768, got {text!r}") from None
    if h < 32 or w < 32:
        raise SystemExit(f"--image-size: both sides must be >= 32 (the output stride goes to 32), got {text!r}")
    return h, w


def plan_cases(ctx: Context, plan: Plan, smoke: Plan) -> list[ModelCase]:
    """The cases of a suite from its plan and the command line, in run order: precision, then
    output stride, then backbone, so the plan's first combination (the headline) comes first."""
    args = ctx.args
    plan = smoke if args.smoke else plan
    backbones = parse_list(args.models, BACKBONES, "models") if args.models else plan.backbones
    strides = [int(s) for s in parse_list(args.output_strides, [str(s) for s in OUTPUT_STRIDES], "output-strides")] \
        if args.output_strides else plan.output_strides
    precisions = parse_list(args.precisions, PRECISIONS, "precisions") if args.precisions else plan.precisions
    formats = parse_list(args.formats, FORMATS, "formats") if args.formats else ["channels_last"]
    size = parse_size(args.image_size) if args.image_size else plan.size
    batch = args.batch or plan.batch
    warmup = plan.warmup if args.warmup is None else args.warmup
    cases = []
    for precision in precisions:
        for stride in strides:
            for backbone in backbones:
                for fmt in formats:
                    repeats = args.repeats or (plan.headline_repeats if not cases and plan.headline_repeats
                                               else plan.repeats)
                    cases.append(ModelCase(backbone, stride, precision, fmt, size, batch, repeats, warmup))
    return cases


def _onnxruntime_missing(device: torch.device) -> str | None:
    """Why the onnxruntime variant cannot run here, or None."""
    if device.type != "cpu":
        return f"it runs onnxruntime's CPU provider, this run is on {device.type}"
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e \".[export]\")"
    return None


def variant_backends(ctx: Context, extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    """``{variant: hanet_fast backend}`` (None for the network without HANet), checked up front so
    that a backend that cannot run here fails with its reason before any model is built.
    ``extra``: the plan's deployment variants, added to the defaults where they can run (the
    onnxruntime one needs the CPU and the ``export`` extra; the log says when it is left out)."""
    names = parse_list(ctx.args.variants, None, "variants") if ctx.args.variants else list(DEFAULT_VARIANTS)
    if not ctx.args.variants:
        for name in extra:
            why = _onnxruntime_missing(ctx.device) if name == ONNXRUNTIME else None
            if why is None:
                names.append(name)
            else:
                log(f"  variant {name} left out: {why}")
    if BASELINE not in names:
        raise SystemExit(f"--variants must include {BASELINE!r}: the overhead is measured against it")
    available = available_backends(ctx.device)
    out: dict[str, str | None] = {}
    for name in names:
        if name == BASELINE:
            out[name] = None
            continue
        if name in ("fused", COMPILED, ONNXRUNTIME):
            if name == ONNXRUNTIME and _onnxruntime_missing(ctx.device) is not None:
                raise SystemExit(f"--variants: {ONNXRUNTIME} cannot run here: {_onnxruntime_missing(ctx.device)}")
            candidates = FUSED_CANDIDATES[ctx.device.type]
            backend = next((b for b in candidates if available[b] is None), None)
            if backend is None:
                reasons = "; ".join(f"{b}: {available[b]}" for b in candidates)
                raise SystemExit(f"--variants: no fused backend runs on {ctx.device.type} here ({reasons})")
        else:
            backend = name
            if backend not in BACKENDS:
                raise SystemExit(f"--variants: unknown {name!r}; choose from none, fused, {COMPILED}, {ONNXRUNTIME}, "
                                 f"{', '.join(BACKENDS)}")
            why = available[backend]
            wanted = FUSED_DEVICE.get(backend)
            if why is None and wanted is not None and wanted != ctx.device.type:
                why = f"runs on {wanted} tensors, this run is on {ctx.device.type}"
            if why is not None:
                raise SystemExit(f"--variants: backend {backend!r} cannot run here: {why}")
        out[name] = backend
    return out


class OnnxRuntimeNetwork(torch.nn.Module):
    """A network exported to ONNX (:func:`hanet_fast.export.export_onnx`, full-image row
    positions baked in) and run by onnxruntime on the CPU, called like the network:
    ``(images, row_pos) -> .logits``. ``row_pos`` must be the full-image positions (as
    :func:`make_inputs` gives); onnxruntime gets as many threads as torch has."""

    def __init__(self, model: torch.nn.Module, case: ModelCase, path: str) -> None:
        super().__init__()
        import onnxruntime

        from hanet_fast.export import export_onnx

        export_onnx(model, path, case.size, batch=case.batch)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # Its threads would otherwise spin-wait after each run and slow down whichever variant
        # the interleaved timing runs next (measured: the no-HANet network 1.7x slower).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def forward(self, images: torch.Tensor, row_pos: torch.Tensor | None = None):
        (logits,) = self.session.run(None, {"images": images.contiguous().numpy()})
        return SimpleNamespace(logits=torch.from_numpy(logits))


def build_variants(case: ModelCase, backends: dict[str, str | None], device: torch.device,
                   compile_backend: str = DEFAULT_COMPILE_BACKEND) -> dict[str, torch.nn.Module]:
    """One network per variant; all start from the same weights (the HANet variants share their
    HANet weights, the baseline takes the rest). The ``compile`` variant is compiled in place
    with ``compile_backend``, as ``--compile`` does in the CLIs; the ``onnxruntime`` one is
    exported to a temporary ONNX file, loaded and the file deleted."""
    models: dict[str, torch.nn.Module] = {}
    state = None
    for name, backend in backends.items():
        torch.manual_seed(0)
        model = deeplabv3plus(
            case.backbone, output_stride=case.output_stride, num_classes=NUM_CLASSES,
            hanet_layers=HANET_OFF if backend is None else HANET_ON,
            hanet=HANetConfig(backend=backend or "auto"), pretrained_backbone=None,
        )
        if state is None:
            state = model.state_dict()
        else:
            own = model.state_dict()
            model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        model = model.to(device=device, memory_format=FORMATS[case.memory_format])
        if name == COMPILED:
            compile_model(model, compile_backend)
        elif name == ONNXRUNTIME:
            with tempfile.TemporaryDirectory(prefix="hanet_fast_bench_") as tmp:
                model = OnnxRuntimeNetwork(model, case, os.path.join(tmp, "model.onnx"))
        models[name] = model
    return models


def make_inputs(case: ModelCase, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images (in the case's memory format), full-image row positions and random labels."""
    h, w = case.size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(case.batch, 3, h, w, generator=generator)
    images = images.to(device).contiguous(memory_format=FORMATS[case.memory_format])
    row_pos = (torch.arange(h, dtype=torch.float32) / h).expand(case.batch, h).to(device)
    labels = torch.randint(0, NUM_CLASSES, (case.batch, h, w), generator=generator).to(device)
    return images, row_pos, labels


def autocast(case: ModelCase, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to the case's precision; no autocast at all for fp32."""
    dtype = PRECISIONS[case.precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def run_cases(
    ctx: Context,
    suite: str,
    cases: list[ModelCase],
    make_step: Callable[[ModelCase, torch.nn.Module, tuple], Callable[[], object]],
    first_value: Callable[[Callable[[], object]], float | None],
    extra_variants: tuple[str, ...] = (),
) -> dict:
    """Time every case's variants interleaved; one row per (case, variant); ``extra_variants``
    as :func:`variant_backends` takes them.

    ``make_step(case, model, inputs)`` returns the callable timed (a training step or a forward);
    ``first_value(step)`` makes the first, untimed call and returns a number to compare across
    variants (the loss of the first training step), or None."""
    device = ctx.device
    backends = variant_backends(ctx, extra_variants)
    if device.type == "cuda":
        # cuDNN picks each convolution's fastest algorithm during the warm-up steps.
        torch.backends.cudnn.benchmark = True
    rows: list[dict] = []
    failed: dict[str, str] = {}
    longest = 0.0
    for case in cases:
        what = f"{suite} {case.name} {case.memory_format}"
        if not ctx.budget.allows(what, longest):
            continue
        t0 = time.perf_counter()
        try:
            rows += run_case(case, backends, device, make_step, first_value, ctx.args.compile_backend)
        except Exception as error:  # one failing case (e.g. out of memory) must not end the run
            failed[what] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            log(f"  {what} failed: {failed[what]}")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        longest = max(longest, time.perf_counter() - t0)
        log(f"  {what}: {time.perf_counter() - t0:.1f} s (run elapsed {ctx.budget.elapsed():.0f} s)")
    return {
        "config": {"variants": dict(backends), "hanet_layers": list(HANET_ON),
                   "cudnn_benchmark": device.type == "cuda", "compile_backend": ctx.args.compile_backend},
        "cases": [dataclasses.asdict(c) for c in cases],
        "failed": failed,
        "rows": rows,
    }


def run_case(
    case: ModelCase,
    backends: dict[str, str | None],
    device: torch.device,
    make_step: Callable[[ModelCase, torch.nn.Module, tuple], Callable[[], object]],
    first_value: Callable[[Callable[[], object]], float | None],
    compile_backend: str = DEFAULT_COMPILE_BACKEND,
) -> list[dict]:
    """The rows of one case: build its variants, make the first calls, time them interleaved."""
    # Progress on stderr at every stage: building (an ONNX export) and first calls (torch.compile)
    # can each take minutes on a CPU.
    log(f"    {case.name}: building the variants {', '.join(backends)}")
    inputs = make_inputs(case, device)
    models = build_variants(case, backends, device, compile_backend)
    steps = {name: make_step(case, model, inputs) for name, model in models.items()}
    first: dict[str, float | None] = {}
    first_s: dict[str, float] = {}
    for name, step in steps.items():
        torch.manual_seed(1)  # the same dropout / jitter draws in every HANet variant
        log(f"    {case.name} {name}: first call" + (" (compiling)" if name == COMPILED else ""))
        t0 = time.perf_counter()
        first[name] = first_value(step)
        first_s[name] = time.perf_counter() - t0
        log(f"    {case.name} {name}: first call done in {first_s[name]:.1f} s")
    log(f"    {case.name}: timing {len(steps)} variants, {case.repeats} round(s)")
    times = time_interleaved(steps, case.repeats, case.warmup, device)
    peak = {name: peak_memory_mb(step, device) for name, step in steps.items()}
    rows = []
    for name, t in times.items():
        stats = time_stats(t)
        row = {
            "case": case.name, "backbone": case.backbone, "output_stride": case.output_stride,
            "precision": case.precision, "format": case.memory_format, "size": list(case.size),
            "batch": case.batch, "variant": name, "backend": backends[name] or "-",
            **stats, "images_per_s": case.batch / (stats["ms"] / 1e3),
            "peak_mb": peak[name], "first_call_s": first_s[name], "first_value": first[name],
            "repeats": case.repeats, "warmup": case.warmup,
        }
        if name != BASELINE:
            row.update(paired_overhead(t, times[BASELINE]))
        rows.append(row)
    summary = ", ".join(f"{r['variant']} {fmt_ms(r['ms'])} ms" for r in rows)
    log(f"    {summary}")
    return rows


def fmt_overhead(row: dict) -> str:
    if "overhead_pct" not in row:
        return "-"
    return f"{row['overhead_pct']:+.1f} [{row['overhead_q1_pct']:+.1f}, {row['overhead_q3_pct']:+.1f}]"


def fmt_peak(row: dict) -> str:
    return "-" if row.get("peak_mb") is None else f"{row['peak_mb']:.0f}"


def variants_markdown(result: dict, size_header: str, first_value: bool) -> str:
    """The table of every variant of a model suite's cases; ``first_value`` adds the first
    call's value (the train step's loss, equal across HANet variants)."""
    header = (f"| case | format | {size_header} x batch | variant | backend | ms (median) | ms IQR | images/s "
              "| HANet overhead % [IQR] | peak MB |" + (" first loss |" if first_value else ""))
    lines = [header, "|---|---|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if first_value else "")]
    for r in result["rows"]:
        line = (f"| {r['case']} | {r['format']} | {r['size'][0]}x{r['size'][1]} x {r['batch']} | {r['variant']} "
                f"| {r['backend']} | {fmt_ms(r['ms'])} | {fmt_ms(r['q1_ms'])}-{fmt_ms(r['q3_ms'])} "
                f"| {r['images_per_s']:.2f} | {fmt_overhead(r)} | {fmt_peak(r)} |")
        lines.append(line + (f" {r['first_value']:.4f} |" if first_value else ""))
    return "\n".join(lines)
