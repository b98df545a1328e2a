"""Confusion matrices, per-class IoU and mIoU, and the printed table."""

from __future__ import annotations

import math

import torch

from hanet_fast.data.labels import CLASS_NAMES


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts, rows = ground truth, columns = prediction."""
    valid = target != ignore_index
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def iou_from_confusion(conf: torch.Tensor) -> tuple[list[float], float, float]:
    """``(per-class IoU (nan where a class is neither in the labels nor predicted), mIoU over the
    others, pixel accuracy)``."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    ious = [float(t / d) if d > 0 else float("nan") for t, d in zip(tp, denom)]
    valid = [v for v in ious if not math.isnan(v)]
    miou = sum(valid) / len(valid) if valid else float("nan")
    acc = float(tp.sum() / conf.sum()) if conf.sum() > 0 else float("nan")
    return ious, miou, acc


def format_table(ious: list[float], miou: float, acc: float, names=CLASS_NAMES) -> str:
    lines = [f"{'class':<15} {'IoU %':>7}", "-" * 23]
    for name, v in zip(names, ious):
        lines.append(f"{name:<15} {'n/a' if math.isnan(v) else f'{100 * v:.2f}':>7}")
    lines += ["-" * 23, f"{'mIoU':<15} {100 * miou:>7.2f}", f"{'pixel acc':<15} {100 * acc:>7.2f}"]
    return "\n".join(lines)
