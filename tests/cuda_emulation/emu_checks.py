"""Builds the CPU emulation of the CUDA kernels and checks every operator against the reference.

Why: without a GPU this is the only execution of kernels/*.cuh and csrc/cuda/*.cu. Run by
tests/test_cuda_emulation.py in a subprocess (the sanitized library needs the ASan runtime
preloaded), or by hand:

    LD_PRELOAD="$(c++ -print-file-name=libasan.so) $(c++ -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0 python tests/cuda_emulation/emu_checks.py --build-dir build/cuda_emulation/san [--full]

What is checked, per emulated SM count (which changes the tilings: from one to hundreds of
segments per row):
  - each operator vs hanet_fast.ops.reference (forward and autograd gradients; half and
    bfloat16 against a float64 reference, as tests/test_ops.py does),
  - max pooling's indices, values and backward bit for bit vs the CPU backend,
  - layouts: NCHW, NHWC, both misaligned by one element (the scalar paths), non-dense strides,
    and for the gate backward an expanded and a channels-last grad_y,
  - determinism (two runs bit-identical), output memory formats, and that the attn-only gate
    backward equals the full one,
  - NaN / +-inf propagation and argmax, ties and signed zeros (first index wins), -inf planes,
  - emulation errors: uneven shuffles across a warp's lanes, bad shuffle masks, bad grids.
ASan/UBSan abort the process on out-of-bounds, misaligned or undefined accesses.
Exits 1 on any failure, printing each one.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

import torch  # noqa: E402

import emu_build as build  # noqa: E402
import op_cases  # noqa: E402
import emu_sources as sources  # noqa: E402
from hanet_fast.ops import reference  # noqa: E402

# Shapes beyond op_cases.SHAPES (B, C, H, W, rows): W past one 4096-wide tile, many channels
# with few rows, C not a multiple of the NHWC vector width.
LARGE_W, WIDE = (1, 6, 23, 515, 16), (1, 8, 3, 4096 + 8, 2)
EXTRA_SHAPES = [WIDE, (2, 16, 6, 40, 3), (1, 24, 4, 2, 9)]
ALL_SHAPES = [p.values[0] for p in op_cases.SHAPES] + EXTRA_SHAPES
DTYPES = [p.values for p in op_cases.DTYPES]  # (dtype, atol, rtol)

LAYOUTS = ("nchw", "nhwc", "nchw_misaligned", "nhwc_misaligned", "strided")
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
SMALL_SHAPES = [s for s in ALL_SHAPES if s not in (LARGE_W, WIDE)]

# Quick configuration (the pytest run, ~2 minutes on 2 cores; the large shapes cost 10-30 s
# each at -O1 + sanitizers, the small ones ~1 s): every dtype x every small shape x every layout
# at 2 SMs; the extreme tilings (1 SM: few blocks, long grid-stride loops; 132 SMs: many
# segments per row) on two dtypes each; the large shapes once per tiling, on fewer layouts.
# Entries: (emulated SM count, dtypes, shapes, layouts).
QUICK_PLAN = [
    (2, [F32, F64, F16, BF16], SMALL_SHAPES, LAYOUTS),
    (2, [F32], [LARGE_W], LAYOUTS),
    (2, [F16], [WIDE], ("nhwc", "nchw_misaligned")),
    (1, [F32, BF16], SMALL_SHAPES, LAYOUTS),
    (1, [BF16], [WIDE], ("nchw", "nhwc_misaligned", "strided")),
    (132, [F16, F64], SMALL_SHAPES, LAYOUTS),
    (132, [F32], [LARGE_W], ("nchw", "nhwc_misaligned")),
]
FULL_PLAN = [(sm, [F32, F64, F16, BF16], ALL_SHAPES, LAYOUTS) for sm in (1, 2, 64, 132)]


class Checker:
    """Counts checks and failures; every failure is printed with what was checked."""

    def __init__(self) -> None:
        self.checks = 0
        self.failures = 0
        self.called: set[str] = set()

    def op(self, name: str):
        """torch.ops.hanet_emu.<name>, recording that the test exercised it."""
        self.called.add(name)
        return getattr(torch.ops.hanet_emu, name)

    def _fail(self, what: str, detail: str) -> None:
        self.failures += 1
        print(f"FAIL {what}: {detail}", flush=True)

    def close(self, actual, expected, atol, rtol, what, scale=1.0) -> None:
        self.checks += 1
        try:
            torch.testing.assert_close(
                actual.double(), expected.double(), atol=atol * scale, rtol=rtol, equal_nan=True
            )
        except AssertionError as e:
            self._fail(what, " | ".join(str(e).splitlines()[:4]))

    def equal(self, actual, expected, what) -> None:
        self.checks += 1
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            self._fail(what, f"{actual.dtype} {tuple(actual.shape)} vs {expected.dtype} {tuple(expected.shape)}")
        elif not torch.equal(actual, expected) and not (
            actual.is_floating_point() and torch.equal(actual.isnan(), expected.isnan())
            and torch.equal(actual.nan_to_num(), expected.nan_to_num())
        ):
            self._fail(what, f"not bit-equal, max diff {(actual.double() - expected.double()).abs().max()}")

    def true(self, cond: bool, what: str) -> None:
        self.checks += 1
        if not cond:
            self._fail(what, "condition false")


def oracle(dtype: torch.dtype) -> torch.dtype:
    return op_cases.oracle_dtype(dtype)


def layouts(x: torch.Tensor):
    """x in each memory layout the launchers distinguish."""
    yield "nchw", x.contiguous()
    yield "nhwc", x.contiguous(memory_format=torch.channels_last)
    # Storage offset of one element: no 16-byte alignment, so the scalar paths.
    buf = torch.empty(x.numel() + 1, dtype=x.dtype)
    yield "nchw_misaligned", buf[1:].view(x.shape).copy_(x)
    buf = torch.empty(x.numel() + 1, dtype=x.dtype)
    B, C, H, W = x.shape
    yield "nhwc_misaligned", buf[1:].view(B, H, W, C).copy_(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    yield "strided", x.transpose(2, 3).contiguous().transpose(2, 3)


def check_shape(ck: Checker, dtype, atol, rtol, shape, sm: int, layout_names=LAYOUTS) -> None:
    """Every operator on one shape and dtype, in the named layouts."""
    B, C, H, W, R = shape
    cpu = torch.ops.hanet_fast
    x0 = torch.randn(B, C, H, W, dtype=torch.float64).to(dtype)
    if dtype in (torch.float16, torch.bfloat16) and W > 1:  # ties within a row for max pooling
        x0[..., ::3] = x0[..., :1].expand_as(x0[..., ::3])
    attn = torch.rand(B, C, R, dtype=torch.float64).to(dtype)
    g_z = torch.randn(B, C, R, dtype=torch.float64).to(dtype)
    g_y = torch.randn(B, C, H, W, dtype=torch.float64).to(dtype)
    for lname, x in layouts(x0):
        if lname not in layout_names:
            continue
        tag = f"sm={sm} {dtype} {shape} {lname}"
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format
        xr = x.detach().to(oracle(dtype)).requires_grad_()

        z = ck.op("height_pool_avg")(x, R)
        zr = reference.height_pool(xr, R, "avg")
        ck.close(z, zr, atol, rtol, "height_pool_avg " + tag)
        ck.equal(ck.op("height_pool_avg")(x, R), z, "height_pool_avg determinism " + tag)
        gx = ck.op("height_pool_avg_backward")(g_z, H, W, cl)
        (gxr,) = torch.autograd.grad(zr, xr, g_z.to(zr.dtype))
        ck.true(gx.is_contiguous(memory_format=fmt), "height_pool_avg_backward memory format " + tag)
        ck.close(gx, gxr, atol, rtol, "height_pool_avg_backward " + tag)

        zm, im = ck.op("height_pool_max")(x, R)
        zmc, imc = cpu.height_pool_max(x, R)
        zmr = reference.height_pool(xr, R, "max")
        ck.close(zm, zmr, atol, rtol, "height_pool_max " + tag)
        ck.equal(im, imc, "height_pool_max indices vs cpu " + tag)
        ck.equal(zm, zmc, "height_pool_max values vs cpu " + tag)
        gxm = ck.op("height_pool_max_backward")(g_z, im, H, W, cl)
        ck.equal(gxm, cpu.height_pool_max_backward(g_z, imc, H, W, cl), "height_pool_max_backward vs cpu " + tag)
        (gxmr,) = torch.autograd.grad(zmr, xr, g_z.to(zmr.dtype))
        ck.close(gxm, gxmr, atol, rtol, "height_pool_max_backward " + tag)

        ar = attn.to(oracle(dtype)).requires_grad_()
        y = ck.op("height_gate")(x, attn)
        yr = reference.height_gate(xr, ar)
        ck.true(y.is_contiguous(memory_format=fmt), "height_gate memory format " + tag)
        ck.close(y, yr, atol, rtol, "height_gate " + tag)
        grads = (
            ("dense", g_y),
            ("expanded", torch.ones((), dtype=dtype).expand(B, C, H, W)),
            ("channels_last", g_y.contiguous(memory_format=torch.channels_last)),
        )
        for gname, gy in grads:
            gtag = f"{gname} grad_y {tag}"
            gxg, gag = ck.op("height_gate_backward")(gy, x, attn)
            gxr_, gar_ = torch.autograd.grad(yr, (xr, ar), gy.to(yr.dtype), retain_graph=True)
            ck.true(gxg.is_contiguous(memory_format=fmt), "height_gate_backward memory format " + gtag)
            ck.close(gxg, gxr_, atol, rtol, "height_gate_backward grad_x " + gtag)
            terms = W * max(1, H // R)  # grad_attn sums this many products
            ck.close(gag, gar_, atol, rtol, "height_gate_backward grad_attn " + gtag, scale=terms**0.5)
            ck.equal(ck.op("height_gate_attn_backward")(gy, x, R), gag, "height_gate_attn_backward == full " + gtag)
            gxg2, gag2 = ck.op("height_gate_backward")(gy, x, attn)
            ck.equal(gxg2, gxg, "height_gate_backward grad_x determinism " + gtag)
            ck.equal(gag2, gag, "height_gate_backward grad_attn determinism " + gtag)


def check_special_values(ck: Checker) -> None:
    """NaN/inf propagation, first-index ties, signed zeros, all -inf planes (vs the CPU backend)."""
    cpu = torch.ops.hanet_fast
    for dtype, fmt in itertools.product((torch.float32, torch.bfloat16), (torch.contiguous_format, torch.channels_last)):
        tag = f"{dtype} {fmt}"
        x = torch.randn(2, 3, 11, 7)
        x[0, 0, 2, 3] = float("nan")
        x[0, 1, 5, 0] = float("inf")
        x[1, 2, 9, 6] = float("-inf")
        x[1, 0, 0, :] = float("-inf")
        x[1, 1, 3, 2] = float("nan")
        x[1, 1, 4, 5] = float("nan")
        x = x.to(dtype).contiguous(memory_format=fmt)
        for R in (1, 4, 11, 13):
            zm, im = ck.op("height_pool_max")(x, R)
            zc, ic = cpu.height_pool_max(x, R)
            ck.equal(im, ic, f"NaN/inf max indices R={R} {tag}")
            ck.equal(zm, zc, f"NaN/inf max values R={R} {tag}")
            ck.close(ck.op("height_pool_avg")(x, R), cpu.height_pool_avg(x, R), 1e-2, 1e-2, f"NaN/inf avg R={R} {tag}")
        # As tests/test_ops.py::test_max_pool_ties_and_signed_zeros_pick_the_first.
        xt = torch.zeros(1, 2, 3, 4)
        xt[0, 0, :, 0] = -0.0
        xt[0, 1] = torch.tensor([[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 3.0, 3.0], [-1.0, 3.0, 3.0, 3.0]])
        xt = xt.to(dtype).contiguous(memory_format=fmt)
        for R in (1, 2, 3, 5):
            zt, it = ck.op("height_pool_max")(xt, R)
            zc, ic = cpu.height_pool_max(xt, R)
            ck.equal(it, ic, f"ties indices R={R} {tag}")
            ck.equal(zt.signbit(), zc.signbit(), f"signed zeros R={R} {tag}")
        xi = torch.full((1, 2, 5, 9), float("-inf"), dtype=dtype).contiguous(memory_format=fmt)
        ck.equal(ck.op("height_pool_max")(xi, 3)[1], cpu.height_pool_max(xi, 3)[1], f"all -inf indices {tag}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=pathlib.Path, required=True)
    parser.add_argument("--full", action="store_true", help="every shape and dtype at 1, 2, 64 and 132 SMs")
    parser.add_argument("--no-sanitize", action="store_true", help="build without ASan/UBSan")
    args = parser.parse_args(argv)
    plan = FULL_PLAN if args.full else QUICK_PLAN
    assert all(set(names) <= set(LAYOUTS) and set(shapes) <= set(ALL_SHAPES) for _, _, shapes, names in plan)

    t0 = time.time()
    try:
        build.build(ROOT, args.build_dir, sanitize=not args.no_sanitize)
    except sources.RewriteError as e:
        print(f"REWRITE ERROR: {e}", flush=True)
        return 2
    print(f"built in {time.time() - t0:.0f}s", flush=True)
    import hanet_fast  # noqa: F401  (the CPU backend, torch.ops.hanet_fast, for bitwise comparisons)

    ck = Checker()
    ops = sources.schema_ops(ROOT)
    for name in ops:
        ck.true(
            torch._C._dispatch_has_kernel_for_dispatch_key(f"{sources.NAMESPACE}::{name}", "CPU"),
            f"{name} has an emulated CUDA kernel",
        )
    torch.manual_seed(0)
    t1 = time.time()
    check_special_values(ck)
    for sm, dtypes, shapes, layout_names in plan:
        torch.ops.hanet_emu.set_sm_count(sm)
        for (dtype, atol, rtol), shape in itertools.product(DTYPES, shapes):
            if dtype in dtypes:
                check_shape(ck, dtype, atol, rtol, shape, sm, layout_names)
        print(f"sm={sm} {shapes[0]}...: {ck.checks} checks, {ck.failures} failures, {time.time() - t1:.0f}s", flush=True)
    missing = sorted(set(ops) - ck.called)
    ck.true(not missing, f"every operator is checked (not checked: {missing})")
    launches, errors = torch.ops.hanet_emu.stats()
    ck.true(launches > 0, "kernels were launched")
    ck.true(errors == 0, f"no emulation errors (got {errors}, printed above as 'emu: ...')")
    print(f"{ck.checks} checks, {ck.failures} failures, {launches} launches, {errors} emulation errors")
    return 1 if ck.failures else 0


if __name__ == "__main__":
    sys.exit(main())
