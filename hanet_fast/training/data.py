"""The data of a training run: the training and validation sets (built by name,
:func:`hanet_fast.data.build_dataset`), the class-uniform statistics (with coarse boosting), and
the sampler and loader of the training batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from hanet_fast.data import (BoostedDataset, Cityscapes, EvalTransform, SegmentationDataset, TrainSampler,
                             TrainTransform, build_dataset, class_centroids, coarse_boost, official_eval_transform)
from hanet_fast.data.coarse import COARSE_SPLIT
from hanet_fast.training.config import TrainConfig
from hanet_fast.training.runtime import Process

__all__ = ["TrainingData", "build_datasets", "class_statistics", "train_loader"]


def _split(cfg: TrainConfig, split: str, transform) -> SegmentationDataset:
    if cfg.dataset == "synthetic":
        count = cfg.synthetic_train if split == "train" else cfg.synthetic_val
        return build_dataset("synthetic", split, transform, length=count, size=cfg.synthetic_size, seed=cfg.data_seed)
    return build_dataset(cfg.dataset, split, transform, root=cfg.data_root)


def build_datasets(cfg: TrainConfig):
    """``(training set, validation set)`` of ``cfg``, with the training augmentation and the
    validation transform: ``--val-size`` if given, else the official trainer's for the data set
    (Mapillary: 1536 rows, centre crop), else full images."""
    train_tf = TrainTransform(cfg.crop_size, (cfg.scale_min, cfg.scale_max), 0.5, cfg.color_jitter, cfg.blur)
    val_tf = EvalTransform(tuple(cfg.val_size)) if cfg.val_size else (official_eval_transform(cfg.dataset)
                                                                       or EvalTransform(None))
    synthetic = cfg.dataset == "synthetic"
    train = _split(cfg, "train" if synthetic else cfg.train_split, train_tf)
    val = _split(cfg, "val" if synthetic else cfg.val_split, val_tf)
    return train, val


@dataclass
class TrainingData:
    """What the training loader draws from: ``dataset`` (with coarse boosting, the fine images
    followed by the coarse ones), its first ``length`` images taking part in the random part of an
    epoch, and the class centroids (None: no class-uniform sampling; ``fine_centroids``: the
    centroids after ``--max-cu-epoch`` with coarse boosting, else None)."""

    dataset: SegmentationDataset
    length: int
    centroids: dict | None = None
    fine_centroids: dict | None = None


def _statistics(cfg: TrainConfig, train_set, progress: bool) -> TrainingData:
    tile = cfg.class_uniform_tile or None
    if cfg.coarse_boost_classes:
        boost = coarse_boost(train_set, cfg.coarse_boost_classes, tile=tile, cache_dir=cfg.cache_dir, progress=progress)
        return TrainingData(boost.dataset, boost.dataset.main_length, boost.centroids, boost.fine_centroids)
    centroids = class_centroids(train_set, cfg.cache_dir, tile, train_set.labels.num_classes, progress)
    return TrainingData(train_set, len(train_set), centroids)


def class_statistics(cfg: TrainConfig, train_set, process: Process) -> TrainingData:
    """The training data with the class centroids of class-uniform sampling (none when it is off):
    computed (or read from the cache) by rank 0 and sent to the other processes; with
    ``--coarse-boost-classes`` the coarse ``train_extra`` images are added."""
    if cfg.class_uniform_pct <= 0:
        return TrainingData(train_set, len(train_set))
    data = None
    if process.main or process.world == 1:
        data = _statistics(cfg, train_set, progress=process.main and not cfg.no_progress)
    if process.world > 1:
        holder = [None if data is None else (data.centroids, data.fine_centroids)]
        dist.broadcast_object_list(holder, src=0)
        if data is None:  # the other ranks list the same files, without the statistics
            dataset = train_set
            if cfg.coarse_boost_classes:
                dataset = BoostedDataset(train_set, Cityscapes(train_set.root, COARSE_SPLIT, mode="coarse",
                                                               transform=train_set.transform))
            data = TrainingData(dataset, len(train_set), *holder[0])
    return data


def train_loader(cfg: TrainConfig, data: TrainingData, start: int, process: Process,
                 device: torch.device) -> torch.utils.data.DataLoader:
    """The training batches from iteration ``start`` on: this process's share of the seeded
    (class-uniform) sampling, which a resume continues where the run stopped."""
    boosted = data.fine_centroids is not None
    sampler = TrainSampler(data.length, cfg.batch_size, cfg.iters, cfg.seed, start, process.rank, process.world,
                           data.centroids, cfg.class_uniform_pct, data.dataset.labels.num_classes,
                           max_cu_epoch=cfg.max_cu_epoch if boosted else None, fine_centroids=data.fine_centroids)
    return torch.utils.data.DataLoader(data.dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                       pin_memory=device.type == "cuda", generator=torch.Generator(),
                                       persistent_workers=False)
