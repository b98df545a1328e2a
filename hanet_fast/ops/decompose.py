"""The fused ops written as plain tensor algebra, for deployment (``python -m hanet_fast.export``).

An exported graph that still calls ``hanet_fast::height_pool_avg`` and friends needs hanet_fast
(and its compiled library) wherever it runs. :func:`decompositions` replaces each fused forward
op by the same computation in standard ATen ops, chosen so that every step has a direct ONNX
counterpart (DESIGN §1 formulas):

- ``height_pool``: a mean (max) over the width, ``[B, C, H]``, then the adaptive bins over the
  rows as a ``[rows, H]`` matrix: a matrix product with the averaging matrix (avg) or a masked
  maximum (max);
- ``height_gate``: the linear upsampling (``align_corners=False``) as an ``[H, rows]``
  interpolation matrix, a matrix product with ``attn``, and a broadcast multiplication.

The matrices are built from ``x``'s height inside the graph (``arange`` and integer
arithmetic), so one exported program serves every input height (``--dynamic``); with a fixed
height they are constants. Used by ``ExportedProgram.run_decompositions(decompositions())``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["decompositions", "bin_bounds", "pool_rows_matrix", "upsample_rows_matrix",
           "height_pool_avg", "height_pool_max", "height_gate"]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # The fused kernels accumulate in float32 (float64 for float64); so does the matrix form.
    return torch.float64 if dtype == torch.float64 else torch.float32


def bin_bounds(height, rows: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row bins of adaptive pooling: bin ``i`` covers ``[floor(i*H/R), ceil((i+1)*H/R))``.

    Returns ``(start, end)``, two ``[rows]`` int64 tensors. ``height`` may be symbolic."""
    i = torch.arange(rows, device=device)
    start = torch.div(i * height, rows, rounding_mode="floor")
    end = torch.div((i + 1) * height + rows - 1, rows, rounding_mode="floor")
    return start, end


def _bin_mask(height, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[rows, H]`` bool: row ``h`` is in bin ``i``; with the bins' bounds."""
    start, end = bin_bounds(height, rows, device)
    h = torch.arange(height, device=device)
    return (h[None, :] >= start[:, None]) & (h[None, :] < end[:, None]), start, end


def pool_rows_matrix(height, rows: int, dtype: torch.dtype = torch.float32,
                     device: torch.device | None = None) -> torch.Tensor:
    """``[rows, H]``: row ``i`` averages the rows of bin ``i`` (``1 / bin size`` inside, 0 outside)."""
    mask, start, end = _bin_mask(height, rows, device)
    return mask.to(dtype) / (end - start).to(dtype)[:, None]


def upsample_rows_matrix(height, rows: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | None = None) -> torch.Tensor:
    """``[H, rows]``: ``attn @ M.T`` equals ``F.interpolate(attn, size=H, mode="linear",
    align_corners=False)`` for ``attn`` of ``[..., rows]``.

    Output row ``h`` samples source coordinate ``max((h + 0.5) * rows / H - 0.5, 0)`` between
    its two neighbouring coarse rows (the upper one clamped to the last row)."""
    acc = _accumulation_dtype(dtype)
    h = torch.arange(height, device=device, dtype=acc)
    src = ((h + 0.5) * (rows / height) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=rows - 1)
    hi = (lo + 1).clamp(max=rows - 1)
    frac = (src - lo)[:, None]
    r = torch.arange(rows, device=device)
    weights = (lo[:, None] == r).to(acc) * (1 - frac) + (hi[:, None] == r).to(acc) * frac
    return weights.to(dtype)


def height_pool_avg(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``hanet_fast::height_pool_avg`` as a width mean and a bin-averaging matrix product."""
    acc = _accumulation_dtype(x.dtype)
    means = x.to(acc).mean(3)
    return torch.matmul(means, pool_rows_matrix(x.shape[2], rows, acc, x.device).t()).to(x.dtype)


def height_pool_max(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``hanet_fast::height_pool_max``: values and flat ``h * W + w`` argmax indices, as a width
    maximum and a maximum over each bin's rows (rows outside the bin masked to ``-inf``)."""
    width = x.shape[3]
    row_max, row_arg = x.max(dim=3)
    mask, _, _ = _bin_mask(x.shape[2], rows, x.device)
    masked = torch.where(mask, row_max[:, :, None, :], float("-inf"))
    values, h = masked.max(dim=3)
    w = torch.gather(row_arg, 2, h)
    return values, h * width + w


def height_gate(x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """``hanet_fast::height_gate``: ``x`` times the attention upsampled by an interpolation matrix."""
    acc = _accumulation_dtype(attn.dtype)
    up = torch.matmul(attn.to(acc), upsample_rows_matrix(x.shape[2], attn.shape[2], acc, attn.device).t())
    return x * up.to(attn.dtype)[..., None]


def decompositions() -> dict[object, Callable]:
    """``{op overload: decomposition}`` of every fused forward op registered in this process, for
    ``ExportedProgram.run_decompositions``."""
    forms = {"height_pool_avg": height_pool_avg, "height_pool_max": height_pool_max, "height_gate": height_gate}
    table: dict[object, Callable] = {}
    for name, fn in forms.items():
        for suffix in ("", "_triton"):  # the C++ ops and the Triton ops share the schemas
            packet = getattr(torch.ops.hanet_fast, name + suffix, None)
            if packet is not None:
                table[packet.default] = fn
    return table
