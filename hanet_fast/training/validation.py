"""Validation during training: per-class IoU, mIoU and pixel accuracy over the validation set,
sharded over the processes and summed, and the sample figures of the final report."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from hanet_fast import evaluation
from hanet_fast.inference import amp_context
from hanet_fast.training.config import TrainConfig
from hanet_fast.training.metrics import iou_from_confusion
from hanet_fast.training.runtime import Process
from hanet_fast.training.visualize import attention_figure, prediction_grid, save_png

#: The validation batch per process when ``--val-batch-size`` is 0: images of one size batch
#: (synthetic scenes; Mapillary's 1536 x 1536 crops, 4 as the official trainer), others go one by one.
VAL_BATCH_SIZES = {"synthetic": 8, "mapillary": 4}

__all__ = ["VAL_BATCH_SIZES", "ValidationResult", "validation_size", "validate", "write_figures", "unwrap"]


@dataclasses.dataclass
class ValidationResult:
    """One validation: ``ious`` per class (nan where a class is neither labelled nor predicted),
    their mean ``miou`` and ``pixel_acc``, after ``iteration`` on ``images`` images (all
    processes); ``final``: the validation of the finished run."""

    iteration: int
    ious: list[float]
    miou: float
    pixel_acc: float
    images: int
    final: bool = False


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def validation_size(cfg: TrainConfig, dataset) -> int:
    """How many validation images are scored (``--val-limit``: the first N)."""
    return len(dataset) if not cfg.val_limit else min(cfg.val_limit, len(dataset))


@torch.no_grad()
def validate(model: nn.Module, dataset, device: torch.device, cfg: TrainConfig, process: Process,
             on_batch: Callable[[dict, torch.Tensor], None] | None = None) -> tuple[list[float], float, float]:
    """``(per-class IoU, mIoU, pixel accuracy)`` over the validation images, each process scoring
    every ``world``-th one; ``on_batch(batch, predictions)`` after each of this process's batches."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    indices = list(range(process.rank, validation_size(cfg, dataset), process.world))
    batch_size = cfg.val_batch_size or VAL_BATCH_SIZES.get(cfg.dataset, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         num_workers=cfg.workers, generator=torch.Generator())
    if indices:
        conf = evaluation.accumulate_confusion(net, loader, device, amp=cfg.amp, channels_last=cfg.channels_last,
                                               on_batch=on_batch)[0]
    else:  # more processes than validation images
        conf = torch.zeros(net.num_classes, net.num_classes, dtype=torch.int64)
    if process.world > 1:
        conf = conf.to(device)
        dist.all_reduce(conf)
        conf = conf.cpu()
    net.train(was_training)
    return iou_from_confusion(conf)


@torch.no_grad()
def write_figures(model: nn.Module, dataset, device: torch.device, cfg: TrainConfig, out: str):
    """``predictions.png`` (the first ``--num-vis`` validation images: image | ground truth |
    prediction) and ``attention.png`` (HANet's attention of the first, paper Fig. 5) in ``out``;
    returns the predictions grid (``[H, W, 3]`` uint8)."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    images, masks, preds = [], [], []
    for i in range(max(1, min(cfg.num_vis, len(dataset)))):
        sample = dataset[i]
        with amp_context(cfg.amp, device):
            res = net(sample["image"][None].to(device), sample["row_pos"][None].to(device),
                      return_attention=(i == 0 and bool(net.hanet_modules)))
        images.append(sample["image"])
        masks.append(sample["mask"])
        preds.append(res.logits[0].argmax(0).cpu())
        if res.attention and not attention_figure(sample["image"], {n: a[0] for n, a in res.attention.items()},
                                                  os.path.join(out, "attention.png")):
            warnings.warn("hanet_fast.train: matplotlib is not installed: no attention.png")
    grid = prediction_grid(images, masks, preds, dataset.labels)
    save_png(grid, os.path.join(out, "predictions.png"))
    net.train(was_training)
    return grid
