"""Evaluate a trained network: per-class IoU, mIoU, pixel accuracy, mIoU per horizontal region
(paper §4.2.4, Table 5), with optional multi-scale, flip and sliding-window inference (paper
§4.2.3, Table 4); DESIGN §5.

::

    python -m hanet_fast.evaluate --checkpoint runs/<timestamp>            # our run: its data by default
    python -m hanet_fast.evaluate --checkpoint hanet_r101_os8.pth --data-root /data/cityscapes \\
        --scales 0.5,1.0,2.0 --flip --sliding 864x864 --save-labelids preds/ --official --json metrics.json

The checkpoint is ours (``checkpoint.pt`` of ``python -m hanet_fast.train`` or its run folder,
which gives its last ``checkpoint.pt``, or with ``--run-checkpoint best`` its ``best.pt``)
or an official HANet one (detected automatically). Without ``--dataset`` our checkpoints are
evaluated on their training data set (for the synthetic scenes: the same size, number of
validation scenes and data seed), official ones on Cityscapes.

The numbers are counted as the official Cityscapes evaluation counts them (see
:mod:`hanet_fast.training.metrics`): ``--save-labelids DIR`` writes every prediction as a
Cityscapes labelId PNG (``<city>_<seq>_<frame>_labelIds.png`` for Cityscapes images, which is
what cityscapesscripts' ``evalPixelLevelSemanticLabeling`` and the benchmark server look for; the
image's name otherwise), and ``--official`` runs cityscapesscripts on those files and checks that
its per-class IoUs and mIoU equal ours.

Protocols: ``--protocol ours`` (the default) is :func:`hanet_fast.inference.predict`'s test-time
augmentation with ``--scales``, ``--flip``, ``--sliding``; ``--protocol official-sliding`` and
``official-pooling`` reproduce the official HANet ``eval.py`` (see
:mod:`hanet_fast.official_eval`), with ``--crop-size``, ``--scales`` (default 0.5,1.0,2.0),
``--overlap`` and flipping on unless ``--no-flip``.

Regions: ``--regions R`` cuts every image into ``R`` horizontal bands of equal height (4 as in
Table 5: upper, mid-upper, mid-lower, lower) and reports each band's mIoU over the pixels in it.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch

from hanet_fast import _io
from hanet_fast._cli import (add_compile_arg, add_run_checkpoint_arg, check_outputs, checkpoint_files, compile_model,
                             error_exit, image_size, interrupted, parse_args, resolve_device, run_checkpoint,
                             same_size_batches, scales_arg, size_arg)
from hanet_fast.data import (BDD100K, CLASS_NAMES, DATASETS, NUM_CLASSES, Cityscapes, DatasetError, EvalTransform,
                             SyntheticUrbanScenes, build_dataset, labels_for, official_eval_transform)
from hanet_fast.data.mapillary import MAPILLARY_EVAL_HEIGHT
from hanet_fast.data.labels import train_to_label_lut
from hanet_fast.data.synthetic import SPLIT_IDS
from hanet_fast.evaluation import accumulate_confusion
from hanet_fast.inference import AMP_MODES, load_model
from hanet_fast.official_eval import OFFICIAL_CROP_SIZE, OFFICIAL_PROTOCOLS, OFFICIAL_SCALES, PROTOCOLS, ProtocolError
from hanet_fast.training.metrics import format_region_table, format_table, iou_from_confusion, region_names

__all__ = ["official_cityscapes_scores", "prediction_filename", "build_parser", "main"]

# Used when a checkpoint's training settings do not say (official checkpoints, or older runs).
_SYNTHETIC_DEFAULTS = {"synthetic_size": (128, 256), "synthetic_val": 100, "data_seed": 0}


# --------------------------------------------------------------------------- Cityscapes format
def prediction_filename(image_path: str | None, fallback: str) -> str:
    """File name of a saved prediction: ``<city>_<seq>_<frame>_labelIds.png`` for a Cityscapes
    ``*_leftImg8bit.*`` image, ``<stem>.png`` for other images, ``<fallback>.png`` without a path."""
    if not image_path:
        return f"{fallback}.png"
    stem = os.path.splitext(os.path.basename(image_path))[0]
    if stem.endswith("_leftImg8bit"):
        return stem[: -len("_leftImg8bit")] + "_labelIds.png"
    return f"{stem}.png"


def official_cityscapes_scores(pred_files: Sequence[str], gt_files: Sequence[str]) -> dict:
    """cityscapesscripts' ``evalPixelLevelSemanticLabeling`` on labelId PNGs, run in-process.

    Returns ``{"iou": {class name: IoU (nan where absent)}, "mIoU": float}`` for the 19 classes.
    Instance-level scores are not computed (they need the ``*_instanceIds.png`` files).
    """
    try:
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs
    except ImportError as err:
        raise RuntimeError("hanet_fast.evaluate: --official needs cityscapesscripts (pip install cityscapesscripts)") from err
    # Its module-level settings object; a copy keeps the global one untouched.
    cs_args = copy.copy(cs.args)
    cs_args.evalInstLevelScore = False
    cs_args.evalPixelAccuracy = False
    cs_args.JSONOutput = False
    cs_args.quiet = True
    cs_args.colorized, cs_args.bold, cs_args.nocol = False, "", ""
    try:
        result = cs.evaluateImgLists(list(pred_files), list(gt_files), cs_args)
    except SystemExit as err:  # its printError() exits after printing the reason
        raise RuntimeError("hanet_fast.evaluate: cityscapesscripts' evaluation failed (its message is above)") from err
    return {"iou": {name: float(result["classScores"][name]) for name in CLASS_NAMES},
            "mIoU": float(result["averageScoreClasses"])}


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hanet_fast.evaluate",
        description="Evaluate a HANet checkpoint (ours or official): per-class IoU, mIoU, pixel accuracy and mIoU "
                    "per horizontal region, with optional multi-scale / flip / sliding-window inference.",
    )
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", required=True,
                   help="our checkpoint.pt (or its run folder) or an official HANet checkpoint")
    add_run_checkpoint_arg(g)
    g.add_argument("--backbone", default=None, help="official checkpoints: backbone, if it cannot be inferred")
    g.add_argument("--output-stride", type=int, choices=[4, 8, 16, 32], default=None,
                   help="output stride (official checkpoints without a saved command need it; ours: override)")
    g.add_argument("--device", default="auto", help="auto (default: cuda if available, else cpu), cpu, cuda, cuda:N")
    g.add_argument("--amp", choices=list(AMP_MODES), default="off", help="autocast dtype (default: off)")
    add_compile_arg(g)

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="data set (default: the checkpoint's training data set; cityscapes for official checkpoints)")
    g.add_argument("--data-root", default=None,
                   help="data set root (default: the checkpoint's); cityscapes: holds leftImg8bit/ and gtFine/, "
                        "bdd100k: holds images/10k/ and labels/sem_seg/masks/, mapillary: holds config.json, "
                        "training/ and validation/")
    g.add_argument("--split", default="val", help="split to evaluate (default: val; synthetic: train, val or test)")
    g.add_argument("--full-images", action="store_true",
                   help="mapillary: score the full images, not the official validation view (each image resized to "
                        f"{MAPILLARY_EVAL_HEIGHT} rows, its centre {MAPILLARY_EVAL_HEIGHT} columns kept), which the "
                        "training runs and the paper's numbers use")
    g.add_argument("--synthetic-size", type=size_arg, metavar="HxW", default=None,
                   help="synthetic scene size HxW (default: the checkpoint's, else 128x256)")
    g.add_argument("--synthetic-val", type=int, default=None,
                   help="number of synthetic scenes (default: the checkpoint's validation count, else 100)")
    g.add_argument("--data-seed", type=int, default=None, help="seed of the synthetic scenes (default: the checkpoint's)")
    g.add_argument("--limit", type=int, default=0, help="evaluate the first N images only (default 0: all)")
    g.add_argument("--batch-size", type=int, default=0, help="images per batch (default 0: 8 synthetic, 1 otherwise)")
    g.add_argument("--workers", type=int, default=1,
                   help="data loader worker processes (default: 1; 0: load in the main process)")

    g = p.add_argument_group("test-time augmentation (paper Table 4)")
    g.add_argument("--protocol", choices=list(PROTOCOLS), default="ours",
                   help="ours (default): our test-time augmentation (--scales, --flip, --sliding); official-sliding, "
                        "official-pooling: the official eval.py's protocols (--scales, --crop-size, --overlap, "
                        "flipping unless --no-flip); see docs/fidelity/evaluation.md")
    g.add_argument("--scales", type=scales_arg, default=None,
                   help="comma-separated image scales, e.g. 0.5,1.0,2.0 "
                        "(default: 1.0; official protocols: 0.5,1.0,2.0)")
    flips = g.add_mutually_exclusive_group()
    flips.add_argument("--flip", action="store_const", const=True, dest="flip", default=None,
                       help="also segment the horizontally flipped images (default: off; official protocols: on)")
    flips.add_argument("--no-flip", action="store_const", const=False, dest="flip",
                       help="do not segment the flipped images (official protocols: eval.py's --no_flip)")
    g.add_argument("--crop-size", type=int, default=None,
                   help=f"official-sliding: side of eval.py's square window at scales <= 1 (crop size x scale above); "
                        f"default {OFFICIAL_CROP_SIZE}")
    g.add_argument("--sliding", type=size_arg, default=None, metavar="HxW",
                   help="sliding-window inference with windows of this size over each scaled image")
    g.add_argument("--overlap", type=float, default=1 / 3,
                   help="overlap of neighbouring sliding windows as a fraction of the window, in [0, 1) (default: 1/3)")

    g = p.add_argument_group("output")
    g.add_argument("--regions", type=int, default=4,
                   help="horizontal bands of equal height for per-region mIoU (default: 4 as in paper Table 5; 1: none)")
    g.add_argument("--save-labelids", default=None, metavar="DIR",
                   help="write each prediction as a Cityscapes labelId PNG into DIR (benchmark / cityscapesscripts format)")
    g.add_argument("--official", action="store_true",
                   help="cityscapes: also run cityscapesscripts' evalPixelLevelSemanticLabeling on the labelId PNGs "
                        "and compare its numbers with ours (exit status 1 if they differ)")
    g.add_argument("--json", default=None, metavar="FILE", help="write every number to FILE as JSON")
    g.add_argument("--overwrite", action="store_true",
                   help="replace existing --json / --save-labelids files (never the data set's own files)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _resolve_data(args: argparse.Namespace, info: dict, parser: argparse.ArgumentParser) -> None:
    """Fill the data settings the command line left out from the checkpoint's training run."""
    train_args = info["train_args"]
    if args.dataset is None:
        args.dataset = train_args.get("dataset", "cityscapes") if info["source"] == "hanet_fast" else "cityscapes"
    same_data = train_args.get("dataset") == args.dataset
    if args.data_root is None and same_data:
        args.data_root = train_args.get("data_root")
    for key, default in _SYNTHETIC_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, train_args.get(key, default) if same_data else default)
    args.synthetic_size = tuple(args.synthetic_size)
    if args.dataset == "synthetic" and args.split not in SPLIT_IDS:
        parser.error(f"--split must be one of {', '.join(sorted(SPLIT_IDS))} for the synthetic scenes, got {args.split!r}")
    if args.dataset != "synthetic" and not args.data_root:
        parser.error(f"--data-root is required for --dataset {args.dataset}")
    if args.official and args.dataset != "cityscapes":
        parser.error("--official compares with the Cityscapes evaluation: it needs --dataset cityscapes")
    if args.full_images and official_eval_transform(args.dataset) is None:
        parser.error(f"--full-images is for mapillary, whose official validation crops the images; {args.dataset} "
                     "is always scored on full images")
    args.full_images = args.full_images or official_eval_transform(args.dataset) is None


def _build_dataset(args: argparse.Namespace):
    # The official protocols resize the uint8 image themselves, as eval.py does.
    tensor = args.protocol == "ours"
    transform = EvalTransform(tensor=tensor) if args.full_images else official_eval_transform(args.dataset, tensor)
    if args.dataset == "synthetic":
        return SyntheticUrbanScenes(args.split, args.synthetic_val, args.synthetic_size, args.data_seed, transform)
    if args.dataset == "cityscapes":
        return Cityscapes(args.data_root, args.split, transform=transform)
    if args.dataset == "mapillary":
        return build_dataset("mapillary", args.split, transform, root=args.data_root)
    return BDD100K(args.data_root, args.split, transform=transform)


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.overlap < 1:
        parser.error(f"--overlap must be in [0, 1), got {args.overlap}")
    official = args.protocol in OFFICIAL_PROTOCOLS
    if official and args.sliding is not None:
        parser.error(f"--sliding is for --protocol ours; {args.protocol} uses --crop-size")
    if args.crop_size is not None and args.protocol != "official-sliding":
        parser.error(f"--crop-size is for --protocol official-sliding, not {args.protocol}"
                     + (" (use --sliding HxW)" if args.protocol == "ours" else ""))
    if args.crop_size is not None and args.crop_size < 1:
        parser.error(f"--crop-size must be positive, got {args.crop_size}")
    args.crop_size = args.crop_size or OFFICIAL_CROP_SIZE
    if args.scales is None:
        args.scales = OFFICIAL_SCALES if official else (1.0,)
    if args.flip is None:
        args.flip = official
    if args.regions < 1:
        parser.error(f"--regions must be at least 1, got {args.regions}")
    for flag in ("limit", "batch_size", "workers"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must not be negative, got {getattr(args, flag)}")
    if args.synthetic_val is not None and args.synthetic_val < 1:
        parser.error(f"--synthetic-val must be positive, got {args.synthetic_val}")


class _LabelIdWriter:
    """Writes each prediction as a labelId PNG into ``folder`` (the ``on_batch`` of
    :func:`accumulate_confusion`); remembers the files and, for Cityscapes, their ground truth."""

    def __init__(self, folder: str, dataset, fallback_prefix: str) -> None:
        self.folder, self.dataset, self.fallback_prefix = folder, dataset, fallback_prefix
        self.lut = train_to_label_lut()
        self.written: list[str] = []
        self.ground_truth: list[str] = []

    def __call__(self, batch: dict, pred: torch.Tensor) -> None:
        paths = batch.get("path")
        for k, index in enumerate(batch["index"].tolist()):
            name = prediction_filename(paths[k] if paths else None, f"{self.fallback_prefix}_{index:06d}")
            path = os.path.join(self.folder, name)
            _io.save_image(self.lut[pred[k].numpy().astype(np.uint8)], path)  # replaces a link, never follows it
            self.written.append(path)
            if isinstance(self.dataset, Cityscapes):
                self.ground_truth.append(self.dataset.pairs[index][1])


def _compare_official(writer: _LabelIdWriter, ious: list[float], miou: float) -> dict:
    """cityscapesscripts' numbers on the written files, and whether they equal ours."""
    official = official_cityscapes_scores(writer.written, writer.ground_truth)

    def diff(a: float, b: float) -> float:
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return math.inf if math.isnan(a) or math.isnan(b) else abs(a - b)

    max_diff = max(diff(official["iou"][c], v) for c, v in zip(CLASS_NAMES, ious))
    agree = max_diff <= 1e-9 and diff(official["mIoU"], miou) <= 1e-9
    print(f"\ncityscapesscripts (official) mIoU {100 * official['mIoU']:.2f}, ours {100 * miou:.2f}; "
          f"largest per-class IoU difference {max_diff:.2g}: {'identical' if agree else 'DIFFERENT'}")
    return {"mIoU": _nan_to_none(official["mIoU"]), "iou": {c: _nan_to_none(v) for c, v in official["iou"].items()},
            "max_abs_difference": max_diff if math.isfinite(max_diff) else None, "agree": agree}


def _check_labelid_files(args: argparse.Namespace, dataset, n: int) -> None:
    """Before the run: the files ``--save-labelids`` will write for the first ``n`` samples (named
    as :class:`_LabelIdWriter` names them) must not lie in the data set's folders, collide, or
    (without ``--overwrite``) exist."""
    pairs = getattr(dataset, "pairs", None)
    owners = [pairs[i][0] if pairs else f"{args.dataset}_{args.split}_{i:06d}" for i in range(n)]
    files = [os.path.join(args.save_labelids, prediction_filename(pairs[i][0] if pairs else None, owners[i]))
             for i in range(n)]
    check_outputs(files, flag="--save-labelids", overwrite=args.overwrite, protected=_dataset_folders(dataset),
                  inputs=checkpoint_files(args.checkpoint), owners=owners)


def _dataset_folders(dataset) -> set[str]:
    """The folders holding a data set's images and labels (nothing may be written into them)."""
    return {os.path.dirname(p) for pair in getattr(dataset, "pairs", ()) for p in pair if p}


def _batch_sampler(dataset, n: int, batch_size: int) -> list[list[int]]:
    """Batches of the first ``n`` samples: images of different sizes cannot be stacked into one
    batch (and are not padded: padding would change HANet's row pooling), so files on disk are
    grouped by size (read from their headers)."""
    pairs = getattr(dataset, "pairs", None)
    sizes = [image_size(pairs[i][0]) for i in range(n)] if pairs is not None and batch_size > 1 else [(0, 0)] * n
    return same_size_batches(sizes, batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit status (1 when ``--official`` disagrees with ours).
    Bad input (checkpoint, data, output paths) exits with status 2 and one line naming it."""
    parser = build_parser()
    args = parse_args(parser, argv, _check_args)
    try:
        return _run(parser, args)
    except (DatasetError, OSError, ValueError) as e:
        error_exit(parser, e)
    except KeyboardInterrupt:
        interrupted(parser, "nothing was scored" + (f"; --json {args.json} was not written" if args.json else ""))


def _report(args: argparse.Namespace, info: dict, conf: torch.Tensor, n: int, seconds: float) -> dict:
    """Print the tables of the per-region confusion matrices ``conf`` and return every number (the ``--json``)."""
    ious, miou, acc = iou_from_confusion(conf.sum(0))
    names = region_names(args.regions)
    bounds = [(k / args.regions, (k + 1) / args.regions) for k in range(args.regions)]
    per_region = [iou_from_confusion(c) for c in conf]
    cfg = info["config"]
    class_names = labels_for(cfg.num_classes, info["labels"]).class_names
    sliding = "off" if args.sliding is None else f"{args.sliding[0]}x{args.sliding[1]} (overlap {args.overlap:.2f})"
    if args.protocol == "official-sliding":
        sliding = f"crop {args.crop_size} (overlap {args.overlap:.2f})"
    elif args.protocol == "official-pooling":
        sliding = "off (whole images)"
    iteration = "" if info["iteration"] is None else f", iteration {info['iteration']}"
    print(f"\n{args.checkpoint} ({info['source']}, {cfg.backbone} OS{cfg.output_stride}{iteration})")
    protocol = "" if args.protocol == "ours" else f"protocol {args.protocol}, "
    view = "" if args.full_images else f"the official view ({MAPILLARY_EVAL_HEIGHT} rows, centre crop), "
    print(f"{args.dataset} {args.split}, {n} images; {view}{protocol}"
          f"scales {','.join(f'{s:g}' for s in args.scales)}, "
          f"flip {'on' if args.flip else 'off'}, sliding {sliding}; {seconds:.1f} s")
    print(format_table(ious, miou, acc, class_names))
    if args.regions > 1:
        print()
        print(format_region_table(names, bounds, [r[1] for r in per_region], [r[2] for r in per_region]))
    return {
        "checkpoint": os.fspath(args.checkpoint), "source": info["source"], "iteration": info["iteration"],
        "backbone": cfg.backbone, "output_stride": cfg.output_stride, "dataset": args.dataset,
        "split": args.split, "full_images": args.full_images,
        "images": n, "scales": list(args.scales), "flip": args.flip,
        "sliding": None if args.sliding is None else list(args.sliding), "overlap": args.overlap,
        "protocol": args.protocol, "crop_size": args.crop_size if args.protocol == "official-sliding" else None,
        "amp": args.amp, "mIoU": _nan_to_none(miou), "pixel_acc": _nan_to_none(acc),
        "iou": {name: _nan_to_none(v) for name, v in zip(class_names, ious)},
        "regions": [
            {"name": name, "rows": list(b), "mIoU": _nan_to_none(r[1]), "pixel_acc": _nan_to_none(r[2]),
             "iou": {c: _nan_to_none(v) for c, v in zip(class_names, r[0])}}
            for name, b, r in zip(names, bounds, per_region)
        ],
        "confusion": conf.sum(0).tolist(), "seconds": seconds,
    }


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The evaluation of :func:`main`; every output path is checked before the model runs."""
    device = resolve_device(args.device)
    if args.json:
        # Checked now, not after the whole evaluation (and again below, against the data set's files).
        check_outputs([args.json], flag="--json", overwrite=args.overwrite, inputs=checkpoint_files(args.checkpoint))
    args.checkpoint = run_checkpoint(args.checkpoint, args.run_checkpoint)
    model, info = load_model(args.checkpoint, device=device, backbone=args.backbone, output_stride=args.output_stride)
    if args.compile:
        compile_model(model, args.compile)
    _resolve_data(args, info, parser)
    if (args.save_labelids is not None or args.official) and info["config"].num_classes != NUM_CLASSES:
        parser.error(f"--save-labelids and --official write Cityscapes labelIds: a {info['config'].num_classes}-class "
                     f"network's predictions have none")
    dataset = _build_dataset(args)
    n = min(args.limit, len(dataset)) if args.limit else len(dataset)
    if args.json:
        check_outputs([args.json], flag="--json", overwrite=args.overwrite, protected=_dataset_folders(dataset))
    if args.save_labelids is not None:
        _check_labelid_files(args, dataset, n)
    batch_size = args.batch_size or (8 if args.dataset == "synthetic" else 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)),
                                         batch_sampler=_batch_sampler(dataset, n, batch_size),
                                         num_workers=args.workers, pin_memory=device.type == "cuda")

    with tempfile.TemporaryDirectory(prefix="hanet_fast_eval_") as tmp:
        writer = None
        if args.save_labelids is not None or args.official:
            # --official alone still needs the PNGs: cityscapesscripts reads files.
            writer = _LabelIdWriter(args.save_labelids or tmp, dataset, f"{args.dataset}_{args.split}")
        progress = None
        if not args.no_progress:
            from tqdm import tqdm
            progress = tqdm(total=n, desc="evaluate", unit="img", dynamic_ncols=True, mininterval=1.0)
        t0 = time.time()
        try:
            conf = accumulate_confusion(model, loader, device, regions=args.regions, scales=args.scales,
                                        flip=args.flip, window=args.sliding, overlap=args.overlap, amp=args.amp,
                                        protocol=args.protocol, crop_size=args.crop_size, on_batch=writer,
                                        progress=progress)
        except ProtocolError as e:
            parser.error(f"--protocol {args.protocol}: {e}")
        finally:
            if progress is not None:
                progress.close()
        seconds = time.time() - t0
        ious, miou, acc = iou_from_confusion(conf.sum(0))
        result = _report(args, info, conf, n, seconds)
        if args.save_labelids is not None:
            result["labelids_dir"] = os.path.abspath(args.save_labelids)
        if args.official:
            result["official"] = _compare_official(writer, ious, miou)

    if args.json:
        _io.write_json(args.json, result, indent=1)
    return 1 if args.official and not result["official"]["agree"] else 0


if __name__ == "__main__":
    sys.exit(main())
