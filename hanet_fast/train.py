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
sampler position and RNG states); the run's settings are taken from the checkpoint.

Presets (``--preset NAME``; explicit flags override them):

- ``synthetic-mobilenet`` (the default): built-in data 128x256, MobileNetV2 OS16, HANet L1-L4,
  crop 64x128, batch 8, 300 iterations (validation and checkpoint every 100), lr 0.01 (HANet 0.01), scale 0.5-2, class-uniform 0.5,
  no pretrained weights (nothing to download).
- ``cityscapes-r101-os8``: the paper's / official ``train_r101_os8_hanet_best.sh``: Cityscapes
  fine train, ResNet-101 deep stem, OS 8, HANet L1-L4 (16 rows, r 32, sinusoidal encoding at
  conv 2, jitter 0.5, dropout 0.1), ImageNet backbone, crop 768x768, total batch 8 (``--batch-size
  2`` x 4 GPUs: run it with ``torchrun --nproc_per_node=4``), 40k iterations, lr 0.01 and HANet
  lr 0.01, poly 0.9 both, weight decay 5e-4 / HANet 1e-4, scale 0.5-2, color jitter 0.25,
  gaussian blur, class-uniform 0.5 with 1024 tiles, aux loss 0.4, SyncBN.
- ``cityscapes-r101-os16``: the same at output stride 16.
- ``cityscapes-r50-os8``: ResNet-50 (torchvision stem), otherwise as cityscapes-r101-os8.
- ``bdd100k-r101-os16``: BDD100K (paper §4.3, Table 7): crop 608x608, total batch 16
  (``--batch-size 4`` x 4 GPUs), 60k iterations, OS 16, otherwise as cityscapes-r101-os8.
- ``bdd100k-mobilenet-os16``: the same with MobileNetV2 (Table 7's first row).
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

from hanet_fast._cli import size_arg
from hanet_fast._cli import HelpFormatter, add_compile_arg, compile_model
from hanet_fast.data import (BDD100K, CLASS_NAMES, NUM_CLASSES, Cityscapes, EvalTransform, SyntheticUrbanScenes,
                             TrainSampler, TrainTransform, class_centroids)
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

_PAPER = dict(
    hanet_layers="1,1,1,1,0", hanet_rows=16, hanet_reduction=32, hanet_pos_injection=2, hanet_pos_noise=0.5,
    hanet_dropout=0.1, lr=0.01, hanet_lr=0.01, poly_power=0.9, hanet_poly_power=0.9, weight_decay=5e-4,
    hanet_weight_decay=1e-4, momentum=0.9, aux_weight=0.4, scale_min=0.5, scale_max=2.0, color_jitter=0.25,
    blur=0.5, class_uniform_pct=0.5, pretrained_backbone="imagenet", sync_bn=True,
    synthetic_size=(128, 256), synthetic_train=2000, synthetic_val=100,
)

PRESETS: dict[str, dict] = {
    "synthetic-mobilenet": dict(
        _PAPER, dataset="synthetic", backbone="mobilenet_v2", output_stride=16, crop_size=(64, 128), batch_size=8,
        iters=300, pretrained_backbone="none", synthetic_size=(128, 256), synthetic_train=2000, synthetic_val=100,
        class_uniform_tile=0, val_every=100, ckpt_every=100,
    ),
    "cityscapes-r101-os8": dict(
        _PAPER, dataset="cityscapes", backbone="resnet101_deepstem", output_stride=8, crop_size=(768, 768),
        batch_size=2, iters=40000, class_uniform_tile=1024, val_every=2000, ckpt_every=2000,
    ),
}
PRESETS["cityscapes-r101-os16"] = dict(PRESETS["cityscapes-r101-os8"], output_stride=16)
PRESETS["cityscapes-r50-os8"] = dict(PRESETS["cityscapes-r101-os8"], backbone="resnet50")
PRESETS["bdd100k-r101-os16"] = dict(
    PRESETS["cityscapes-r101-os8"], dataset="bdd100k", output_stride=16, crop_size=(608, 608), batch_size=4,
    iters=60000, class_uniform_tile=640,
)
PRESETS["bdd100k-mobilenet-os16"] = dict(PRESETS["bdd100k-r101-os16"], backbone="mobilenet_v2")

DEFAULT_PRESET = "synthetic-mobilenet"

# Settings a resumed run takes from the command line rather than from the checkpoint.
_RUNTIME_KEYS = ("out", "resume", "workers", "no_progress", "stop_after", "device", "cache_dir", "threads",
                 "log_every", "deterministic", "compile")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hanet_fast.train",
        description="Train DeepLabv3+ with HANet (height-driven attention, CVPR 2020) for urban-scene segmentation. "
                    "With no arguments: MobileNetV2 + HANet on the built-in synthetic street scenes.",
        epilog="Presets: " + "; ".join(
            f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())) for name, cfg in PRESETS.items()),
        formatter_class=HelpFormatter,
    )
    S = argparse.SUPPRESS  # defaults come from the preset (shown in the epilog)
    g = p.add_argument_group("run")
    g.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help="a set of defaults (see the epilog); explicit flags override it")
    g.add_argument("--out", default=None, help="run folder (default runs/<timestamp>; with --resume, the checkpoint's folder)")
    g.add_argument("--resume", default=None, help="checkpoint file (or run folder) to continue exactly")
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
    g.add_argument("--train-split", default="train", help="training split (cityscapes/bdd100k)")
    g.add_argument("--val-split", default="val", help="validation split (cityscapes/bdd100k)")
    g.add_argument("--synthetic-size", type=size_arg, metavar="HxW", default=S, help="synthetic scene size HxW (preset: 128x256)")
    g.add_argument("--synthetic-train", type=int, default=S, help="number of synthetic training scenes (preset: 2000)")
    g.add_argument("--synthetic-val", type=int, default=S, help="number of synthetic validation scenes (preset: 100)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic scenes")
    g.add_argument("--crop-size", type=size_arg, metavar="HxW", default=S, help="training crop HxW (or one size)")
    g.add_argument("--scale-min", type=float, default=S, help="random scale minimum (paper: 0.5)")
    g.add_argument("--scale-max", type=float, default=S, help="random scale maximum (paper: 2.0)")
    g.add_argument("--color-jitter", type=float, default=S, help="colour jitter strength (0: off)")
    g.add_argument("--blur", type=float, default=S, help="probability of gaussian blur")
    g.add_argument("--class-uniform-pct", type=float, default=S,
                   help="fraction of class-uniform samples (paper §4.1; 0: off)")
    g.add_argument("--class-uniform-tile", type=int, default=S, help="centroid tile size (0: image height // 2)")
    g.add_argument("--cache-dir", default=None, help="class-centroid cache folder (default $HANET_FAST_CACHE or ~/.cache/hanet_fast)")
    g.add_argument("--val-size", type=size_arg, metavar="HxW", default=None, help="resize validation images to HxW (default: as they are)")
    g.add_argument("--val-batch-size", type=int, default=0, help="validation batch size per process (0: 8 synthetic, 1 otherwise)")
    g.add_argument("--val-limit", type=int, default=0, help="validate on the first N images only (0: all)")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=S, help="mobilenet_v2, resnet50, resnet101, resnet101_deepstem, resnext101_32x8d, "
                   "wide_resnet50_2, wide_resnet101_2, shufflenet_v2_x1_0")
    g.add_argument("--output-stride", type=int, choices=[8, 16, 32], default=S, help="backbone output stride")
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


def resolve_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` and fill in the preset's defaults (and, with --resume, the checkpoint's settings)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for key, value in preset.items():
        if not hasattr(args, key):
            setattr(args, key, value)
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
    return args


# --------------------------------------------------------------------------- setup
def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(args, local_rank: int) -> torch.device:
    if args.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(args.device)
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


def _writer(out: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("hanet_fast.train: tensorboard is not installed (pip install tensorboard): no TensorBoard logs")
        return _NullWriter()
    return SummaryWriter(os.path.join(out, "tb"))


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
    print(f"hanet_fast.train: {args.backbone} OS{args.output_stride}, {hanet}; device {device}"
          f"{f' x {world} processes' if world > 1 else ''}{', torch.compile' if args.compile else ''}\n"
          f"  data: {args.dataset}, {len(train_set)} training / {len(val_set)} validation images; "
          f"{args.iters} iterations of batch {args.batch_size}{f', resuming at {start}' if start else ''}\n"
          f"  run folder: {args.out} (TensorBoard: tensorboard --logdir {os.path.join(args.out, 'tb')})",
          flush=True)


# --------------------------------------------------------------------------- training
def train(args) -> dict:
    rank, world, local_rank = _dist_info()
    device = _device(args, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    main = rank == 0

    resume_state = None
    if args.resume:
        resume_state = ckpt_io.load(args.resume)
        saved = resume_state["args"]
        for key, value in saved.items():
            if key not in _RUNTIME_KEYS:
                setattr(args, key, tuple(value) if isinstance(value, list) else value)
        if args.out is None:
            args.out = os.path.dirname(os.path.abspath(args.resume)) if os.path.isfile(args.resume) else args.resume
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        if world > 1:  # every rank must agree on the folder
            holder = [stamp]
            dist.broadcast_object_list(holder, src=0)
            stamp = holder[0]
        args.out = os.path.join("runs", stamp)
    out = args.out
    if main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1, default=str)

    torch.manual_seed(args.seed)
    train_set, val_set = build_datasets(args)
    model = build_model(args).to(device)
    if world > 1:  # same initial weights everywhere, then a different dropout / jitter stream per rank
        torch.manual_seed(args.seed + 1000003 * rank)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        compile_model(model)
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
    sampler = TrainSampler(len(train_set), args.batch_size, args.iters, args.seed, start, rank, world, centroids,
                           args.class_uniform_pct)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", generator=torch.Generator(),
                                         persistent_workers=False)
    writer = _writer(out) if main else _NullWriter()
    stop = min(args.iters, args.stop_after) if args.stop_after else args.iters

    def save(iteration: int) -> None:
        states = [_rng_state()]
        if world > 1:  # every rank's RNG (dropout, HANet position jitter) so a resume continues exactly
            states = [None] * world
            dist.all_gather_object(states, _rng_state())
        if not main:
            return
        ckpt_io.save_atomic({
            "iteration": iteration, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": states[0], "rng_per_rank": states, "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
            "model_config": json.loads(json.dumps(dataclasses.asdict(net.config))),
        }, os.path.join(out, "checkpoint.pt"))

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
        loss, parts = segmentation_loss(res.logits, masks, res.aux_logits, args.aux_weight)
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
    train_time = time.time() - t0
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
        train(args)
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
