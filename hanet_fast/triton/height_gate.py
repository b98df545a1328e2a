"""height_gate in Triton (DESIGN §1): ``y = x * up(attn)[..., None]`` with ``up`` the linear
(align_corners=False) resize of ``attn [B, C, R]`` to x's height, forward and backward.

Ops (same schemas as csrc/hanet_ops.cpp, registered with ``torch.library.triton_op``):
``hanet_fast::height_gate_triton``, ``height_gate_backward_triton``,
``height_gate_attn_backward_triton``.

Kernels take element strides, so NCHW, channels_last, any other strides and stride-0
(expanded) gradients are read in place, without copies. Outputs follow
:mod:`hanet_fast.ops.layout`. Every program works on a ``[BLOCK_C, BLOCK_H, BLOCK_W]``
tile (``BLOCK_C = 1`` for NCHW, ``BLOCK_H = 1`` for channels_last).

* forward: each program computes the upsampled attention of its ``[BLOCK_C, BLOCK_H]``
  rows from the two coarse taps of each row (never stored) and scales its tile of x.
* backward, kernel 1: a program owns ``[BLOCK_C, BLOCK_H]`` rows over a segment of their
  columns (whole rows unless a small map needs more programs), walks it once reading
  ``grad_y`` and ``x``, writes ``grad_x = grad_y * up`` (when wanted) and reduces
  ``sum_w grad_y * x`` in-program into a small float32 (float64) workspace ``[B, C, H, S]``
  (S/W of x, laid out like x so it is written contiguously);
  kernel 2: the transposed interpolation ``grad_attn = up^T(row sums)``, each program
  summing its rows and their segments in a fixed order. No atomics: deterministic, and the
  settings come from the shape alone, so the bits do not depend on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from hanet_fast.ops import _validate
from hanet_fast.ops.layout import is_channels_last, memory_format_of
from hanet_fast.triton._common import (
    ELEMENTWISE_NCHW_CONFIGS,
    ELEMENTWISE_NHWC_CONFIGS,
    INTERPRETED,
    channel_block_program,
    is_fp64,
    linear_taps,
    on_device_of,
    pow2,
    segment_width,
    strides3,
    strides4,
    tile_program,
)


@triton.jit
def _upsampled(attn_ptr, b, cs, hs, ch_mask, H, R, sab, sac, sar, IS_FP64: tl.constexpr):
    """up(attn)[b, cs, hs] as a [BLOCK_C, BLOCK_H] tile in the accumulator type."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    lo, hi, w_lo, w_hi = linear_taps(hs, R, H, IS_FP64)
    plane = attn_ptr + b * sab + cs[:, None] * sac
    a_lo = tl.load(plane + lo[None, :] * sar, mask=ch_mask, other=0.0).to(ACC)
    a_hi = tl.load(plane + hi[None, :] * sar, mask=ch_mask, other=0.0).to(ACC)
    return w_lo[None, :] * a_lo + w_hi[None, :] * a_hi


# ============================================================================= forward
@triton.jit
def _gate_forward_kernel(
    y_ptr, x_ptr, attn_ptr,
    C, H, W, R,
    sxb, sxc, sxh, sxw,
    syb, syc, syh, syw,
    sab, sac, sar,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    b, cs, hs, ws, ch_mask, mask = tile_program(pid, C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)

    up = _upsampled(attn_ptr, b, cs, hs, ch_mask, H, R, sab, sac, sar, IS_FP64)
    c3 = cs[:, None, None]
    h3 = hs[None, :, None]
    w3 = ws[None, None, :]
    x = tl.load(x_ptr + b * sxb + c3 * sxc + h3 * sxh + w3 * sxw, mask=mask, other=0.0).to(ACC)
    y = x * up[:, :, None]
    tl.store(y_ptr + b * syb + c3 * syc + h3 * syh + w3 * syw, y.to(y_ptr.dtype.element_ty), mask=mask)


# Every element of y is computed the same way whatever the tiling: autotuned on the GPU.
_FORWARD_KEY = ["C", "H", "W", "R"]
_gate_forward_nchw = triton.autotune(configs=ELEMENTWISE_NCHW_CONFIGS, key=_FORWARD_KEY)(_gate_forward_kernel)
_gate_forward_nhwc = triton.autotune(configs=ELEMENTWISE_NHWC_CONFIGS, key=_FORWARD_KEY)(_gate_forward_kernel)


@triton_op("hanet_fast::height_gate_triton", mutates_args=(), schema="(Tensor x, Tensor attn) -> Tensor")
def height_gate_triton(x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    _validate.check_height_gate(x, attn)
    _validate.check_same_dtype(x, attn)
    y = torch.empty_like(x, memory_format=memory_format_of(x))
    if y.numel() == 0:
        return y
    B, C, H, W = x.shape
    R = attn.shape[2]
    kernel = _gate_forward_nhwc if is_channels_last(x) else _gate_forward_nchw

    def grid(meta):
        return (
            B * triton.cdiv(C, meta["BLOCK_C"]) * triton.cdiv(H, meta["BLOCK_H"]) * triton.cdiv(W, meta["BLOCK_W"]),
        )

    with on_device_of(x):
        wrap_triton(kernel)[grid](
            y, x, attn, C, H, W, R, *strides4(x), *strides4(y), *strides3(attn), IS_FP64=is_fp64(x)
        )
    return y


# ============================================================================= backward
@triton.jit
def _gate_backward_rows_kernel(
    gx_ptr, sums_ptr, gy_ptr, x_ptr, attn_ptr,
    C, H, W, R, SEG_W, S,
    sgyb, sgyc, sgyh, sgyw,
    sxb, sxc, sxh, sxw,
    sgxb, sgxc, sgxh, sgxw,
    ssb, ssc, ssh, sss,
    sab, sac, sar,
    WRITE_GRAD_X: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """grad_x = grad_y * up over rows, and sums[b, c, h, s] = sum of grad_y * x over the
    columns of segment s (``[s * SEG_W, (s + 1) * SEG_W)``; segments vary fastest)."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    seg = pid % S
    b, cs, hs, _ = channel_block_program(pid // S, C, H, BLOCK_C, BLOCK_H)
    w_lo = seg * SEG_W
    w_hi = tl.minimum(w_lo + SEG_W, W)
    ch_mask = (cs < C)[:, None] & (hs < H)[None, :]
    c3 = cs[:, None, None]
    h3 = hs[None, :, None]
    w_offsets = tl.arange(0, BLOCK_W).to(tl.int64)

    if WRITE_GRAD_X:
        up = _upsampled(attn_ptr, b, cs, hs, ch_mask, H, R, sab, sac, sar, IS_FP64)[:, :, None]
    acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    for w0 in range(w_lo, w_hi, BLOCK_W):
        w3 = (w0 + w_offsets)[None, None, :]
        mask = ch_mask[:, :, None] & (w3 < w_hi)
        gy = tl.load(gy_ptr + b * sgyb + c3 * sgyc + h3 * sgyh + w3 * sgyw, mask=mask, other=0.0).to(ACC)
        x = tl.load(x_ptr + b * sxb + c3 * sxc + h3 * sxh + w3 * sxw, mask=mask, other=0.0).to(ACC)
        acc += gy * x
        if WRITE_GRAD_X:
            gx = gy * up
            tl.store(gx_ptr + b * sgxb + c3 * sgxc + h3 * sgxh + w3 * sgxw, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    row_sums = tl.sum(acc, axis=2)
    tl.store(sums_ptr + b * ssb + cs[:, None] * ssc + hs[None, :] * ssh + seg * sss, row_sums, mask=ch_mask)


@triton.jit
def _gate_backward_attn_kernel(
    gattn_ptr, sums_ptr,
    C, H, R, S,
    ssb, ssc, ssh, sss,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """grad_attn[b, c, r] = sum_h (w_lo[h] [lo[h] == r] + w_hi[h] [hi[h] == r]) * row[b, c, h],
    row[b, c, h] the sum of sums[b, c, h, :] in segment order."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    b, cs, rs, r0 = channel_block_program(pid, C, R, BLOCK_C, BLOCK_R)
    c_mask = cs < C
    # Only rows whose taps can reach bins [r0, r1] (src in [r0 - 1, r1 + 1)), with a margin.
    r1 = tl.minimum(r0 + BLOCK_R, R) - 1
    h_lo = tl.maximum(((r0 - 1) * H) // R - 1, 0)
    h_hi = tl.minimum(((r1 + 2) * H) // R + 2, H)

    acc = tl.zeros([BLOCK_C, BLOCK_R], dtype=ACC)
    plane = sums_ptr + b * ssb + cs[:, None] * ssc
    for h0 in range(h_lo, h_hi, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H).to(tl.int64)
        h_mask = hs < h_hi
        s_mask = c_mask[:, None] & h_mask[None, :]
        s = tl.load(plane + hs[None, :] * ssh, mask=s_mask, other=0.0)  # [C, H]
        for seg in range(1, S):
            s += tl.load(plane + hs[None, :] * ssh + seg * sss, mask=s_mask, other=0.0)
        lo, hi, w_lo, w_hi = linear_taps(hs, R, H, IS_FP64)
        weight = tl.where(lo[:, None] == rs[None, :], w_lo[:, None], 0.0) + tl.where(
            hi[:, None] == rs[None, :], w_hi[:, None], 0.0
        )  # [H, R]
        weight = tl.where(h_mask[:, None], weight, 0.0)
        acc += tl.sum(s[:, :, None] * weight[None, :, :], axis=1)
    out = gattn_ptr + (b * C + cs[:, None]) * R + rs[None, :]
    tl.store(out, acc.to(gattn_ptr.dtype.element_ty), mask=c_mask[:, None] & (rs < R)[None, :])


def _rows_config(B: int, C: int, H: int, W: int, channels_last: bool) -> dict:
    """Launch settings of the row-reduction kernel: a fixed rule of the shape (it reduces),
    never of the GPU. Rows are split into column segments (``SEG_W`` columns) when a small map
    needs more programs (:func:`segment_width`)."""
    if INTERPRETED:  # small blocks and segments, so that the test shapes cross every edge
        return dict(BLOCK_C=4, BLOCK_H=8, BLOCK_W=8, SEG_W=8, num_warps=1)
    if channels_last:
        block_c = pow2(C, 128)
        block_h, block_w = 1, pow2(W, max(1, 1024 // block_c))
    else:
        block_w = pow2(W, 128)
        block_c, block_h = 1, pow2(H, max(1, 1024 // block_w))
    seg_w = segment_width(B * triton.cdiv(C, block_c) * triton.cdiv(H, block_h), W, block_w)
    return dict(BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w, SEG_W=seg_w, num_warps=4)


def _attn_config(R: int) -> dict:
    if INTERPRETED:
        return dict(BLOCK_C=4, BLOCK_H=8, BLOCK_R=pow2(R, 8), num_warps=1)
    block_r = pow2(R, 32)
    return dict(BLOCK_C=16, BLOCK_H=max(1, 256 // block_r), BLOCK_R=block_r, num_warps=4)


def _gate_backward(grad_y, x, attn, rows: int, write_grad_x: bool):
    """(grad_x or None, grad_attn) by the two backward kernels."""
    B, C, H, W = x.shape
    channels_last = is_channels_last(x)
    grad_attn = torch.empty((B, C, rows), dtype=x.dtype, device=x.device)
    grad_x = torch.empty_like(x, memory_format=memory_format_of(x)) if write_grad_x else None
    if x.numel() == 0:
        grad_attn.zero_()
        return grad_x, grad_attn
    acc_dtype = torch.float64 if is_fp64(x) else torch.float32
    rows_cfg = _rows_config(B, C, H, W, channels_last)
    segments = triton.cdiv(W, rows_cfg["SEG_W"])
    # The row sums [B, C, H, S] (S segments per row), laid out like x so kernel 1 writes them contiguously.
    if channels_last:
        sums = torch.empty((B, H, segments, C), dtype=acc_dtype, device=x.device).permute(0, 3, 1, 2)
    else:
        sums = torch.empty((B, C, H, segments), dtype=acc_dtype, device=x.device)
    fp64 = is_fp64(x)

    gx_arg = grad_x if write_grad_x else sums  # not written when write_grad_x is False
    attn_arg = attn if write_grad_x else sums  # not read when write_grad_x is False
    gx_strides = strides4(grad_x) if write_grad_x else (0, 0, 0, 0)
    attn_strides = strides3(attn) if write_grad_x else (0, 0, 0)
    attn_cfg = _attn_config(rows)
    with on_device_of(x):
        grid = (B * triton.cdiv(C, rows_cfg["BLOCK_C"]) * triton.cdiv(H, rows_cfg["BLOCK_H"]) * segments,)
        wrap_triton(_gate_backward_rows_kernel)[grid](
            gx_arg, sums, grad_y, x, attn_arg,
            C, H, W, rows, rows_cfg["SEG_W"], segments,
            *strides4(grad_y), *strides4(x), *gx_strides, *strides4(sums), *attn_strides,
            WRITE_GRAD_X=write_grad_x, IS_FP64=fp64, **{k: v for k, v in rows_cfg.items() if k != "SEG_W"},
        )
        grid = (B * triton.cdiv(C, attn_cfg["BLOCK_C"]) * triton.cdiv(rows, attn_cfg["BLOCK_R"]),)
        wrap_triton(_gate_backward_attn_kernel)[grid](
            grad_attn, sums, C, H, rows, segments, *strides4(sums), IS_FP64=fp64, **attn_cfg
        )
    return grad_x, grad_attn


@triton_op(
    "hanet_fast::height_gate_backward_triton",
    mutates_args=(),
    schema="(Tensor grad_y, Tensor x, Tensor attn) -> (Tensor, Tensor)",
)
def height_gate_backward_triton(
    grad_y: torch.Tensor, x: torch.Tensor, attn: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _validate.check_height_gate(x, attn)
    _validate.check_same_dtype(x, attn)
    _validate.check_grad_y(grad_y, x)
    return _gate_backward(grad_y, x, attn, attn.shape[2], write_grad_x=True)


@triton_op(
    "hanet_fast::height_gate_attn_backward_triton",
    mutates_args=(),
    schema="(Tensor grad_y, Tensor x, int rows) -> Tensor",
)
def height_gate_attn_backward_triton(grad_y: torch.Tensor, x: torch.Tensor, rows: int) -> torch.Tensor:
    _validate.check_feature_map(x, "x")
    _validate.check_grad_y(grad_y, x)
    _validate.check_rows(rows)
    return _gate_backward(grad_y, x, None, rows, write_grad_x=False)[1]
