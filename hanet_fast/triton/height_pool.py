"""height_pool in Triton (DESIGN §1): ``x [B, C, H, W] -> [B, C, R]`` by adaptive average or
max pooling over (rows of a bin) x (all columns), forward and backward.

Ops (same schemas as csrc/hanet_ops.cpp, registered with ``torch.library.triton_op``):
``hanet_fast::height_pool_avg_triton``, ``height_pool_avg_backward_triton``,
``height_pool_max_triton``, ``height_pool_max_backward_triton``.

Kernels take element strides, so NCHW, channels_last, any other strides and stride-0
(expanded) gradients are read in place, without copies. Outputs follow
:mod:`hanet_fast.ops.layout`.

* forward (one kernel per mode): a program owns ``BLOCK_C`` channels of one batch and
  ``BLOCK_R`` consecutive bins; it walks the rows those bins cover once, reduces each row
  over the width in ``[BLOCK_C, BLOCK_W]`` tiles, and adds the row's result to every bin
  of its block that contains the row. x is read once (a row shared by two bins of
  different programs, when ``H % R != 0``, is read by both). Max keeps, per row and per
  bin, the PyTorch rule: a later value wins if larger or NaN, so NaN propagates and ties
  keep the first position; the argmax is the flat index ``h * W + w``.
* backward (one kernel per mode): every element of ``grad_x`` is written once, gathered
  from the bins that contain its row (avg: ``grad_z / (rows_i * W)``; max: ``grad_z`` of
  the bins whose argmax it is, in bin order): no atomics, no zero fill.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from hanet_fast.ops import _validate
from hanet_fast.ops.layout import is_channels_last
from hanet_fast.triton._common import (
    ELEMENTWISE_NCHW_CONFIGS,
    ELEMENTWISE_NHWC_CONFIGS,
    INTERPRETED,
    channel_block_program,
    TARGET_PROGRAMS,
    bin_end,
    bin_start,
    divide,
    first_bin_of_row,
    is_fp64,
    on_device_of,
    pow2,
    strides3,
    strides4,
    tile_program,
)


# ============================================================================= forward
@triton.jit
def _pool_program(pid, C, H, R, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    """What program ``pid`` pools (all int64): its batch ``b``, channels ``cs`` and bins ``rs``
    with their masks, each bin's rows ``[starts, ends)``, and ``[h_lo, h_hi)``, the rows all
    of its bins cover."""
    b, cs, rs, r_first = channel_block_program(pid, C, R, BLOCK_C, BLOCK_R)
    r_last = tl.minimum(r_first + BLOCK_R, R) - 1
    return (b, cs, rs, cs < C, rs < R, bin_start(rs, R, H), bin_end(rs, R, H), bin_start(r_first, R, H),
            bin_end(r_last, R, H))


@triton.jit
def _pool_avg_kernel(
    x_ptr, out_ptr,
    C, H, W, R,
    sxb, sxc, sxh, sxw,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    b, cs, rs, c_mask, r_mask, starts, ends, h_lo, h_hi = _pool_program(pid, C, H, R, BLOCK_C, BLOCK_R)

    row_base = x_ptr + b * sxb + cs[:, None] * sxc  # [BLOCK_C, 1]
    w_offsets = tl.arange(0, BLOCK_W).to(tl.int64)
    acc = tl.zeros([BLOCK_C, BLOCK_R], dtype=ACC)
    for h in range(h_lo, h_hi):
        tile = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)
        for w0 in range(0, W, BLOCK_W):
            ws = w0 + w_offsets
            mask = c_mask[:, None] & (ws < W)[None, :]
            tile += tl.load(row_base + h * sxh + ws[None, :] * sxw, mask=mask, other=0.0).to(ACC)
        row = tl.sum(tile, axis=1)  # [BLOCK_C]
        in_bin = (starts <= h) & (h < ends)  # [BLOCK_R]
        acc += tl.where(in_bin[None, :], row[:, None], 0.0)

    count = ((ends - starts) * W).to(ACC)
    count = tl.where(r_mask, count, 1.0)
    mean = divide(acc, count[None, :] + tl.zeros([BLOCK_C, BLOCK_R], dtype=ACC), IS_FP64)
    out_offsets = (b * C + cs[:, None]) * R + rs[None, :]
    tl.store(out_ptr + out_offsets, mean.to(out_ptr.dtype.element_ty), mask=c_mask[:, None] & r_mask[None, :])


@triton.jit
def _pool_max_kernel(
    x_ptr, out_ptr, idx_ptr,
    C, H, W, R,
    sxb, sxc, sxh, sxw,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    b, cs, rs, c_mask, r_mask, starts, ends, h_lo, h_hi = _pool_program(pid, C, H, R, BLOCK_C, BLOCK_R)

    row_base = x_ptr + b * sxb + cs[:, None] * sxc
    w_offsets = tl.arange(0, BLOCK_W)
    best = tl.full([BLOCK_C, BLOCK_R], float("-inf"), ACC)
    best_idx = tl.zeros([BLOCK_C, BLOCK_R], dtype=tl.int64) + (starts * W)[None, :]
    for h in range(h_lo, h_hi):
        # Each tile slot keeps the scan's winner of the columns it sees (a later value wins when
        # larger or NaN; its columns only grow), then the slots are combined once per row by the
        # same rule, which is associative: the row's maximum and first position, or last NaN.
        run = tl.full([BLOCK_C, BLOCK_W], float("-inf"), ACC)
        run_w = tl.full([BLOCK_C, BLOCK_W], W, tl.int32)  # W: no column yet (masked slots keep it)
        for w0 in range(0, W, BLOCK_W):
            ws = (w0 + w_offsets)[None, :]  # [1, BLOCK_W], int32: a column
            mask = c_mask[:, None] & (ws < W)
            v = tl.load(row_base + h * sxh + ws.to(tl.int64) * sxw, mask=mask, other=float("-inf")).to(ACC)
            take = (v > run) | (v != v) | (mask & (run_w == W))  # a slot's first column is taken even if -inf
            run = tl.where(take, v, run)
            run_w = tl.where(take, ws, run_w)
        if BLOCK_W == 1:
            row_best = tl.reshape(run, [BLOCK_C])
            row_arg = tl.reshape(run_w, [BLOCK_C])
        else:
            nan = run != run
            last_nan = tl.max(tl.where(nan, run_w, -1), axis=1)
            numbers = tl.where(nan, float("-inf"), run)
            row_max = tl.max(numbers, axis=1)
            first_max = tl.min(tl.where(numbers == row_max[:, None], run_w, W), axis=1)
            # The value at first_max itself: -0.0 == +0.0, and the first of them is the maximum.
            row_max = tl.max(tl.where(run_w == first_max[:, None], numbers, float("-inf")), axis=1)
            row_best = tl.where(last_nan >= 0, float("nan"), row_max)
            row_arg = tl.where(last_nan >= 0, last_nan, first_max)
        in_bin = (starts <= h) & (h < ends)
        take = in_bin[None, :] & ((row_best[:, None] > best) | (row_best != row_best)[:, None])
        best = tl.where(take, row_best[:, None], best)
        best_idx = tl.where(take, h * W + row_arg.to(tl.int64)[:, None], best_idx)

    out_offsets = (b * C + cs[:, None]) * R + rs[None, :]
    mask = c_mask[:, None] & r_mask[None, :]
    tl.store(out_ptr + out_offsets, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + out_offsets, best_idx, mask=mask)


def _forward_config(B: int, C: int, H: int, W: int, R: int, channels_last: bool, is_max: bool,
                    element_size: int = 4) -> dict:
    """Launch settings of the forward kernels: a fixed rule of the shape (they reduce)."""
    if INTERPRETED:
        return dict(BLOCK_C=4, BLOCK_W=1 if (channels_last and is_max) else 8, BLOCK_R=pow2(R, 8), num_warps=1)
    if channels_last and is_max:
        # One column at a time, channels across the threads, 16 bytes of them per thread: each
        # slot's running maximum is the row's (no reduction across W), and no warp waits on another.
        block_c = pow2(C, 512)
        block_w = 1
        num_warps = max(1, min(8, block_c * element_size // (16 * 32)))
    else:
        tile = 512 if is_max else 1024  # max keeps a value and an index per element
        if channels_last:  # channels are contiguous: wide in C, a few columns at a time
            block_c = pow2(C, 128)
            block_w = pow2(W, max(1, tile // block_c))
        else:  # columns are contiguous: wide in W, a few channels (rows of x) at a time
            block_w = pow2(W, 256)
            block_c = pow2(C, max(1, tile // block_w))
        num_warps = 4 if block_c * block_w <= 1024 else 8
    # Bins per program: all of them (x read exactly once) unless that leaves too few programs.
    block_r = pow2(R, 32)
    while block_r > 1 and B * triton.cdiv(C, block_c) * triton.cdiv(R, block_r) < TARGET_PROGRAMS:
        block_r //= 2
    return dict(BLOCK_C=block_c, BLOCK_W=block_w, BLOCK_R=block_r, num_warps=num_warps)


def _forward_grid(B, C, R, cfg):
    return (B * triton.cdiv(C, cfg["BLOCK_C"]) * triton.cdiv(R, cfg["BLOCK_R"]),)


@triton_op("hanet_fast::height_pool_avg_triton", mutates_args=(), schema="(Tensor x, int rows) -> Tensor")
def height_pool_avg_triton(x: torch.Tensor, rows: int) -> torch.Tensor:
    _validate.check_height_pool(x, rows)
    B, C, H, W = x.shape
    out = torch.empty((B, C, rows), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    cfg = _forward_config(B, C, H, W, rows, is_channels_last(x), is_max=False)
    with on_device_of(x):
        wrap_triton(_pool_avg_kernel)[_forward_grid(B, C, rows, cfg)](
            x, out, C, H, W, rows, *strides4(x), IS_FP64=is_fp64(x), **cfg
        )
    return out


@triton_op(
    "hanet_fast::height_pool_max_triton", mutates_args=(), schema="(Tensor x, int rows) -> (Tensor, Tensor)"
)
def height_pool_max_triton(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    _validate.check_height_pool(x, rows)
    B, C, H, W = x.shape
    out = torch.empty((B, C, rows), dtype=x.dtype, device=x.device)
    indices = torch.empty((B, C, rows), dtype=torch.int64, device=x.device)
    if out.numel() == 0:
        return out, indices
    cfg = _forward_config(B, C, H, W, rows, is_channels_last(x), is_max=True, element_size=x.element_size())
    with on_device_of(x):
        wrap_triton(_pool_max_kernel)[_forward_grid(B, C, rows, cfg)](
            x, out, indices, C, H, W, rows, *strides4(x), IS_FP64=is_fp64(x), **cfg
        )
    return out, indices


# ============================================================================= backward
@triton.jit
def _pool_backward_kernel(
    gx_ptr, g_ptr, idx_ptr,
    C, H, W, R, MAX_BINS_PER_ROW,
    sgb, sgc, sgr,
    sib, sic, sir,
    sxb, sxc, sxh, sxw,
    IS_MAX: tl.constexpr, IS_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """grad_x over a [BLOCK_C, BLOCK_H, BLOCK_W] tile, gathered from the bins of its rows."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    b, cs, hs, ws, ch_mask, mask = tile_program(pid, C, H, W, BLOCK_C, BLOCK_H, BLOCK_W)

    first = first_bin_of_row(hs, R, H)  # [BLOCK_H]
    if IS_MAX:
        flat = (hs * W)[None, :, None] + ws[None, None, :]  # [1, BLOCK_H, BLOCK_W]
        acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    else:
        acc = tl.zeros([BLOCK_C, BLOCK_H], dtype=ACC)
    for k in range(0, MAX_BINS_PER_ROW):  # the bins containing each row, in order
        i = first + k
        valid = (i < R) & (bin_start(i, R, H) <= hs) & (hs < bin_end(i, R, H))
        load_mask = ch_mask & valid[None, :]
        g = tl.load(g_ptr + b * sgb + cs[:, None] * sgc + i[None, :] * sgr, mask=load_mask, other=0.0).to(ACC)
        if IS_MAX:
            arg = tl.load(idx_ptr + b * sib + cs[:, None] * sic + i[None, :] * sir, mask=load_mask, other=-1)
            hit = (arg[:, :, None] == flat) & load_mask[:, :, None]
            acc += tl.where(hit, g[:, :, None], 0.0)
        else:
            count = ((bin_end(i, R, H) - bin_start(i, R, H)) * W).to(ACC)
            count = tl.where(valid, count, 1.0)
            share = divide(g, count[None, :] + tl.zeros([BLOCK_C, BLOCK_H], dtype=ACC), IS_FP64)
            acc += tl.where(load_mask, share, 0.0)
    if IS_MAX:
        value = acc
    else:
        value = acc[:, :, None] + tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    offsets = b * sxb + cs[:, None, None] * sxc + hs[None, :, None] * sxh + ws[None, None, :] * sxw
    tl.store(gx_ptr + offsets, value.to(gx_ptr.dtype.element_ty), mask=mask)


# Writing grad_x does not reduce, so any tiling gives the same bits: autotuned on the GPU.
_BACKWARD_KEY = ["C", "H", "W", "R"]
_pool_backward_nchw = triton.autotune(configs=ELEMENTWISE_NCHW_CONFIGS, key=_BACKWARD_KEY)(_pool_backward_kernel)
_pool_backward_nhwc = triton.autotune(configs=ELEMENTWISE_NHWC_CONFIGS, key=_BACKWARD_KEY)(_pool_backward_kernel)


def _pool_backward(grad_out, indices, height, width, channels_last: bool) -> torch.Tensor:
    B, C, R = grad_out.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_x = torch.empty((B, C, height, width), dtype=grad_out.dtype, device=grad_out.device, memory_format=fmt)
    if grad_x.numel() == 0:
        return grad_x
    is_max = indices is not None
    index_source = indices if is_max else grad_out  # not read by the avg kernel
    kernel = _pool_backward_nhwc if channels_last else _pool_backward_nchw

    def grid(meta):
        return (
            B
            * triton.cdiv(C, meta["BLOCK_C"])
            * triton.cdiv(height, meta["BLOCK_H"])
            * triton.cdiv(width, meta["BLOCK_W"]),
        )

    with on_device_of(grad_out):
        wrap_triton(kernel)[grid](
            grad_x, grad_out, index_source,
            C, height, width, R, (R + height - 1) // height + 1,
            *strides3(grad_out), *strides3(index_source), *strides4(grad_x),
            IS_MAX=is_max, IS_FP64=is_fp64(grad_out),
        )
    return grad_x


@triton_op(
    "hanet_fast::height_pool_avg_backward_triton",
    mutates_args=(),
    schema="(Tensor grad_out, SymInt height, SymInt width, bool channels_last) -> Tensor",
)
def height_pool_avg_backward_triton(
    grad_out: torch.Tensor, height: int, width: int, channels_last: bool
) -> torch.Tensor:
    _validate.check_pool_grad(grad_out, height, width)
    return _pool_backward(grad_out, None, height, width, channels_last)


@triton_op(
    "hanet_fast::height_pool_max_backward_triton",
    mutates_args=(),
    schema="(Tensor grad_out, Tensor indices, SymInt height, SymInt width, bool channels_last) -> Tensor",
)
def height_pool_max_backward_triton(
    grad_out: torch.Tensor, indices: torch.Tensor, height: int, width: int, channels_last: bool
) -> torch.Tensor:
    _validate.check_pool_grad(grad_out, height, width)
    _validate.check_pool_indices(indices, grad_out, height, width)
    return _pool_backward(grad_out, indices, height, width, channels_last)
