"""The data of a training run: the training and validation sets (a factory per data set name),
the class-uniform statistics, and the sampler and loader of the training batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from hanet_fast.data import (BDD100K, Cityscapes, EvalTransform, SyntheticUrbanScenes, TrainSampler, TrainTransform,
                             class_centroids)
from hanet_fast.training.config import TrainConfig
from hanet_fast.training.runtime import Process

__all__ = ["DATASET_FACTORIES", "build_datasets", "class_statistics", "train_loader"]


def _synthetic(cfg: TrainConfig, split: str, transform):
    count = cfg.synthetic_train if split == "train" else cfg.synthetic_val
    return SyntheticUrbanScenes(split, count, cfg.synthetic_size, cfg.data_seed, transform)


#: ``(config, split, transform) -> dataset`` per ``--dataset`` name. The synthetic scenes' splits
#: are ``train`` and ``val``; the others read ``--train-split`` / ``--val-split`` under ``--data-root``.
DATASET_FACTORIES: dict[str, Callable] = {
    "synthetic": _synthetic,
    "cityscapes": lambda cfg, split, transform: Cityscapes(cfg.data_root, split, transform=transform),
    "bdd100k": lambda cfg, split, transform: BDD100K(cfg.data_root, split, transform=transform),
}


def build_datasets(cfg: TrainConfig):
    """``(training set, validation set)`` of ``cfg``, with the training augmentation and the
    validation resize."""
    train_tf = TrainTransform(cfg.crop_size, (cfg.scale_min, cfg.scale_max), 0.5, cfg.color_jitter, cfg.blur)
    val_tf = EvalTransform(tuple(cfg.val_size) if cfg.val_size else None)
    factory = DATASET_FACTORIES[cfg.dataset]
    synthetic = cfg.dataset == "synthetic"
    train = factory(cfg, "train" if synthetic else cfg.train_split, train_tf)
    val = factory(cfg, "val" if synthetic else cfg.val_split, val_tf)
    return train, val


def class_statistics(cfg: TrainConfig, train_set, process: Process) -> dict | None:
    """The class centroids of class-uniform sampling (None when it is off): computed (or read from
    the cache) by rank 0 and sent to the other processes."""
    if cfg.class_uniform_pct <= 0:
        return None
    centroids = None
    if process.main or process.world == 1:
        centroids = class_centroids(train_set, cfg.cache_dir, cfg.class_uniform_tile or None,
                                    progress=process.main and not cfg.no_progress)
    if process.world > 1:
        holder = [centroids]
        dist.broadcast_object_list(holder, src=0)
        centroids = holder[0]
    return centroids


def train_loader(cfg: TrainConfig, train_set, centroids: dict | None, start: int, process: Process,
                 device: torch.device) -> torch.utils.data.DataLoader:
    """The training batches from iteration ``start`` on: this process's share of the seeded
    (class-uniform) sampling, which a resume continues where the run stopped."""
    sampler = TrainSampler(len(train_set), cfg.batch_size, cfg.iters, cfg.seed, start, process.rank, process.world,
                           centroids, cfg.class_uniform_pct)
    return torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers,
                                       pin_memory=device.type == "cuda", generator=torch.Generator(),
                                       persistent_workers=False)
