"""Shared pieces of the Triton kernels: the index math of kernels/index_math.h written in
Triton, accumulator types, and how launch settings are chosen.

Index math (the same formulas as ATen, so bins and taps equal the reference's):

* adaptive bin ``i`` of ``bins`` over ``size`` rows spans ``[floor(i*size/bins),
  ceil((i+1)*size/bins))``; the bins containing row ``h`` are ``i`` in
  ``[floor(h*bins/size), ceil((h+1)*bins/size) - 1]``;
* linear interpolation taps (``align_corners=False``) of output row ``dst`` when resizing
  ``in_size`` rows to ``out_size``: ``scale = in/out``, ``src = max(scale*(dst+0.5)-0.5, 0)``,
  ``lo = min(int(src), in-1)``, ``lambda = clamp(src-lo, 0, 1)``, ``hi = lo+1 if lo < in-1
  else lo``, weights ``(1-lambda, lambda)``; computed in the accumulator type (float32, or
  float64 for float64 tensors) with an IEEE-rounded division.

Launch settings: kernels whose results do not depend on the tiling (every output element
is computed the same way whatever the block sizes: the gate forward and the pooling
backward) are autotuned on the GPU, keyed on the shape. Kernels that reduce (the pooling
forward and the gate backward) sum in an order that depends on block sizes and warps, so
they take their settings from a fixed rule of the shape: autotuning them would let timing
noise change the last bits between processes, and DESIGN §1 asks for bitwise-identical
results on every run. Under ``TRITON_INTERPRET=1`` every kernel runs one small fixed
configuration (small blocks, so that the tiny test shapes still cross block edges).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

try:  # the knob triton.jit itself reads when the kernels below are defined
    from triton import knobs as _knobs

    INTERPRETED: bool = bool(_knobs.runtime.interpret)
except (ImportError, AttributeError):  # older triton
    import os

    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes", "y")

# Programs a streaming reduction should launch at least: 4 waves of 16 resident 4-warp programs
# on each of 132 SMs (H100 / H200 SXM), so that the last, partial wave costs little. A constant,
# not the GPU's SM count: the launch settings decide the summation order, which must not
# depend on the GPU (DESIGN §1: bitwise-identical results).
STREAMING_PROGRAMS = 4 * 16 * 132
# A row is split into segments of at least this many columns: each segment adds one
# accumulator (4 or 8 bytes) per channel to the traffic, at most 1/16 of what x costs.
MIN_SEGMENT_COLUMNS = 64

_ACCUMULATES_IN_FLOAT64 = {torch.float64}

# Autotune candidates of the kernels that write each element of a [B, C, H, W] tensor once
# (no reduction, so every tiling gives the same bits): tiles along W for NCHW, along C for NHWC.
if INTERPRETED:
    ELEMENTWISE_NCHW_CONFIGS = ELEMENTWISE_NHWC_CONFIGS = MAX_BACKWARD_NCHW_CONFIGS = [
        triton.Config(dict(BLOCK_C=4, BLOCK_H=8, BLOCK_W=8), num_warps=1)
    ]
else:
    # Elements per thread: 2 to 4 in the first ones (16 bytes of float32), 8 next (16 bytes of a
    # 16-bit dtype: what it takes for 128-bit accesses in bf16 / fp16), 16 and 32 in the last
    # ones, which spread a program's index math (a few hundred instructions) over more elements.
    ELEMENTWISE_NCHW_CONFIGS = [
        triton.Config(dict(BLOCK_C=1, BLOCK_H=bh, BLOCK_W=bw), num_warps=nw)
        for bh, bw, nw in ((1, 256, 4), (2, 128, 4), (4, 128, 4), (8, 64, 4), (16, 32, 4), (4, 256, 8), (8, 128, 8),
                           (8, 128, 4), (4, 256, 4), (16, 64, 4), (16, 128, 4), (8, 256, 4), (32, 128, 4),
                           (16, 256, 4))
    ]
    ELEMENTWISE_NHWC_CONFIGS = [
        triton.Config(dict(BLOCK_C=bc, BLOCK_H=1, BLOCK_W=bw), num_warps=nw)
        for bc, bw, nw in ((32, 16, 4), (64, 8, 4), (64, 16, 4), (128, 4, 4), (128, 8, 8), (256, 4, 8),
                           (128, 8, 4), (256, 4, 4), (128, 16, 4), (64, 32, 4), (256, 16, 4), (128, 32, 4))
    ]
    # The NCHW max-pool backward: in its loop over bins, every thread holds the bins' gradient and
    # int64 argmax of each tile row it covers (Triton lays the loop out along W), so rows per
    # thread, not elements per thread, fill its registers: at 4 warps, tiles of 16 rows (at 64
    # to 256 columns) and 32 rows spilled on sm_90 (16-3032 B stack frame, up to 1275 LDL). The
    # NCHW list with those tiles on 8 warps (32 x 128 as 32 x 64), and without 16 x 256, which
    # spills on 8 warps too (tests/test_kernel_report.py checks every list at the benchmark shapes).
    MAX_BACKWARD_NCHW_CONFIGS = [
        triton.Config(dict(BLOCK_C=1, BLOCK_H=bh, BLOCK_W=bw), num_warps=nw)
        for bh, bw, nw in ((1, 256, 4), (2, 128, 4), (4, 128, 4), (8, 64, 4), (16, 32, 4), (4, 256, 8), (8, 128, 8),
                           (8, 128, 4), (4, 256, 4), (16, 64, 8), (16, 128, 8), (8, 256, 4), (32, 64, 8))
    ]


def segment_width(programs_per_segment: int, W: int, block_w: int) -> int:
    """Columns per segment of a row reduction whose grid is ``programs_per_segment`` times the
    segments of a row: whole rows (``W`` rounded up to ``block_w``), halved while the grid has
    fewer than STREAMING_PROGRAMS programs and segments stay at least MIN_SEGMENT_COLUMNS and
    two blocks wide. A multiple of ``block_w``."""
    seg_w = triton.cdiv(W, block_w) * block_w
    while (programs_per_segment * triton.cdiv(W, seg_w) < STREAMING_PROGRAMS
           and seg_w >= 2 * max(block_w, MIN_SEGMENT_COLUMNS)):
        seg_w = triton.cdiv(triton.cdiv(seg_w, 2), block_w) * block_w
    return seg_w


def is_fp64(t: torch.Tensor) -> bool:
    """True when a kernel reading ``t`` accumulates in float64 rather than float32."""
    return t.dtype in _ACCUMULATES_IN_FLOAT64


def pow2(n: int, cap: int) -> int:
    """The next power of two of ``n`` (at least 1), at most ``cap``."""
    return min(triton.next_power_of_2(max(int(n), 1)), cap)


def on_device_of(t: torch.Tensor):
    """Launch on ``t``'s GPU: Triton launches on the current CUDA device, which need not be it."""
    if t.device.type == "cuda" and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Element strides of a 4-D tensor (a stride-0, expanded gradient is read correctly)."""
    s = t.stride()
    return s[0], s[1], s[2], s[3]


def strides3(t: torch.Tensor) -> tuple[int, int, int]:
    s = t.stride()
    return s[0], s[1], s[2]


def compile_for_sm90(kernel, pointers: dict, constants: dict, num_warps: int, divisible=()):
    """Compiles a kernel for sm_90 ahead of time, without a GPU (tests and
    scripts/kernel_report.py): ``pointers`` maps pointer arguments to Triton types (``"*fp32"``;
    other arguments are int32), ``constants`` gives the constexpr arguments and the arguments
    specialised as constants (those equal to 1, as Triton does at launch), ``divisible`` names
    the arguments that Triton would see as multiples of 16 at launch (16-byte aligned pointers,
    sizes and strides divisible by 16), which is what lets it emit 16-byte accesses.
    Returns Triton's compiled kernel (``.asm["cubin"]``, ``.asm["ptx"]``, ``.metadata``)."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.autotuner import Autotuner

    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in fn.arg_names}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible if name not in constants}
    source = triton.compiler.ASTSource(fn, signature, constants, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


# ----------------------------------------------------------------------------- index math
@triton.jit
def divide(a, b, IS_FP64: tl.constexpr):
    """a / b rounded as IEEE division (Triton's plain fp32 `/` is approximate on NVIDIA GPUs)."""
    if IS_FP64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def bin_start(i, bins, size):
    """First row of adaptive bin i (i < bins, int64)."""
    return (i * size) // bins


@triton.jit
def bin_end(i, bins, size):
    """One past the last row of adaptive bin i (i < bins, int64)."""
    return 1 + ((i + 1) * size - 1) // bins


@triton.jit
def first_bin_of_row(h, bins, size):
    """The lowest adaptive bin that contains row h (int64)."""
    return (h * bins) // size


@triton.jit
def linear_taps(dst, in_size, out_size, IS_FP64: tl.constexpr):
    """(lo, hi, w_lo, w_hi) of output rows `dst` (int64 tensor) resized from in_size rows."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    in_f = tl.full([1], 0, ACC) + in_size
    out_f = tl.full([1], 0, ACC) + out_size
    scale = divide(in_f, out_f, IS_FP64)
    src = scale * (dst.to(ACC) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    lo = tl.minimum(src.to(tl.int64), in_size - 1)  # src >= 0: truncation is floor
    lam = src - lo.to(ACC)
    lam = tl.minimum(tl.maximum(lam, 0.0), 1.0)
    hi = tl.where(lo < in_size - 1, lo + 1, lo)
    return lo, hi, 1.0 - lam, lam


@triton.jit
def channel_block_program(pid, C, N, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program ``pid`` of a grid over (batch, channel blocks, blocks of N), N blocks fastest:
    its batch ``b``, channels ``cs``, indices ``ns`` along N and the first of them ``n0``
    (all int64)."""
    n_nb = tl.cdiv(N, BLOCK_N)
    n_cb = tl.cdiv(C, BLOCK_C)
    n0 = (pid % n_nb) * BLOCK_N
    cb = (pid // n_nb) % n_cb
    b = pid // (n_nb * n_cb)
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    return b, cs, n0 + tl.arange(0, BLOCK_N).to(tl.int64), n0


@triton.jit
def tile_program(pid, C, H, W, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """What program ``pid`` of an element-wise kernel covers (all int64): batch ``b``, channels
    ``cs``, rows ``hs`` and columns ``ws``, the ``[BLOCK_C, BLOCK_H]`` mask of valid (c, h) and
    the ``[BLOCK_C, BLOCK_H, BLOCK_W]`` mask of valid elements; width blocks vary fastest."""
    n_wb = tl.cdiv(W, BLOCK_W)
    ws = (pid % n_wb) * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)
    b, cs, hs, _ = channel_block_program(pid // n_wb, C, H, BLOCK_C, BLOCK_H)
    ch_mask = (cs < C)[:, None] & (hs < H)[None, :]
    return b, cs, hs, ws, ch_mask, ch_mask[:, :, None] & (ws < W)[None, None, :]
