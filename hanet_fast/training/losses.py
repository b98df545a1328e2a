"""Segmentation loss: cross-entropy (ignore 255) on the main logits plus ``aux_weight`` x the
cross-entropy of the auxiliary head, with the official code's two optional weightings
(``loss.py`` of github.com/shachoi/HANet):

- ``class_weighted`` (``--cls-wt-loss``, official ``--cls_wt_loss``): both cross-entropies
  weighted by :data:`CLASS_WEIGHTS` (a weighted mean: ``sum w[y] nll / sum w[y]``).
- ``image_weighted`` (``--img-wt-loss``, official ``ImageBasedCrossEntropyLoss2d``): the main
  loss is, summed over the images of the batch (not averaged), each image's cross-entropy
  weighted by :func:`image_class_weights` of its own labels (or, with ``batch_weighting``, of
  the whole batch's labels). It replaces the class weights on the main loss; the auxiliary loss
  keeps the plain (or class-weighted) cross-entropy, as the official ``get_loss_aux`` does.

The auxiliary logits come at stage 3's resolution; as the official code does, the labels are
downsampled to that size by nearest neighbour (``F.interpolate(mode="nearest")``) rather than
the logits upsampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hanet_fast.data.labels import IGNORE_INDEX

#: The official per-class cross-entropy weights of ``--cls_wt_loss``, for the 19 trainIds.
CLASS_WEIGHTS = (0.8373, 0.9180, 0.8660, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                 0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)


def downsample_labels(mask: torch.Tensor, size) -> torch.Tensor:
    """``[B, H, W]`` int labels -> ``[B, h, w]`` by nearest neighbour."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def image_class_weights(mask: torch.Tensor, num_classes: int, wt_bound: float = 1.0) -> torch.Tensor:
    """Class weights of ``ImageBasedCrossEntropyLoss2d`` from labels ``[B, H, W]`` (or ``[H, W]``):
    ``[B, num_classes]`` float32, one row per image.

    With ``f_c`` the fraction of the image's labelled pixels (labels ``0 .. num_classes - 1``;
    the ignore label is not counted) that are class ``c`` (the official normalised histogram),
    the weight is ``1 + wt_bound * (1 - f_c)`` for a class present in the image and ``1`` for an
    absent one. An image without labelled pixels gets NaN weights (its histogram is 0 / 0).
    """
    if mask.dim() == 2:
        mask = mask[None]
    batch = mask.shape[0]
    labelled = (mask >= 0) & (mask < num_classes)
    image = torch.arange(batch, device=mask.device).view(batch, 1, 1).expand_as(mask)
    counts = torch.bincount((image * num_classes + mask)[labelled], minlength=batch * num_classes)
    counts = counts.view(batch, num_classes).double()
    fraction = counts / counts.sum(1, keepdim=True)
    weights = torch.where(counts > 0, 1 + wt_bound * (1 - fraction), torch.ones_like(fraction))
    weights[counts.sum(1) == 0] = float("nan")
    return weights.float()


def image_weighted_cross_entropy(logits: torch.Tensor, mask: torch.Tensor, wt_bound: float = 1.0,
                                 batch_weighting: bool = False, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The official ``ImageBasedCrossEntropyLoss2d`` (``norm=False``, its only setting reachable
    from ``train.py``): ``sum over images i of sum_p w_i[y_p] nll_p / sum_p w_i[y_p]`` over the
    image's labelled pixels, ``w_i = image_class_weights(mask[i])``, or the whole batch's
    histogram for every image with ``batch_weighting`` (official ``--batch_weighting``).

    An image without labelled pixels adds 0 (the official code gets NaN: 0 / 0).
    """
    num_classes = logits.shape[1]
    source = mask.reshape(1, -1, 1) if batch_weighting else mask
    weights = image_class_weights(source, num_classes, wt_bound)
    if batch_weighting:
        weights = weights.expand(mask.shape[0], num_classes)
    nll = F.cross_entropy(logits.float(), mask, ignore_index=ignore_index, reduction="none")
    valid = mask != ignore_index
    pixel_weight = torch.gather(weights.to(logits.device), 1, torch.where(valid, mask, 0).flatten(1)).view_as(nll)
    pixel_weight = torch.where(valid, pixel_weight, torch.zeros_like(pixel_weight))
    per_image = (pixel_weight * nll).flatten(1).sum(1)
    norm = pixel_weight.flatten(1).sum(1)
    return torch.where(norm > 0, per_image / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm)).sum()


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, aux_logits: torch.Tensor | None = None,
                      aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX, *, class_weighted: bool = False,
                      image_weighted: bool = False, batch_weighting: bool = False,
                      wt_bound: float = 1.0) -> tuple[torch.Tensor, dict]:
    """``(total, {"main": ..., "aux": ...})``; losses computed in float32.

    ``class_weighted``: :data:`CLASS_WEIGHTS` on the main and auxiliary cross-entropy (19
    classes). ``image_weighted``: the main loss is :func:`image_weighted_cross_entropy` (with
    ``batch_weighting`` and ``wt_bound``) instead. See the module docstring.
    """
    class_weight = None
    if class_weighted:
        if logits.shape[1] != len(CLASS_WEIGHTS):
            raise ValueError(f"hanet_fast.training: the official class weights are for {len(CLASS_WEIGHTS)} classes, "
                             f"the logits have {logits.shape[1]}")
        class_weight = torch.tensor(CLASS_WEIGHTS, dtype=torch.float32, device=logits.device)
    if image_weighted:
        main = image_weighted_cross_entropy(logits, mask, wt_bound, batch_weighting, ignore_index)
    else:
        main = F.cross_entropy(logits.float(), mask, weight=class_weight, ignore_index=ignore_index)
    parts = {"main": main.detach()}
    total = main
    if aux_logits is not None and aux_weight > 0:
        aux = F.cross_entropy(aux_logits.float(), downsample_labels(mask, aux_logits.shape[-2:]), weight=class_weight,
                              ignore_index=ignore_index)
        parts["aux"] = aux.detach()
        total = total + aux_weight * aux
    return total, parts
