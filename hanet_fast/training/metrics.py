"""Confusion matrices, per-class IoU and mIoU (overall and per horizontal region), and the printed tables.

The counting is the official Cityscapes pixel-level evaluation's (``cityscapesscripts``'
``evalPixelLevelSemanticLabeling``) expressed in trainIds: ground-truth pixels of ignored
classes (trainId 255) are left out; a class's IoU is ``TP / (TP + FP + FN)`` where false
positives are counted over non-ignored ground truth only and a prediction of an ignored class
("void", only possible for predictions read from files) is a false negative of the ground
truth's class and a false positive of none; classes with an empty denominator get nan and are
left out of the mean.

Regions (paper §4.2.4, Table 5): the image is cut into ``R`` horizontal bands of equal height;
row ``r`` of an ``H``-row image lies in band ``floor(r * R / H)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from hanet_fast.data.labels import CLASS_NAMES

__all__ = ["confusion", "region_confusion", "region_bounds", "region_names", "iou_from_confusion", "format_table",
           "format_region_table"]


def region_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int, regions: int = 1,
                     ignore_index: int = 255, *, void_column: bool = False) -> torch.Tensor:
    """Confusion matrices of ``regions`` horizontal bands: ``[regions, C, C]`` int64 on the CPU
    (``[regions, C, C + 1]`` with ``void_column``), rows = ground truth, columns = prediction.

    Args:
        pred, target: ``[..., H, W]`` integer class maps of the same shape (trainIds).
        num_classes: ``C``.
        regions: number of equal-height horizontal bands (1: the whole image).
        ignore_index: ground-truth value left out of the counts.
        void_column: count predictions outside ``[0, C)`` in an extra last column (a miss of
            the ground truth's class); without it such predictions raise ValueError.
    """
    if pred.shape != target.shape or pred.dim() < 2:
        raise ValueError(f"hanet_fast.metrics: pred and target must be [..., H, W] maps of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if isinstance(regions, bool) or not isinstance(regions, int) or regions < 1:
        raise ValueError(f"hanet_fast.metrics: regions must be a positive int, got {regions!r}")
    height = target.shape[-2]
    band = (torch.arange(height, device=target.device) * regions // height).view(height, 1).expand(target.shape)
    valid = target != ignore_index
    gt, pr, band = target[valid].long(), pred[valid].long(), band[valid]
    if gt.numel() and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"hanet_fast.metrics: target holds values outside [0, {num_classes}) other than "
                         f"ignore_index {ignore_index}")
    cols = num_classes + 1 if void_column else num_classes
    outside = (pr < 0) | (pr >= num_classes)
    if void_column:
        pr = torch.where(outside, num_classes, pr)
    elif bool(outside.any()):
        raise ValueError(f"hanet_fast.metrics: pred holds values outside [0, {num_classes}); pass void_column=True "
                         "to count them as misses")
    idx = (band * num_classes + gt) * cols + pr
    counts = torch.bincount(idx, minlength=regions * num_classes * cols)
    return counts.reshape(regions, num_classes, cols).cpu()


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255, *,
              void_column: bool = False) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts, rows = ground truth, columns = prediction
    (``[C, C + 1]`` with ``void_column``: see :func:`region_confusion`). Any matching shapes."""
    if pred.shape != target.shape:
        raise ValueError(f"hanet_fast.metrics: pred and target shapes differ: {tuple(pred.shape)} vs "
                         f"{tuple(target.shape)}")
    return region_confusion(pred.reshape(1, -1), target.reshape(1, -1), num_classes, 1, ignore_index,
                            void_column=void_column)[0]


def region_bounds(height: int, regions: int) -> list[tuple[int, int]]:
    """``[(first row, end row), ...]`` of the ``regions`` bands of an ``height``-row image."""
    rows = torch.arange(height) * regions // height
    return [(int((rows < k).sum()), int((rows <= k).sum())) for k in range(regions)]


def region_names(regions: int) -> list[str]:
    """Display names of the bands, top to bottom: the paper's for 3 (Fig. 1) and 4 (Table 5)."""
    if regions == 1:
        return ["entire"]
    if regions == 3:
        return ["upper", "middle", "lower"]
    if regions == 4:
        return ["upper", "mid-upper", "mid-lower", "lower"]
    return [f"band {k + 1}/{regions}" for k in range(regions)]


def iou_from_confusion(conf: torch.Tensor) -> tuple[list[float], float, float]:
    """``(per-class IoU (nan where a class is neither in the labels nor predicted), mIoU over the
    others, pixel accuracy)`` of a ``[C, C]`` or ``[C, C + 1]`` (void column) confusion matrix."""
    conf = conf.double()
    num_classes = conf.shape[0]
    if conf.dim() != 2 or conf.shape[1] not in (num_classes, num_classes + 1):
        raise ValueError(f"hanet_fast.metrics: confusion must be [C, C] or [C, C + 1], got {tuple(conf.shape)}")
    tp = conf.diagonal()
    denom = conf.sum(1) + conf[:, :num_classes].sum(0) - tp
    ious = [float(t / d) if d > 0 else float("nan") for t, d in zip(tp, denom)]
    valid = [v for v in ious if not math.isnan(v)]
    miou = sum(valid) / len(valid) if valid else float("nan")
    acc = float(tp.sum() / conf.sum()) if conf.sum() > 0 else float("nan")
    return ious, miou, acc


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.2f}"


def format_table(ious: list[float], miou: float, acc: float, names=CLASS_NAMES) -> str:
    """A per-class IoU table (percent) with mIoU and pixel accuracy."""
    lines = [f"{'class':<15} {'IoU %':>7}", "-" * 23]
    for name, v in zip(names, ious):
        lines.append(f"{name:<15} {_pct(v):>7}")
    lines += ["-" * 23, f"{'mIoU':<15} {_pct(miou):>7}", f"{'pixel acc':<15} {_pct(acc):>7}"]
    return "\n".join(lines)


def format_region_table(names: Sequence[str], bounds: Sequence[tuple[float, float]], mious: Sequence[float],
                        accs: Sequence[float]) -> str:
    """A per-region table: name, rows as percent of the image height, mIoU and pixel accuracy."""
    lines = [f"{'region':<12} {'rows %':>11} {'mIoU %':>7} {'acc %':>7}", "-" * 40]
    for name, (lo, hi), miou, acc in zip(names, bounds, mious, accs):
        lines.append(f"{name:<12} {f'{100 * lo:.0f}-{100 * hi:.0f}':>11} {_pct(miou):>7} {_pct(acc):>7}")
    return "\n".join(lines)
