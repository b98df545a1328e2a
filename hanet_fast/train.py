"""Train DeepLabv3+ with HANet (paper §4.1-4.3; DESIGN §5).

With no arguments it trains DeepLabv3+ MobileNetV2 (output stride 16) + HANet on the built-in
synthetic urban scenes on whatever device there is, then prints a per-class IoU table and the
mIoU on the synthetic validation split and leaves in its run folder (``runs/<timestamp>``,
``--out``)::

    checkpoint.pt      the last checkpoint (atomic; every --ckpt-every iterations and at the end)
    metrics.json       final per-class IoU, mIoU, pixel accuracy, wall time
    args.json          the effective settings
    tb/                TensorBoard scalars (loss, lr, images/s, val mIoU and IoUs) and images
    attention.png      HANet attention maps of a validation image (paper Fig. 5)
    predictions.png    validation samples: image | ground truth | prediction

Multi-process: ``torchrun --nproc_per_node=N -m hanet_fast.train ...`` (DDP; NCCL on GPU, gloo
on CPU; ``--sync-bn`` converts BatchNorm to SyncBatchNorm on GPU). ``--batch-size`` is per
process. ``--resume PATH`` continues a run exactly (model, optimizer, scheduler, AMP scaler,
sampler position and RNG states); the run's settings are taken from the checkpoint, flags that
would change them are refused, and only ``--iters`` (to extend), ``--workers``, ``--threads``,
``--data-root``, ``--cache-dir``, ``--device``, the logging, validation and checkpoint intervals
and the progress bar may differ. A non-empty ``--out`` is refused unless ``--resume`` continues
the run there or ``--overwrite`` replaces it.

Presets (``--preset NAME``; explicit flags override them; ``--help`` lists them in a table and
``--preset NAME --print-config`` prints every setting of one):

- ``synthetic-mobilenet`` (the default): built-in data 128x256, MobileNetV2 OS16, HANet L1-L4,
  crop 64x128, batch 8, 300 iterations (validation and checkpoint every 100), no pretrained
  weights (nothing to download).
- one preset per training script of the official code (github.com/shachoi/HANet ``scripts/``),
  named after it: ``train_r101_os8_hanet``, ``train_r101_os8_hanet_best``,
  ``train_r101_os16_hanet``, ``train_m_os16_hanet`` and ``train_resnext_fr_pretrain``, with
  every setting the script passes and the official ``train.py`` defaults for the rest.
  ``--batch-size`` is per process: run them with ``torchrun --nproc_per_node=N`` for the
  script's N GPUs (the table's "batch" column) to get its total batch.
- ``bdd100k-r101-os16`` and ``bdd100k-mobilenet-os16``: BDD100K as the paper trains it (§4.3:
  crop 608, total batch 16, 60k iterations; no official script), otherwise as
  ``train_r101_os16_hanet`` / ``train_m_os16_hanet``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn

from hanet_fast._cli import HelpFormatter, add_compile_arg, compile_model, resolve_device, size_arg
from hanet_fast.data import (BDD100K, CLASS_NAMES, NUM_CLASSES, Cityscapes, DatasetError, EvalTransform,
                             SyntheticUrbanScenes, TrainSampler, TrainTransform, class_centroids)
from hanet_fast.evaluate import accumulate_confusion
from hanet_fast.inference import amp_context
from hanet_fast.models import DeepLabV3PlusHANet, HANetConfig, deeplabv3plus
from hanet_fast.models import HANET_LAYERS
from hanet_fast.ops import resolve_backend
from hanet_fast.training import checkpoint as ckpt_io
from hanet_fast.training.losses import segmentation_loss
from hanet_fast.training.metrics import format_table, iou_from_confusion
from hanet_fast.training.schedule import poly_scheduler
from hanet_fast.training.visualize import attention_figure, prediction_grid, save_png

# What every official training script (scripts/train_*.sh of github.com/shachoi/HANet) passes
# alike, and the official train.py defaults none of them changes, in hanet_fast's terms.
_OFFICIAL_SCRIPT = dict(
    lr=0.01, poly_power=0.9,                   # --lr 0.01 --poly_exp 0.9
    hanet_lr=0.01, hanet_poly_power=0.9,       # --hanet_lr 0.01 --hanet_poly_exp 0.9
    class_uniform_pct=0.5, class_uniform_tile=1024,  # --class_uniform_pct 0.5 --class_uniform_tile 1024
    sync_bn=True,                              # --syncbn
    scale_min=0.5, scale_max=2.0,              # --scale_min 0.5 --scale_max 2.0 (--rrotate 0: no rotation)
    color_jitter=0.25,                         # --color_aug 0.25
    blur=1.0,                                  # --gblur: every training sample is blurred
    hanet_layers="1,1,1,1,0",                  # --hanet 1 1 1 1 0
    hanet_pos_injection=2,                     # --hanet_pos 2 1: injected after the first conv, sinusoidal
    hanet_rows=16,                             # --pos_rfactor 8: 128 // 8 coarse rows
    hanet_dropout=0.1,                         # --dropout 0.1
    aux_weight=0.4,                            # --aux_loss; train.py adds 0.4 x the auxiliary loss
    weight_decay=5e-4,                         # optimizer.py: the main network's decay is fixed at 5e-4
    hanet_weight_decay=1e-4,                   # --hanet_wd default
    momentum=0.9,                              # --momentum default
    img_wt_loss=False, cls_wt_loss=False,      # defaults unless the script passes them
    dataset="cityscapes", train_split="train", val_every=2000, ckpt_every=2000,
    synthetic_size=(128, 256), synthetic_train=2000, synthetic_val=100,
)
# The official code loads its deep-stem ResNet-101 ImageNet weights from this file
# (network/Resnet.py); torchvision has no such weights.
_R101_IMAGENET = "pretrained/resnet101-imagenet.pth"

PRESETS: dict[str, dict] = {
    "synthetic-mobilenet": dict(
        dataset="synthetic", train_split="train", backbone="mobilenet_v2", output_stride=16, crop_size=(64, 128),
        batch_size=8, iters=300, pretrained_backbone="none", synthetic_size=(128, 256), synthetic_train=2000,
        synthetic_val=100, class_uniform_pct=0.5, class_uniform_tile=0, val_every=100, ckpt_every=100,
        hanet_layers="1,1,1,1,0", hanet_rows=16, hanet_reduction=32, hanet_pos_injection=2, hanet_pos_noise=0.5,
        hanet_dropout=0.1, lr=0.01, hanet_lr=0.01, poly_power=0.9, hanet_poly_power=0.9, weight_decay=5e-4,
        hanet_weight_decay=1e-4, momentum=0.9, aux_weight=0.4, scale_min=0.5, scale_max=2.0, color_jitter=0.25,
        blur=1.0, sync_bn=True, cls_wt_loss=False, img_wt_loss=False,  # official --gblur: every sample
    ),
    "train_r101_os8_hanet": dict(
        _OFFICIAL_SCRIPT, backbone="resnet101_deepstem", output_stride=8, pretrained_backbone=_R101_IMAGENET,
        crop_size=(768, 768), iters=40000, batch_size=4, hanet_reduction=64, hanet_pos_noise=0.5,
    ),
    "train_r101_os8_hanet_best": dict(
        _OFFICIAL_SCRIPT, train_split="trainval", backbone="resnet101_deepstem", output_stride=8,
        pretrained_backbone=_R101_IMAGENET, crop_size=(864, 864), iters=90000, batch_size=3, hanet_reduction=64,
        hanet_pos_noise=0.5, cls_wt_loss=True,
    ),
    "train_r101_os16_hanet": dict(
        _OFFICIAL_SCRIPT, backbone="resnet101_deepstem", output_stride=16, pretrained_backbone=_R101_IMAGENET,
        crop_size=(768, 768), iters=40000, batch_size=4, hanet_reduction=32, hanet_pos_noise=0.5,
    ),
    "train_m_os16_hanet": dict(
        _OFFICIAL_SCRIPT, backbone="mobilenet_v2", output_stride=16, pretrained_backbone="imagenet",
        crop_size=(768, 768), iters=40000, batch_size=8, hanet_reduction=16, hanet_pos_noise=0.3,
    ),
    # Starts from the official Mapillary-pretrained snapshot (--snapshot; only its trunk is loaded
    # here) and does not reproduce --coarse_boost_classes (see docs/fidelity/recipes.md).
    "train_resnext_fr_pretrain": dict(
        _OFFICIAL_SCRIPT, train_split="trainval", backbone="resnext101_32x8d", output_stride=8,
        pretrained_backbone="pretrained/resnext_mapillary_0.47475.pth", crop_size=(864, 864), iters=90000,
        batch_size=2, hanet_reduction=64, hanet_pos_noise=0.5, cls_wt_loss=True,
    ),
}
# BDD100K (paper §4.3): crop 608, total batch 16, 60k iterations; no official script.
PRESETS["bdd100k-r101-os16"] = dict(PRESETS["train_r101_os16_hanet"], dataset="bdd100k", crop_size=(608, 608),
                                    iters=60000, batch_size=8)
PRESETS["bdd100k-mobilenet-os16"] = dict(PRESETS["train_m_os16_hanet"], dataset="bdd100k", crop_size=(608, 608),
                                         iters=60000, batch_size=16)

#: Processes (GPUs, ``torchrun --nproc_per_node``) each preset's total batch assumes: the
#: official script's ``--nproc_per_node``.
PRESET_PROCESSES = {"synthetic-mobilenet": 1, "train_r101_os8_hanet": 2, "train_r101_os8_hanet_best": 4,
                    "train_r101_os16_hanet": 2, "train_m_os16_hanet": 1, "train_resnext_fr_pretrain": 6,
                    "bdd100k-r101-os16": 2, "bdd100k-mobilenet-os16": 1}

DEFAULT_PRESET = "synthetic-mobilenet"

# Settings a resumed run may change because they leave its weights as they are: taken from the
# command line where given there, else from the checkpoint. --iters may grow (the poly schedule
# then decays towards the new end); --data-root may follow data that moved. Any other flag given
# with --resume that differs from the checkpoint is refused.
_RESUME_MUTABLE = ("iters", "workers", "no_progress", "cache_dir", "threads", "log_every", "val_every", "ckpt_every",
                   "num_vis", "deterministic", "data_root", "compile")
# Settings of one invocation, never taken from the checkpoint.
_RESUME_FRESH = ("out", "resume", "overwrite", "stop_after", "device")
# What a run writes into its folder (--overwrite removes the earlier run's copies first).
_RUN_OUTPUTS = ("checkpoint.pt", "metrics.json", "args.json", "attention.png", "predictions.png")


class RunError(Exception):
    """A setting, run folder, checkpoint or data problem that the CLI reports in one line; exit
    status ``status`` (2: bad input; 1: a fault during the run, such as a full disk)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line in one line (the usage of this many flags would bury it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Flag defaults shown, and the epilog's preset table kept as laid out."""


def preset_table() -> str:
    """The presets as a plain-text table: name, backbone, output stride, crop, iterations, batch."""
    head = ("preset", "backbone", "OS", "crop", "iterations", "batch")
    rows = [head] + [
        (name, cfg["backbone"], str(cfg["output_stride"]), "x".join(map(str, cfg["crop_size"])), str(cfg["iters"]),
         f"{cfg['batch_size']}x{PRESET_PROCESSES[name]}={cfg['batch_size'] * PRESET_PROCESSES[name]}")
        for name, cfg in PRESETS.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    marked = [lines[0]] + [line + ("  (default)" if name == DEFAULT_PRESET else "")
                           for line, name in zip(lines[1:], PRESETS)]
    return "presets:\n" + "\n".join("  " + line for line in marked)


def format_config(args: argparse.Namespace) -> str:
    """Every setting of ``args`` (a preset with any explicit flags applied), one ``key = value``
    line each, values as JSON, after a header naming the preset and its processes."""
    n = PRESET_PROCESSES[args.preset]
    lines = [f"# preset {args.preset}: total batch {args.batch_size * n} = --batch-size {args.batch_size} x {n} "
             f"process{'es' if n > 1 else ''} (torchrun --nproc_per_node={n})"]
    for key, value in sorted(vars(args).items()):
        if key != "print_config":
            lines.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m hanet_fast.train",
        description="Train DeepLabv3+ with HANet (height-driven attention, CVPR 2020) for urban-scene segmentation. "
                    "With no arguments: MobileNetV2 + HANet on the built-in synthetic street scenes.",
        epilog=preset_table() + "\n\nbatch: --batch-size per process x processes (torchrun --nproc_per_node) = the "
               "official script's total batch.\nAll settings of one preset: --preset NAME --print-config",
        formatter_class=_HelpFormatter,
    )
    S = argparse.SUPPRESS  # defaults come from the preset (shown in the epilog)
    g = p.add_argument_group("run")
    g.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help="a set of defaults (see the table below); explicit flags override it")
    g.add_argument("--print-config", action="store_true",
                   help="print every setting (the preset's, with any flags given applied) and exit")
    g.add_argument("--out", default=None, help="run folder (default runs/<timestamp>; with --resume, the checkpoint's folder)")
    g.add_argument("--resume", default=None, help="checkpoint file (or run folder) to continue exactly; other flags "
                   "may only change --iters (to extend), --workers, --threads, --data-root, --cache-dir, --device, "
                   "logging, validation and checkpoint intervals and the progress bar")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in a non-empty --out folder, replacing the run there")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling and augmentation")
    g.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    g.add_argument("--workers", type=int, default=1, help="data loader worker processes (0: load in the main process)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g.add_argument("--stop-after", type=int, default=0,
                   help="stop after this iteration with a checkpoint, as if interrupted (0: run to --iters)")
    g.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms (GPU: slower)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["synthetic", "cityscapes", "bdd100k"], default=S,
                   help="training data (preset default: synthetic)")
    g.add_argument("--data-root", default=None, help="data set root (cityscapes: holds leftImg8bit/ and gtFine/; "
                   "bdd100k: holds images/10k/ and labels/sem_seg/masks/)")
    g.add_argument("--train-split", default=S, help="training split (cityscapes/bdd100k; preset default: train)")
    g.add_argument("--val-split", default="val", help="validation split (cityscapes/bdd100k)")
    g.add_argument("--synthetic-size", type=size_arg, metavar="HxW", default=S, help="synthetic scene size HxW (preset: 128x256)")
    g.add_argument("--synthetic-train", type=int, default=S, help="number of synthetic training scenes (preset: 2000)")
    g.add_argument("--synthetic-val", type=int, default=S, help="number of synthetic validation scenes (preset: 100)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic scenes")
    g.add_argument("--crop-size", type=size_arg, metavar="HxW", default=S, help="training crop HxW (or one size)")
    g.add_argument("--scale-min", type=float, default=S, help="random scale minimum (paper: 0.5)")
    g.add_argument("--scale-max", type=float, default=S, help="random scale maximum (paper: 2.0)")
    g.add_argument("--color-jitter", type=float, default=S, help="colour jitter: brightness, contrast, saturation and hue strength, in [0, 0.5] (official --color_aug 0.25; 0: off)")
    g.add_argument("--blur", type=float, default=S, help="probability of the gaussian blur, sigma uniform in [0.15, 1.3) (official --gblur: 1, every sample; 0: off)")
    g.add_argument("--class-uniform-pct", type=float, default=S,
                   help="fraction of class-uniform samples (paper §4.1; 0: off)")
    g.add_argument("--class-uniform-tile", type=int, default=S, help="centroid tile size (0: image height // 2)")
    g.add_argument("--cache-dir", default=None, help="class-centroid cache folder (default $HANET_FAST_CACHE or ~/.cache/hanet_fast)")
    g.add_argument("--val-size", type=size_arg, metavar="HxW", default=None, help="resize validation images to HxW (default: as they are)")
    g.add_argument("--val-batch-size", type=int, default=0, help="validation batch size per process (0: 8 synthetic, 1 otherwise)")
    g.add_argument("--val-limit", type=int, default=0, help="validate on the first N images only (0: all)")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=S, help="mobilenet_v2, resnet50, resnet101, resnet101_deepstem, resnet152, "
                   "resnext50_32x4d, resnext101_32x8d, wide_resnet50_2, wide_resnet101_2, shufflenet_v2_x1_0, "
                   "mnasnet0_5, mnasnet1_0")
    g.add_argument("--output-stride", type=int, choices=[4, 8, 16, 32], default=S,
                   help="backbone output stride (4: ResNet and ResNeXt backbones only)")
    g.add_argument("--hanet-layers", default=S, help="five 0/1 flags for HANet L1..L5, e.g. 1,1,1,1,0")
    g.add_argument("--baseline", action="store_true", help="no HANet (same as --hanet-layers 0,0,0,0,0)")
    g.add_argument("--hanet-rows", type=int, default=S, help="coarse rows of the attention map (paper: 16)")
    g.add_argument("--hanet-reduction", type=int, default=S, help="HANet channel reduction ratio r (paper: 32)")
    g.add_argument("--hanet-pos-injection", type=int, choices=[1, 2], default=S,
                   help="add the positional encoding after HANet conv 1 or 2")
    g.add_argument("--hanet-pos-noise", type=float, default=S, help="training jitter of the positions (official: 0.5)")
    g.add_argument("--hanet-dropout", type=float, default=S, help="dropout on the pooled HANet input")
    g.add_argument("--no-pos-encoding", action="store_true", help="HANet without positional encoding")
    g.add_argument("--pretrained-backbone", default=S, help="none, imagenet (torchvision weights), or a file path")
    g.add_argument("--no-aux", action="store_true", help="no auxiliary head / loss")

    g = p.add_argument_group("optimisation")
    g.add_argument("--iters", type=int, default=S, help="training iterations")
    g.add_argument("--batch-size", type=int, default=S, help="batch size per process")
    g.add_argument("--lr", type=float, default=S, help="initial learning rate (paper: 0.01)")
    g.add_argument("--hanet-lr", type=float, default=S, help="initial learning rate of HANet parameters")
    g.add_argument("--poly-power", type=float, default=S, help="poly schedule power (paper: 0.9)")
    g.add_argument("--hanet-poly-power", type=float, default=S, help="poly power of HANet's learning rate")
    g.add_argument("--momentum", type=float, default=S, help="SGD momentum (paper: 0.9)")
    g.add_argument("--weight-decay", type=float, default=S, help="weight decay of the network (paper: 5e-4)")
    g.add_argument("--hanet-weight-decay", type=float, default=S, help="weight decay of HANet (paper: 1e-4)")
    g.add_argument("--aux-weight", type=float, default=S, help="auxiliary loss weight (paper: 0.4)")
    g.add_argument("--cls-wt-loss", dest="cls_wt_loss", action="store_true", default=S,
                   help="weight the main and auxiliary cross-entropy by the official per-class weights")
    g.add_argument("--no-cls-wt-loss", dest="cls_wt_loss", action="store_false", default=S,
                   help="unweighted cross-entropy (overrides a preset's --cls-wt-loss)")
    g.add_argument("--img-wt-loss", dest="img_wt_loss", action="store_true", default=S,
                   help="official per-image class-histogram weighted main loss (summed over the batch)")
    g.add_argument("--no-img-wt-loss", dest="img_wt_loss", action="store_false", default=S,
                   help="no per-image weighting (overrides a preset's --img-wt-loss)")
    g.add_argument("--batch-weighting", action="store_true",
                   help="with --img-wt-loss: one class histogram for the whole batch instead of one per image")
    g.add_argument("--wt-bound", type=float, default=1.0,
                   help="with --img-wt-loss: a present class's weight is 1 + wt_bound x (1 - its pixel fraction)")
    g.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast dtype (fp16 uses a GradScaler)")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU)")
    add_compile_arg(g)
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true", default=S, help="SyncBatchNorm under DDP on GPU")
    g.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=S, help="plain BatchNorm under DDP")

    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, default=10, help="TensorBoard scalar interval (iterations)")
    g.add_argument("--val-every", type=int, default=S, help="validation interval (iterations; 0: only at the end)")
    g.add_argument("--ckpt-every", type=int, default=S, help="checkpoint interval (iterations; always at the end)")
    g.add_argument("--num-vis", type=int, default=4, help="validation samples in predictions.png")
    return p


def _check_loss_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not math.isfinite(args.wt_bound) or args.wt_bound < 0:
        parser.error(f"--wt-bound must be a finite number >= 0, got {args.wt_bound}")
    if not args.img_wt_loss and (args.batch_weighting or args.wt_bound != 1.0):
        parser.error("--batch-weighting and --wt-bound apply to --img-wt-loss only")


def resolve_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` and fill in the preset's defaults (and, with --resume, the checkpoint's settings)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.baseline and hasattr(args, "hanet_layers"):
        parser.error("--baseline means no HANet: leave out --hanet-layers (or give --hanet-layers 0,0,0,0,0 alone)")
    for key, value in preset.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    if args.print_config:
        print(format_config(args))
        parser.exit(0)
    _check_loss_args(parser, args)
    if args.baseline:
        args.hanet_layers = "0,0,0,0,0"
    args.crop_size = tuple(args.crop_size)
    args.synthetic_size = tuple(args.synthetic_size)
    try:
        flags = [int(v) for v in str(args.hanet_layers).split(",")]
        assert len(flags) == 5 and set(flags) <= {0, 1}
    except (ValueError, AssertionError):
        parser.error(f"--hanet-layers must be five comma-separated 0/1 flags, got {args.hanet_layers!r}")
    if args.dataset != "synthetic" and not args.data_root:
        parser.error(f"--data-root is required for --dataset {args.dataset}")
    if args.iters < 1 or args.batch_size < 1:
        parser.error("--iters and --batch-size must be positive")
    _check_values(parser, args)
    return args


def _check_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (one line, exit 2) for a setting that would crash or silently misbehave."""
    if args.log_every < 1:
        parser.error(f"--log-every must be at least 1, got {args.log_every}")
    for key in ("val_every", "ckpt_every", "val_limit", "stop_after", "threads", "workers", "val_batch_size", "num_vis",
                "class_uniform_tile"):
        if getattr(args, key) < 0:
            parser.error(f"--{key.replace('_', '-')} must not be negative, got {getattr(args, key)}")
    if not 0 <= args.class_uniform_pct <= 1:
        parser.error(f"--class-uniform-pct must be in [0, 1], got {args.class_uniform_pct}")
    if not 0 < args.scale_min <= args.scale_max < math.inf:
        parser.error(f"--scale-min and --scale-max must satisfy 0 < min <= max, got {args.scale_min} and {args.scale_max}")
    try:  # the transform owns the valid ranges of its settings
        TrainTransform(args.crop_size, (args.scale_min, args.scale_max), 0.5, args.color_jitter, args.blur)
    except ValueError as e:
        parser.error(f"--color-jitter / --blur: {e}")
    if args.dataset == "synthetic" and min(args.synthetic_train, args.synthetic_val) < 1:
        parser.error("--synthetic-train and --synthetic-val must be positive")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    # BatchNorm in training needs two values per channel; after ASPP's image pooling there is one
    # per image, so one image per process fails unless SyncBatchNorm pools the processes' batches.
    sync = int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.sync_bn and device.type == "cuda"
    if args.batch_size < 2 and not sync:
        parser.error("--batch-size must be at least 2 per process: the BatchNorm after ASPP's image pooling sees one "
                     "value per channel and image, and cannot train on a single one (or use SyncBatchNorm across "
                     "GPUs with torchrun)")


def given_settings(argv=None) -> set[str]:
    """The settings (argparse ``dest`` names) given explicitly on the command line ``argv``."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# --------------------------------------------------------------------------- setup
def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(args, local_rank: int) -> torch.device:
    try:
        dev = resolve_device(args.device)
    except ValueError as e:
        raise RunError(str(e)) from None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def build_datasets(args):
    train_tf = TrainTransform(args.crop_size, (args.scale_min, args.scale_max), 0.5, args.color_jitter, args.blur)
    val_tf = EvalTransform(tuple(args.val_size) if args.val_size else None)
    if args.dataset == "synthetic":
        train = SyntheticUrbanScenes("train", args.synthetic_train, args.synthetic_size, args.data_seed, train_tf)
        val = SyntheticUrbanScenes("val", args.synthetic_val, args.synthetic_size, args.data_seed, val_tf)
    elif args.dataset == "cityscapes":
        train = Cityscapes(args.data_root, args.train_split, transform=train_tf)
        val = Cityscapes(args.data_root, args.val_split, transform=val_tf)
    else:
        train = BDD100K(args.data_root, args.train_split, transform=train_tf)
        val = BDD100K(args.data_root, args.val_split, transform=val_tf)
    return train, val


def build_model(args) -> DeepLabV3PlusHANet:
    layers = tuple(int(v) for v in str(args.hanet_layers).split(","))
    cfg = HANetConfig(rows=args.hanet_rows, reduction=args.hanet_reduction, dropout=args.hanet_dropout,
                      pos_encoding=None if args.no_pos_encoding else "sinusoidal",
                      pos_injection=args.hanet_pos_injection, pos_noise=args.hanet_pos_noise)
    pretrained = None if str(args.pretrained_backbone).lower() in ("none", "") else args.pretrained_backbone
    return deeplabv3plus(backbone=args.backbone, output_stride=args.output_stride, num_classes=NUM_CLASSES,
                         hanet_layers=layers, hanet=cfg, aux=not args.no_aux, pretrained_backbone=pretrained)


class _NullWriter:
    def add_scalar(self, *a, **k): pass
    def add_image(self, *a, **k): pass
    def flush(self): pass
    def close(self): pass


def _writer(out: str, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("hanet_fast.train: tensorboard is not installed (pip install tensorboard): no TensorBoard logs")
        return _NullWriter()
    return SummaryWriter(os.path.join(out, "tb"), purge_step=purge_step)


def create_run_folder(stamp: str, parent: str = "runs") -> str:
    """Create ``parent/stamp`` (or ``parent/stamp-2``, ``-3``... if taken) exclusively and return it:
    two runs started in the same second never share a folder."""
    os.makedirs(parent, exist_ok=True)
    for n in range(1, 10000):
        path = os.path.join(parent, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise RunError(f"no free run folder name {stamp}-N under {parent}: give --out")


def _check_out_folder(out: str, overwrite: bool) -> None:
    """RunError unless ``out`` can receive a new run: absent, empty, or with --overwrite."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"--out {out} is a file, not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        found = sorted(os.listdir(out))
        listing = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise RunError(f"--out {out} is not empty ({listing}): give --resume {out} to continue the run there, "
                       f"--overwrite to replace it, or another folder")


def _clear_run_folder(out: str) -> None:
    """--overwrite: remove an earlier run's outputs from ``out`` (other files stay), so that its
    checkpoint, metrics and TensorBoard events are not mixed with the new run's."""
    for name in _RUN_OUTPUTS:
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    tb = os.path.join(out, "tb")
    if os.path.isdir(tb):
        for name in os.listdir(tb):
            if name.startswith("events.out.tfevents."):
                os.remove(os.path.join(tb, name))


def _resume_settings(args, saved: dict, iteration: int, given: set[str] | None) -> list[str]:
    """Take the run's settings from its checkpoint's ``saved`` args into ``args``: RunError listing
    the flags given in ``given`` that would change the run; the mutable ones given there are kept.
    Returns a description of each setting that changed (for the log)."""
    preset = PRESETS.get(saved.get("preset"), {})
    parser = build_parser()

    def plain(v):  # tuples and lists, as saved in JSON-like form, compare equal
        return json.loads(json.dumps(v, default=str))

    def saved_value(key):  # a setting the run's code did not have yet ran at its default
        if key in saved:
            return saved[key]
        default = parser.get_default(key)
        return preset.get(key) if default == argparse.SUPPRESS else default

    explicit = set(_RESUME_MUTABLE) if given is None else given
    changing = [f"{_flag(k)} {getattr(args, k)} (the run's: {saved_value(k)})" for k in sorted(explicit)
                if k not in _RESUME_MUTABLE and k not in _RESUME_FRESH and plain(getattr(args, k)) != plain(saved_value(k))]
    if changing:
        raise RunError(f"--resume continues a run with its own settings; these flags would change it: "
                       f"{', '.join(changing)}. Leave them out, or start a new run with --out")
    changed = []
    for key, value in saved.items():
        if key in _RESUME_FRESH:
            continue
        if key in _RESUME_MUTABLE and key in explicit:
            if plain(getattr(args, key)) != plain(value):
                changed.append(f"{_flag(key)} {getattr(args, key)} (was {value})")
            continue
        setattr(args, key, tuple(value) if isinstance(value, list) else value)
    if args.iters < iteration:
        raise RunError(f"--iters {args.iters} is below the checkpoint's iteration {iteration}")
    return changed


def _error_text(e: BaseException) -> str:
    """The message of ``e`` in one line; for an error raised in a DataLoader worker, which arrives
    with the worker's traceback in its message, the worker's own message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(f"{type(e).__name__}: ", 1)[-1]
    return " ".join(text.split())


def _unwrap(model: nn.Module) -> DeepLabV3PlusHANet:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, dataset, device, args, rank: int = 0, world: int = 1):
    """Per-class IoU, mIoU and pixel accuracy over ``dataset`` (sharded over processes)."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    n = len(dataset) if not args.val_limit else min(args.val_limit, len(dataset))
    indices = list(range(rank, n, world))
    bs = args.val_batch_size or (8 if args.dataset == "synthetic" else 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=bs,
                                         num_workers=args.workers, generator=torch.Generator())
    if indices:
        conf = accumulate_confusion(net, loader, device, amp=args.amp, channels_last=args.channels_last)[0]
    else:  # more processes than validation images
        conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    if world > 1:
        conf = conf.to(device)
        dist.all_reduce(conf)
        conf = conf.cpu()
    net.train(was_training)
    return iou_from_confusion(conf)


def _autocast(args, device):
    return amp_context(args.amp, device)


@torch.no_grad()
def save_figures(model: nn.Module, dataset, device, args, out: str, writer, step: int) -> None:
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    k = max(1, min(args.num_vis, len(dataset)))
    samples = [dataset[i] for i in range(k)]
    images, masks, preds = [], [], []
    for i, s in enumerate(samples):
        img = s["image"][None].to(device)
        with _autocast(args, device):
            res = net(img, s["row_pos"][None].to(device), return_attention=(i == 0 and bool(net.hanet_modules)))
        images.append(s["image"])
        masks.append(s["mask"])
        preds.append(res.logits[0].argmax(0).cpu())
        if res.attention:
            if not attention_figure(s["image"], {n: a[0] for n, a in res.attention.items()}, os.path.join(out, "attention.png")):
                warnings.warn("hanet_fast.train: matplotlib is not installed: no attention.png")
    grid = prediction_grid(images, masks, preds)
    save_png(grid, os.path.join(out, "predictions.png"))
    writer.add_image("val/predictions", torch.from_numpy(grid).permute(2, 0, 1), step)
    net.train(was_training)


def announce(args, device: torch.device, net: DeepLabV3PlusHANet, train_set, val_set, world: int, start: int) -> None:
    """What a run is about to do, printed before its first slow step (the class statistics)."""
    layers = [name for name, on in zip(HANET_LAYERS, net.config.hanet_layers) if on]
    backends = sorted({resolve_backend(m.backend, device) for m in net.hanet_modules.values()})
    hanet = f"HANet {'+'.join(layers)} on the {'/'.join(backends)} backend" if layers else "no HANet (baseline)"
    compiled = f", torch.compile ({args.compile})" if args.compile else ""
    print(f"hanet_fast.train: {args.backbone} OS{args.output_stride}, {hanet}; device {device}"
          f"{f' x {world} processes' if world > 1 else ''}{compiled}\n"
          f"  data: {args.dataset}, {len(train_set)} training / {len(val_set)} validation images; "
          f"{args.iters} iterations of batch {args.batch_size}{f', resuming at {start}' if start else ''}\n"
          f"  run folder: {args.out or 'a new folder under runs/ (created once the data are checked)'}",
          flush=True)


# --------------------------------------------------------------------------- training
def train(args, given: set[str] | None = None) -> dict:
    """Run the training that ``args`` (from :func:`resolve_args`) describes; returns the final
    metrics (empty when stopped early). ``given``: the settings given on the command line (see
    :func:`given_settings`), which --resume checks against the checkpoint's; None: only the
    resume-mutable ones count as given.

    Raises:
        RunError: a bad setting, run folder or checkpoint, or a failed checkpoint write.
    """
    rank, world, local_rank = _dist_info()
    device = _device(args, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    main = rank == 0

    resume_state = None
    seconds_before = 0.0  # training time of the run before this resume
    if args.resume:
        try:
            resume_state = ckpt_io.load_training(args.resume)
        except ckpt_io.CheckpointError as e:
            raise RunError(f"--resume: {e}") from None
        changed = _resume_settings(args, resume_state["args"], int(resume_state["iteration"]), given)
        seconds_before = float(resume_state.get("train_seconds", 0.0))
        run_dir = os.path.dirname(os.path.abspath(args.resume)) if os.path.isfile(args.resume) else args.resume
        if args.out is None:
            args.out = run_dir
        elif os.path.realpath(args.out) != os.path.realpath(run_dir):
            _check_out_folder(args.out, args.overwrite)
        if main:
            print(f"hanet_fast.train: resuming {args.resume} at iteration {resume_state['iteration']}"
                  + (f" with {', '.join(changed)}" if changed else ""), flush=True)
    elif args.out is not None:
        _check_out_folder(args.out, args.overwrite)
    # The thread count changes CPU reductions in the last bits: a resume keeps the run's.
    saved_threads = resume_state.get("threads") if resume_state is not None else None
    if args.threads:
        torch.set_num_threads(args.threads)
    elif saved_threads and given is not None and "threads" not in given:
        torch.set_num_threads(int(saved_threads))
    if saved_threads and torch.get_num_threads() != saved_threads and main:
        warnings.warn(f"hanet_fast.train: resuming with {torch.get_num_threads()} threads where the run used "
                      f"{saved_threads}: CPU results may differ in the last bits from an uninterrupted run")
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    if world > 1:  # every rank has checked the run folder before rank 0 writes into it
        dist.barrier()

    torch.manual_seed(args.seed)
    train_set, val_set = build_datasets(args)
    try:
        model = build_model(args).to(device)
    except (ValueError, FileNotFoundError) as e:  # an unknown backbone, a missing weights file
        raise RunError(str(e)) from None
    if world > 1:  # same initial weights everywhere, then a different dropout / jitter stream per rank
        torch.manual_seed(args.seed + 1000003 * rank)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        compile_model(model, args.compile)
    net = model
    groups = net.param_groups(args.weight_decay, args.hanet_weight_decay)
    for grp in groups:
        grp["lr"] = args.hanet_lr if grp["name"] == "hanet" else args.lr
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    scheduler = poly_scheduler(optimizer, args.iters,
                               [args.hanet_poly_power if g["name"] == "hanet" else args.poly_power for g in groups])
    scaler = torch.amp.GradScaler(device.type, enabled=(args.amp == "fp16"))
    start = 0
    if resume_state is not None:
        net.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if "scaler" in resume_state and resume_state["scaler"]:
            scaler.load_state_dict(resume_state["scaler"])
        start = int(resume_state["iteration"])
        per_rank = resume_state.get("rng_per_rank") or [resume_state["rng"]]
        _set_rng_state(per_rank[rank] if rank < len(per_rank) else resume_state["rng"])
    if world > 1:
        if args.sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif args.sync_bn and main:
            print("hanet_fast.train: SyncBatchNorm needs GPUs; using per-process BatchNorm on CPU", file=sys.stderr)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = _unwrap(model)
    if main:
        announce(args, device, net, train_set, val_set, world, start)

    centroids = None
    if args.class_uniform_pct > 0:
        if main or world == 1:
            centroids = class_centroids(train_set, args.cache_dir, args.class_uniform_tile or None,
                                        progress=main and not args.no_progress)
        if world > 1:
            holder = [centroids]
            dist.broadcast_object_list(holder, src=0)
            centroids = holder[0]

    # Only now, with the settings, checkpoint and data checked, is anything written.
    if main:
        try:
            if args.out is None:
                args.out = create_run_folder(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
            else:
                os.makedirs(args.out, exist_ok=True)
                if args.overwrite and not (resume_state is not None and os.path.samefile(args.out, run_dir)):
                    _clear_run_folder(args.out)
            for tmp in ckpt_io.remove_stale_temporaries(os.path.join(args.out, "checkpoint.pt")):
                print(f"hanet_fast.train: removed {tmp}, left by an interrupted checkpoint write", file=sys.stderr)
            with open(os.path.join(args.out, "args.json"), "w") as f:
                json.dump(vars(args), f, indent=1, default=str)
            print(f"hanet_fast.train: writing to {args.out} (TensorBoard: tensorboard --logdir "
                  f"{os.path.join(args.out, 'tb')})", flush=True)
        except OSError as e:
            raise RunError(f"cannot write the run folder {args.out or 'runs'}: {e.strerror or e}") from None
    if world > 1:  # every rank must agree on the folder
        holder = [args.out]
        dist.broadcast_object_list(holder, src=0)
        args.out = holder[0]
    out = args.out
    sampler = TrainSampler(len(train_set), args.batch_size, args.iters, args.seed, start, rank, world, centroids,
                           args.class_uniform_pct)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", generator=torch.Generator(),
                                         persistent_workers=False)
    # Events the interrupted run logged after its checkpoint are hidden; they are logged again.
    writer = _writer(out, start + 1 if resume_state is not None else None) if main else _NullWriter()
    stop = min(args.iters, args.stop_after) if args.stop_after else args.iters

    def save(iteration: int) -> None:
        states = [_rng_state()]
        if world > 1:  # every rank's RNG (dropout, HANet position jitter) so a resume continues exactly
            states = [None] * world
            dist.all_gather_object(states, _rng_state())
        if not main:
            return
        try:
            ckpt_io.save_atomic({
                "iteration": iteration, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": states[0], "rng_per_rank": states, "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
                "model_config": json.loads(json.dumps(dataclasses.asdict(net.config))),
                "threads": torch.get_num_threads(), "train_seconds": seconds_before + time.time() - t0,
            }, os.path.join(out, "checkpoint.pt"))
        except ckpt_io.CheckpointError as e:
            raise RunError(str(e), status=1) from None

    progress = None
    if main and not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(total=stop, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)
    t0 = time.time()
    t_last, n_last = time.time(), 0
    model.train()
    it = start
    result: dict = {}
    for batch in loader:
        if it >= stop:
            break
        images = batch["image"].to(device, non_blocking=True)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        masks = batch["mask"].to(device, non_blocking=True)
        row_pos = batch["row_pos"].to(device, non_blocking=True)
        with _autocast(args, device):
            res = model(images, row_pos)
        loss, parts = segmentation_loss(res.logits, masks, res.aux_logits, args.aux_weight,
                                        class_weighted=args.cls_wt_loss, image_weighted=args.img_wt_loss,
                                        batch_weighting=args.batch_weighting, wt_bound=args.wt_bound)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        it += 1
        n_last += images.shape[0] * world
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"hanet_fast.train: loss is {loss_value} at iteration {it}")
        if main:
            lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
            if it % args.log_every == 0 or it == stop:
                ips = n_last / max(time.time() - t_last, 1e-9)
                writer.add_scalar("train/loss", loss_value, it)
                for k, v in parts.items():
                    writer.add_scalar(f"train/loss_{k}", float(v), it)
                for k, v in lrs.items():
                    writer.add_scalar(f"train/lr_{k}", v, it)
                writer.add_scalar("train/images_per_s", ips, it)
                t_last, n_last = time.time(), 0
            if progress is not None:
                progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lrs['main']:.2e}",
                                     img_s=f"{(it - start) * args.batch_size * world / max(time.time() - t0, 1e-9):.1f}",
                                     refresh=False)
                progress.update(1)
        if args.ckpt_every and it % args.ckpt_every == 0 and it < stop:
            save(it)
        if args.val_every and it % args.val_every == 0 and it < args.iters:
            ious, miou, acc = evaluate(model, val_set, device, args, rank, world)
            if main:
                writer.add_scalar("val/mIoU", miou, it)
                writer.add_scalar("val/pixel_acc", acc, it)
                msg = f"iteration {it}: val mIoU {100 * miou:.2f}%"
                (progress.write(msg) if progress is not None else print(msg, flush=True))
    if progress is not None:
        progress.close()
    train_time = seconds_before + time.time() - t0
    save(it)
    if it >= args.iters:
        ious, miou, acc = evaluate(model, val_set, device, args, rank, world)
        if main:
            writer.add_scalar("val/mIoU", miou, it)
            writer.add_scalar("val/pixel_acc", acc, it)
            for name, v in zip(CLASS_NAMES, ious):
                if not math.isnan(v):
                    writer.add_scalar(f"val_iou/{name}", v, it)
            save_figures(model, val_set, device, args, out, writer, it)
            print(f"\nValidation ({args.dataset} {'val' if args.dataset == 'synthetic' else args.val_split}, "
                  f"{len(val_set) if not args.val_limit else min(args.val_limit, len(val_set))} images) "
                  f"after {it} iterations:")
            print(format_table(ious, miou, acc))
            result = {"iteration": it, "mIoU": miou, "pixel_acc": acc,
                      "iou": {n: (None if math.isnan(v) else v) for n, v in zip(CLASS_NAMES, ious)},
                      "train_seconds": train_time, "world_size": world, "device": str(device)}
            with open(os.path.join(out, "metrics.json"), "w") as f:
                json.dump(result, f, indent=1)
    elif main:
        print(f"hanet_fast.train: stopped after iteration {it} of {args.iters}; continue with --resume "
              f"{os.path.join(out, 'checkpoint.pt')}")
    writer.close()
    if main:
        print(f"run folder: {out}")
    return result


def main(argv=None) -> int:
    args = resolve_args(argv)
    try:
        train(args, given_settings(argv))
    except (RunError, DatasetError) as e:
        build_parser().exit(getattr(e, "status", 2), f"python -m hanet_fast.train: error: {_error_text(e)}\n")
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
