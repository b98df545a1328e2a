"""height_pool in Triton (DESIGN §1): ``x [B, C, H, W] -> [B, C, R]`` by adaptive average or
max pooling over (rows of a bin) x (all columns), forward and backward.

Ops (same schemas as csrc/hanet_ops.cpp, registered with ``torch.library.triton_op``):
``hanet_fast::height_pool_avg_triton``, ``height_pool_avg_backward_triton``,
``height_pool_max_triton``, ``height_pool_max_backward_triton``.

Kernels take element strides, so NCHW, channels_last, any other strides and stride-0
(expanded) gradients are read in place, without copies. Outputs follow
:mod:`hanet_fast.ops.layout`.

* forward, two kernels. The row kernel (one per mode) reduces rows of x over a segment of
  their columns in ``[BLOCK_C, BLOCK_W]`` tiles: a program owns ``BLOCK_C`` channels of
  ``ROWS`` rows over ``SEG_W`` columns, so that large maps give many programs whatever B, C
  and R are. Its results go to a small workspace ``[B, H, S, C]`` (float32 / float64 sums;
  max: the value and its column), ``S = ceil(W / SEG_W)`` results per row, 1/W to S/W of
  x. The bin kernel then reduces each bin's rows and segments, which lie next to each other
  in the order of x's elements. x is read exactly once. Max keeps the PyTorch rule: a later
  value wins if larger or NaN, so NaN propagates (the last NaN's position) and ties keep the
  first position; the argmax is the flat index ``h * W + w``. The settings come from the
  shape and dtype alone (never the GPU), so the summation order and every bit of the result
  are the same on every GPU.
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
    MAX_BACKWARD_NCHW_CONFIGS,
    STREAMING_PROGRAMS,
    bin_end,
    bin_start,
    divide,
    first_bin_of_row,
    is_fp64,
    on_device_of,
    pow2,
    segment_width,
    strides3,
    strides4,
    tile_program,
)


# ============================================================================= forward
@triton.jit
def _row_segment_program(pid, C, H, W, ROWS, SEG_W, S, BLOCK_C: tl.constexpr):
    """What program ``pid`` of the row kernels reduces (int32; the grid and the sizes are
    below 2**31): batch ``b``, channels ``cs`` and their mask, rows ``[h_lo, h_hi)``, columns
    ``[w_lo, w_hi)`` and their segment ``s``. Segments vary fastest, then row blocks."""
    s = pid % S
    rest = pid // S
    n_hb = tl.cdiv(H, ROWS)
    h_lo = (rest % n_hb) * ROWS
    rest = rest // n_hb
    n_cb = tl.cdiv(C, BLOCK_C)
    cs = (rest % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = rest // n_cb
    w_lo = s * SEG_W
    h_hi = tl.minimum(h_lo + ROWS, H)
    # Rows as int64: the loops over them compute x's offsets from them.
    return b, cs, cs < C, h_lo.to(tl.int64), h_hi.to(tl.int64), w_lo, tl.minimum(w_lo + SEG_W, W), s


@triton.jit
def _rows_avg_kernel(
    x_ptr, sums_ptr,
    C, H, W, ROWS, SEG_W, S,
    sxb, sxc, sxh, sxw,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """sums[b, h, s, c] = sum of x[b, c, h, w] over the columns w of segment s."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    b, cs, c_mask, h_lo, h_hi, w_lo, w_hi, s = _row_segment_program(tl.program_id(0), C, H, W, ROWS, SEG_W, S, BLOCK_C)
    plane = x_ptr + b.to(tl.int64) * sxb + cs.to(tl.int64)[:, None] * sxc  # [BLOCK_C, 1]
    out = sums_ptr + (b.to(tl.int64) * H * S + s) * C + cs  # row h at + h * S * C
    w_offsets = tl.arange(0, BLOCK_W)
    for h in range(h_lo, h_hi):
        row = plane + h * sxh
        tile = tl.zeros([BLOCK_C, BLOCK_W], dtype=ACC)
        for w0 in range(w_lo, w_hi, BLOCK_W):
            ws = w0 + w_offsets
            mask = c_mask[:, None] & (ws < w_hi)[None, :]
            tile += tl.load(row + ws.to(tl.int64)[None, :] * sxw, mask=mask, other=0.0).to(ACC)
        tl.store(out + h * S * C, tl.sum(tile, axis=1), mask=c_mask)


@triton.jit
def _first_max(values, positions, NONE):
    """Along axis 1: the maximum of ``values`` and its lowest position, or, where there is a
    NaN, NaN and the highest position holding one (PyTorch's max pooling). Slots without a
    value hold position ``NONE`` and ``-inf``. The rule is associative and does not depend on
    the order of the slots, only on their positions."""
    nan = values != values
    last_nan = tl.max(tl.where(nan, positions, -1), axis=1)
    numbers = tl.where(nan, float("-inf"), values)
    best = tl.max(numbers, axis=1)
    first = tl.min(tl.where(numbers == best[:, None], positions, NONE), axis=1)
    # The value at `first` itself: -0.0 == +0.0, and the first of them is the maximum.
    best = tl.max(tl.where(positions == first[:, None], numbers, float("-inf")), axis=1)
    return tl.where(last_nan >= 0, float("nan"), best), tl.where(last_nan >= 0, last_nan, first)


@triton.jit
def _rows_max_kernel(
    x_ptr, best_ptr, col_ptr,
    C, H, W, ROWS, SEG_W, S,
    sxb, sxc, sxh, sxw,
    IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """best[b, h, s, c], col[b, h, s, c]: the maximum of row h over segment s and its first
    column (or the last NaN's)."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    b, cs, c_mask, h_lo, h_hi, w_lo, w_hi, s = _row_segment_program(tl.program_id(0), C, H, W, ROWS, SEG_W, S, BLOCK_C)
    plane = x_ptr + b.to(tl.int64) * sxb + cs.to(tl.int64)[:, None] * sxc
    out = (b.to(tl.int64) * H * S + s) * C + cs
    w_offsets = tl.arange(0, BLOCK_W)
    for h in range(h_lo, h_hi):
        row = plane + h * sxh
        # Each tile slot keeps the scan's winner of the columns it sees (a later value wins when
        # larger or NaN; its columns only grow); the slots are combined once per row.
        run = tl.full([BLOCK_C, BLOCK_W], float("-inf"), ACC)
        run_w = tl.full([BLOCK_C, BLOCK_W], W, tl.int32)  # W: no column yet (masked slots keep it)
        for w0 in range(w_lo, w_hi, BLOCK_W):
            ws = (w0 + w_offsets)[None, :]
            mask = c_mask[:, None] & (ws < w_hi)
            v = tl.load(row + ws.to(tl.int64) * sxw, mask=mask, other=float("-inf")).to(ACC)
            take = (v > run) | (v != v) | (mask & (run_w == W))  # a slot's first column is taken even if -inf
            run = tl.where(take, v, run)
            run_w = tl.where(take, ws, run_w)
        if BLOCK_W == 1:
            row_best = tl.reshape(run, [BLOCK_C])
            row_col = tl.reshape(run_w, [BLOCK_C])
        else:
            row_best, row_col = _first_max(run, run_w, W)
        row_out = out + h * S * C
        tl.store(best_ptr + row_out, row_best, mask=c_mask)
        tl.store(col_ptr + row_out, row_col, mask=c_mask)


@triton.jit
def _bins_kernel(
    sums_ptr, col_ptr, out_ptr, idx_ptr,
    C, H, W, R, S,
    IS_MAX: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[b, c, r] from the row results of bin r: their mean, or their maximum and its flat
    index. The (row, segment) results of a bin lie at consecutive k = h * S + s, in the order
    of x's elements, and are read BLOCK_K at a time."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    r = pid % R
    rest = pid // R
    n_cb = tl.cdiv(C, BLOCK_C)
    cs = (rest % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = rest // n_cb
    c_mask = cs < C
    start = bin_start(r.to(tl.int64), R, H)
    end = bin_end(r.to(tl.int64), R, H)
    plane = b.to(tl.int64) * H * S * C + cs[:, None]  # [BLOCK_C, 1]
    k_offsets = tl.arange(0, BLOCK_K)
    if IS_MAX:
        best = tl.full([BLOCK_C], float("-inf"), ACC)
        best_idx = tl.zeros([BLOCK_C], dtype=tl.int64) + start.to(tl.int64) * W
    else:
        acc = tl.zeros([BLOCK_C], dtype=ACC)
    for k0 in range(start * S, end * S, BLOCK_K):
        ks = k0 + k_offsets
        mask = c_mask[:, None] & (ks < end * S)[None, :]
        offsets = plane + ks.to(tl.int64)[None, :] * C
        if IS_MAX:
            v = tl.load(sums_ptr + offsets, mask=mask, other=float("-inf"))
            col = tl.load(col_ptr + offsets, mask=mask, other=0)
            flat = (ks // S).to(tl.int64)[None, :] * W + col.to(tl.int64)
            none = (tl.zeros([BLOCK_C, BLOCK_K], dtype=tl.int64) + H) * W  # past every flat index
            chunk_best, chunk_idx = _first_max(v, tl.where(mask, flat, none), none)
            # Chunks come in the order of x: a later one wins only when larger or NaN.
            take = (chunk_best > best) | (chunk_best != chunk_best)
            best = tl.where(take, chunk_best, best)
            best_idx = tl.where(take, chunk_idx, best_idx)
        else:
            acc += tl.sum(tl.load(sums_ptr + offsets, mask=mask, other=0.0), axis=1)
    out_offsets = (b.to(tl.int64) * C + cs) * R + r
    if IS_MAX:
        tl.store(out_ptr + out_offsets, best.to(out_ptr.dtype.element_ty), mask=c_mask)
        tl.store(idx_ptr + out_offsets, best_idx, mask=c_mask)
    else:
        count = ((end - start).to(ACC) * W) + tl.zeros([BLOCK_C], dtype=ACC)
        mean = divide(acc, count, IS_FP64)
        tl.store(out_ptr + out_offsets, mean.to(out_ptr.dtype.element_ty), mask=c_mask)


def _forward_config(B: int, C: int, H: int, W: int, R: int, channels_last: bool, is_max: bool,
                    element_size: int) -> tuple[dict, dict]:
    """Launch settings of the two forward kernels (rows, bins): a fixed rule of the shape and
    dtype, never of the GPU, so that the summation order, and with it every bit of the
    result, is the same on every GPU."""
    if INTERPRETED:  # small blocks, row blocks and segments, so that the test shapes cross every edge
        rows = dict(BLOCK_C=4, BLOCK_W=4, ROWS=4, SEG_W=12, num_warps=1)
        return rows, dict(BLOCK_C=4, BLOCK_K=8, num_warps=1)
    vector = max(1, 16 // element_size)  # elements of a 16-byte access
    tile = 128 * vector * (1 if is_max else 2)  # per 4-warp program: max keeps a value and a column
    if channels_last:  # channels are contiguous: at least 64 bytes of them, a few columns at a time
        block_c = pow2(C, max(64 // element_size, tile // 8))
        block_w = pow2(W, max(1, tile // block_c))
    else:  # columns are contiguous: wide in W, a few rows of x (channels) at a time
        block_w = pow2(W, 32 * vector)
        block_c = pow2(C, max(1, tile // block_w))
    rows = H

    def programs() -> int:  # with whole rows
        return B * triton.cdiv(C, block_c) * triton.cdiv(H, rows)

    # Enough programs to fill the GPU several times over: fewer rows per program first, then
    # (channels_last) fewer channels, then rows split into segments (segment_width).
    while programs() < STREAMING_PROGRAMS and rows > 1:
        rows = triton.cdiv(rows, 2)
    while programs() < STREAMING_PROGRAMS and channels_last and block_c * element_size > 64 and block_w < W:
        block_c //= 2
        block_w *= 2
    seg_w = segment_width(programs(), W, block_w)
    rows_cfg = dict(BLOCK_C=block_c, BLOCK_W=block_w, ROWS=rows, SEG_W=seg_w, num_warps=4)
    return rows_cfg, dict(BLOCK_C=pow2(C, 32), BLOCK_K=64, num_warps=4)


def _rows_grid(B: int, C: int, H: int, W: int, cfg: dict) -> tuple[int]:
    return (B * triton.cdiv(C, cfg["BLOCK_C"]) * triton.cdiv(H, cfg["ROWS"]) * triton.cdiv(W, cfg["SEG_W"]),)


def _bins_grid(B: int, C: int, R: int, cfg: dict) -> tuple[int]:
    return (B * triton.cdiv(C, cfg["BLOCK_C"]) * R,)


def _pool_forward(x: torch.Tensor, rows: int, is_max: bool):
    """(out, indices or None) by the row kernel and the bin kernel."""
    B, C, H, W = x.shape
    out = torch.empty((B, C, rows), dtype=x.dtype, device=x.device)
    indices = torch.empty((B, C, rows), dtype=torch.int64, device=x.device) if is_max else None
    if out.numel() == 0:
        return out, indices
    rows_cfg, bins_cfg = _forward_config(B, C, H, W, rows, is_channels_last(x), is_max, x.element_size())
    S = triton.cdiv(W, rows_cfg["SEG_W"])
    acc_dtype = torch.float64 if is_fp64(x) else torch.float32
    # The row results, [B, H, S, C]: 1/W of x (S/W with segments), channels contiguous for the bin kernel.
    sums = torch.empty((B, H, S, C), dtype=acc_dtype, device=x.device)
    cols = torch.empty((B, H, S, C), dtype=torch.int32, device=x.device) if is_max else sums
    with on_device_of(x):
        rows_kernel, row_results = (_rows_max_kernel, (sums, cols)) if is_max else (_rows_avg_kernel, (sums,))
        wrap_triton(rows_kernel)[_rows_grid(B, C, H, W, rows_cfg)](
            x, *row_results, C, H, W, rows_cfg["ROWS"], rows_cfg["SEG_W"], S, *strides4(x),
            IS_FP64=is_fp64(x), BLOCK_C=rows_cfg["BLOCK_C"], BLOCK_W=rows_cfg["BLOCK_W"],
            num_warps=rows_cfg["num_warps"],
        )
        wrap_triton(_bins_kernel)[_bins_grid(B, C, rows, bins_cfg)](
            sums, cols, out, indices if is_max else out, C, H, W, rows, S,
            IS_MAX=is_max, IS_FP64=is_fp64(x), **bins_cfg,
        )
    return out, indices


@triton_op("hanet_fast::height_pool_avg_triton", mutates_args=(), schema="(Tensor x, int rows) -> Tensor")
def height_pool_avg_triton(x: torch.Tensor, rows: int) -> torch.Tensor:
    _validate.check_height_pool(x, rows)
    return _pool_forward(x, rows, is_max=False)[0]


@triton_op(
    "hanet_fast::height_pool_max_triton", mutates_args=(), schema="(Tensor x, int rows) -> (Tensor, Tensor)"
)
def height_pool_max_triton(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    _validate.check_height_pool(x, rows)
    return _pool_forward(x, rows, is_max=True)


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
_pool_max_backward_nchw = triton.autotune(configs=MAX_BACKWARD_NCHW_CONFIGS, key=_BACKWARD_KEY)(_pool_backward_kernel)
_pool_backward_nhwc = triton.autotune(configs=ELEMENTWISE_NHWC_CONFIGS, key=_BACKWARD_KEY)(_pool_backward_kernel)


def _backward_autotuner(is_max: bool, channels_last: bool):
    """The autotuned pooling backward for a pooling mode and memory format (its candidate list)."""
    if channels_last:
        return _pool_backward_nhwc
    return _pool_max_backward_nchw if is_max else _pool_backward_nchw


def _pool_backward(grad_out, indices, height, width, channels_last: bool) -> torch.Tensor:
    B, C, R = grad_out.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_x = torch.empty((B, C, height, width), dtype=grad_out.dtype, device=grad_out.device, memory_format=fmt)
    if grad_x.numel() == 0:
        return grad_x
    is_max = indices is not None
    index_source = indices if is_max else grad_out  # not read by the avg kernel
    kernel = _backward_autotuner(is_max, channels_last)

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
