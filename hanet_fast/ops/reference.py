"""The reference backend: the two HANet ops composed from stock PyTorch ops.

These are the oracle of every test (DESIGN §1) and the fallback when no fused
backend is available. They take no short cuts: pooling is
``adaptive_{avg,max}_pool2d`` and gating materialises the upsampled attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def height_pool(x: torch.Tensor, rows: int, mode: str = "avg") -> torch.Tensor:
    """Width-wise pooling into ``rows`` coarse rows: ``[B, C, H, W] -> [B, C, rows]``."""
    if x.numel() == 0:  # B or C is 0: adaptive pooling refuses empty channels, the fused ops return []
        return _empty_like_result(x, (x.shape[0], x.shape[1], rows))
    if mode == "avg":
        return F.adaptive_avg_pool2d(x, (rows, 1)).squeeze(-1)
    return F.adaptive_max_pool2d(x, (rows, 1)).squeeze(-1)


def upsample_rows(attn: torch.Tensor, height: int) -> torch.Tensor:
    """Linear interpolation (align_corners=False) of ``[B, C, rows]`` to ``[B, C, height]``."""
    return F.interpolate(attn, size=height, mode="linear", align_corners=False)


def height_gate(x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """``x * up(attn)`` broadcast along the width: ``[B, C, H, W] x [B, C, rows] -> [B, C, H, W]``."""
    if x.numel() == 0:  # interpolate refuses an empty attn or height 0; y is empty, grad_attn is 0
        return x * attn.sum(-1, keepdim=True).unsqueeze(-1)
    return x * upsample_rows(attn, x.shape[2]).unsqueeze(-1)


def _empty_like_result(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """An empty result of ``shape`` that stays in ``x``'s autograd graph (its gradient is empty too)."""
    return x.sum(dim=(2, 3)).unsqueeze(-1).expand(shape).contiguous()
