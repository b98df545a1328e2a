"""Train DeepLabv3+ with HANet (paper §4.1-4.3; DESIGN §5).

With no arguments it trains DeepLabv3+ MobileNetV2 (output stride 16) + HANet on the built-in
synthetic urban scenes on whatever device there is, then prints a per-class IoU table and the
mIoU on the synthetic validation split and leaves in its run folder (``runs/<timestamp>``,
``--out``)::

    checkpoint.pt      the last checkpoint (atomic; every --ckpt-every iterations and at the end)
    best.pt            the checkpoint of the best validation mIoU so far (atomic; kept across --resume)
    metrics.json       final per-class IoU, mIoU, pixel accuracy, wall time, the best validation
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
the run there or ``--overwrite`` replaces it; a run holds its folder while it lasts (a second run
into it is refused). Ctrl-C names the checkpoint to ``--resume`` from (exit 130); a diverging run
(loss or weights NaN or Inf) stops in one line (exit 1) and never checkpoints NaN weights.

Real data, multi-node runs and the official recipes: docs/training.md.

From Python: ``from hanet_fast.training import TrainConfig, Trainer`` (this module only parses
the flags into a :class:`~hanet_fast.training.TrainConfig` and runs ``Trainer(config).fit()``).

Presets (``--preset NAME``, :mod:`hanet_fast.training.presets`; explicit flags override them;
``--help`` lists them in a table and ``--preset NAME --print-config`` prints every setting of one):

- ``synthetic-mobilenet`` (the default): built-in data 128x256, MobileNetV2 OS16, HANet L1-L4,
  crop 64x128, batch 8, 300 iterations (validation and checkpoint every 100), no pretrained
  weights (nothing to download).
- one preset per training script of the official code (github.com/shachoi/HANet ``scripts/``),
  named after it: ``train_r101_os8_hanet``, ``train_r101_os8_hanet_best``,
  ``train_r101_os16_hanet``, ``train_m_os16_hanet``, ``train_resnext_pretrain`` (Mapillary
  Vistas) and ``train_resnext_fr_pretrain`` (``--init-from`` the Mapillary network, coarse
  boosting), with every setting the script passes and the official ``train.py`` defaults for
  the rest; they validate after every epoch (``--val-every epoch``).
  ``--batch-size`` is per process: run them with ``torchrun --nproc_per_node=N`` for the
  script's N GPUs (the table's "batch" column) to get its total batch.
- ``bdd100k-r101-os16`` and ``bdd100k-mobilenet-os16``: BDD100K as the paper trains it (§4.3:
  crop 608, total batch 16, 60k iterations; no official script), otherwise as
  ``train_r101_os16_hanet`` / ``train_m_os16_hanet``.
"""

from __future__ import annotations

import argparse
import sys

from hanet_fast._cli import HelpFormatter, add_compile_arg, size_arg
from hanet_fast._messages import one_line
from hanet_fast.data import DatasetError
from hanet_fast.training.config import AMP_CHOICES, DATASET_NAMES, OUTPUT_STRIDES, ConfigError, TrainConfig
from hanet_fast.training.errors import RunError
from hanet_fast.training.presets import DEFAULT_PRESET, PRESETS, format_config, preset_table
from hanet_fast.training.resume import flag
from hanet_fast.training.trainer import Trainer

__all__ = ["build_parser", "resolve_args", "given_settings", "main"]


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line in one line (the usage of this many flags would bury it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _HelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Flag defaults shown, and the epilog's preset table kept as laid out."""


def _val_every(text: str) -> int | str:
    """``--val-every``: ``epoch`` or a count of iterations."""
    if text == "epoch":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of iterations or 'epoch', got {text!r}") from None


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
    g.add_argument("--dataset", choices=list(DATASET_NAMES), default=S,
                   help="training data (preset default: synthetic)")
    g.add_argument("--data-root", default=None, help="data set root (cityscapes: holds leftImg8bit/ and gtFine/; "
                   "bdd100k: holds images/10k/ and labels/sem_seg/masks/; mapillary: holds config.json, training/ "
                   "and validation/, each with images/ and labels/)")
    g.add_argument("--train-split", default=S, help="training split (cityscapes/bdd100k/mapillary; preset default: train)")
    g.add_argument("--val-split", default="val", help="validation split (cityscapes/bdd100k/mapillary)")
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
    g.add_argument("--coarse-boost-classes", default=S, metavar="IDS",
                   help="cityscapes: comma-separated train ids whose class-uniform crops are also drawn from the "
                        "coarse leftImg8bit/train_extra + gtCoarse/train_extra images (official "
                        "--coarse_boost_classes, e.g. 14,15,16,3,12,17,4; empty: off)")
    g.add_argument("--max-cu-epoch", type=int, default=S,
                   help="with --coarse-boost-classes: epochs after this one draw class-uniform crops from the fine "
                        "images only (official --max_cu_epoch 10000)")
    g.add_argument("--cache-dir", default=None, help="class-centroid cache folder (default $HANET_FAST_CACHE or ~/.cache/hanet_fast)")
    g.add_argument("--val-size", type=size_arg, metavar="HxW", default=None, help="resize validation images to HxW (default: as they are)")
    g.add_argument("--val-batch-size", type=int, default=0, help="validation batch size per process (0: 8 synthetic, 4 mapillary, 1 otherwise)")
    g.add_argument("--val-limit", type=int, default=0, help="validate on the first N images only (0: all)")

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=S, help="mobilenet_v2, resnet50, resnet101, resnet101_deepstem, resnet152, "
                   "resnext50_32x4d, resnext101_32x8d, wide_resnet50_2, wide_resnet101_2, shufflenet_v2_x1_0, "
                   "mnasnet0_5, mnasnet1_0, or timm:NAME for any timm model (e.g. timm:convnext_atto; pip install -e '.[timm]')")
    g.add_argument("--output-stride", type=int, choices=list(OUTPUT_STRIDES), default=S,
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
    g.add_argument("--pretrained-backbone", default=S, help="none, imagenet (torchvision weights; timm's default pretrained tag for timm:NAME), or a file path")
    g.add_argument("--no-aux", dest="no_aux", action="store_true", default=S, help="no auxiliary head / loss")
    g.add_argument("--aux", dest="no_aux", action="store_false", default=S,
                   help="the auxiliary head and loss (overrides a preset's --no-aux)")
    g.add_argument("--init-from", default=S, metavar="CHECKPOINT",
                   help="initialise the whole network from a checkpoint of ours (file or run folder) or an official "
                        "HANet snapshot: every tensor whose name and shape match is loaded, the others are listed and "
                        "keep their initialisation; no optimiser state (not a resume; preset default: none)"),

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
    g.add_argument("--amp", choices=list(AMP_CHOICES), default="off", help="autocast dtype (fp16 uses a GradScaler)")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU)")
    add_compile_arg(g)
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true", default=S, help="SyncBatchNorm under DDP on GPU")
    g.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=S, help="plain BatchNorm under DDP")

    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, default=10, help="TensorBoard scalar interval (iterations)")
    g.add_argument("--val-every", type=_val_every, default=S, metavar="N|epoch",
                   help="validation interval: N iterations (0: only at the end) or 'epoch' (after every epoch of the "
                        "sampler, as the official trainer); each validation that beats the best so far writes best.pt")
    g.add_argument("--ckpt-every", type=int, default=S, help="checkpoint interval (iterations; always at the end)")
    g.add_argument("--num-vis", type=int, default=4, help="validation samples in predictions.png")
    return p


def resolve_args(argv=None) -> TrainConfig:
    """Parse ``argv`` into the :class:`TrainConfig` it describes (the preset's settings with the
    flags given applied); a bad value exits with one line naming its flag (status 2), and
    ``--print-config`` prints the settings and exits (status 0)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.baseline and hasattr(args, "hanet_layers"):
        parser.error("--baseline means no HANet: leave out --hanet-layers (or give --hanet-layers 0,0,0,0,0 alone)")
    for key, value in PRESETS[args.preset].items():
        if not hasattr(args, key):
            setattr(args, key, value)
    settings = {k: v for k, v in vars(args).items() if k != "print_config"}
    if args.print_config:
        print(format_config(settings))
        parser.exit(0)
    try:
        return TrainConfig(**settings)
    except ConfigError as e:
        parser.error(e.text(flag))


def given_settings(argv=None) -> set[str]:
    """The settings (argparse ``dest`` names) given explicitly on the command line ``argv``."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _interrupted(trainer: Trainer) -> str:
    """What a Ctrl-C leaves: the checkpoint to ``--resume`` from, if the run wrote one."""
    if trainer.last_checkpoint is None:
        return f"interrupted at iteration {trainer.iteration}, before the run's first checkpoint: nothing to resume"
    path, iteration = trainer.last_checkpoint
    return f"interrupted at iteration {trainer.iteration}; continue with --resume {path} (iteration {iteration})"


def main(argv=None) -> int:
    """Train as the command line ``argv`` says; returns 0, or exits with one line (status 2 for
    bad input, 1 for a fault during the run such as a full disk or a diverged run, 130 for Ctrl-C)."""
    config = resolve_args(argv)
    trainer = Trainer(config, given=given_settings(argv))
    try:
        trainer.fit()
    except (RunError, DatasetError) as e:
        build_parser().exit(getattr(e, "status", 2), f"python -m hanet_fast.train: error: {one_line(e)}\n")
    except KeyboardInterrupt:  # the newline ends a progress bar's line
        build_parser().exit(130, f"\npython -m hanet_fast.train: {_interrupted(trainer)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
