"""Segmentation loss: cross-entropy (ignore 255) on the main logits plus ``aux_weight`` x the
cross-entropy of the auxiliary head.

The auxiliary logits come at stage 3's resolution; as the official code does, the labels are
downsampled to that size by nearest neighbour (``F.interpolate(mode="nearest")``) rather than
the logits upsampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hanet_fast.data.labels import IGNORE_INDEX


def downsample_labels(mask: torch.Tensor, size) -> torch.Tensor:
    """``[B, H, W]`` int labels -> ``[B, h, w]`` by nearest neighbour."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, aux_logits: torch.Tensor | None = None,
                      aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, dict]:
    """``(total, {"main": ..., "aux": ...})``; losses computed in float32."""
    main = F.cross_entropy(logits.float(), mask, ignore_index=ignore_index)
    parts = {"main": main.detach()}
    total = main
    if aux_logits is not None and aux_weight > 0:
        aux = F.cross_entropy(aux_logits.float(), downsample_labels(mask, aux_logits.shape[-2:]), ignore_index=ignore_index)
        parts["aux"] = aux.detach()
        total = total + aux_weight * aux
    return total, parts
