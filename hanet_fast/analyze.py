"""``python -m hanet_fast.analyze``: the height-wise class statistics of a segmentation data set
(paper Table 1, Fig. 1, Fig. 10) and, from a trained checkpoint, its HANet attention maps
(paper Fig. 5, Fig. 7).

Writes to ``--out``: ``table1.txt`` (the printed table), ``statistics.json`` (every number,
including the per-row and per-column class counts), ``fig1_class_distribution.png``,
``fig10_height_vs_width.png`` and, with ``--checkpoint``, ``fig5_attention.png``,
``fig7_attention_vs_distribution.png`` and ``attention_maps.npz`` (the maps they show).

The class statistics stream over the label maps (per-row and per-column counts are
accumulated; no map is kept), reading only the labels for the data sets on disk.

Files that exist already are only replaced with ``--overwrite``, and ``--out`` may not lie in
the data set's folders (a label folder would read the figures back as label maps on the next
run). The checkpoint is loaded before the statistics are computed, so a bad one is reported at
once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

import numpy as np
import torch

from hanet_fast import _io
from hanet_fast._cli import HelpFormatter, check_outputs, default_out, error_exit, parse_args, resolve_device, size_arg
from hanet_fast.analysis.figures import attention_distribution_figure, class_distribution_figure, height_width_figure
from hanet_fast.analysis.statistics import ClassDistribution, format_table1
from hanet_fast.data import (BDD100K, CITYSCAPES_LABELS, IGNORE_INDEX, NUM_CLASSES, Cityscapes, DatasetError,
                             EvalTransform, ImageFolder, SyntheticUrbanScenes, build_dataset, label_to_train_lut,
                             read_label)
from hanet_fast.data.datasets import IMAGE_EXTENSIONS
from hanet_fast.training.visualize import attention_figure

__all__ = ["build_parser", "main", "LabelFolder", "class_statistics", "attention_maps"]

DATASETS = ("synthetic", "cityscapes", "bdd100k", "mapillary", "folder")
# The files written into --out.
TABLE1, FIG1, FIG10, STATISTICS = "table1.txt", "fig1_class_distribution.png", "fig10_height_vs_width.png", \
    "statistics.json"
FIG5, FIG7, ATTENTION_NPZ = "fig5_attention.png", "fig7_attention_vs_distribution.png", "attention_maps.npz"
# A trainId map holds 0-18 and 255 only. Not "most pixels": a Cityscapes labelId map's commonest
# classes are road (7) and building (11), below 19, and its 19-33 classes (vegetation, sky, car,
# person, ...) cover a third of it or less, still far above any stray-pixel level.
NON_TRAIN_ID_LIMIT = 0.05


class LabelFolder:
    """Every label map under ``root`` (recursively, sorted): trainIds, or Cityscapes labelIds
    mapped to trainIds with ``label_ids=True``. Only what the statistics need: ``len`` and
    :meth:`load_mask`.

    Read as trainIds, a map with more than :data:`NON_TRAIN_ID_LIMIT` of its labelled pixels
    (not 255) at values 19-254 is not a trainId map but most likely a Cityscapes labelId map:
    DatasetError saying that it needs ``--label-ids``. Fewer such values (stray pixels) are
    counted as ignore, and totalled in ``non_train_pixels`` / ``non_train_maps`` for the caller
    to report."""

    def __init__(self, root: str, label_ids: bool = False, num_classes: int = NUM_CLASSES) -> None:
        if not os.path.isdir(root):
            raise DatasetError(f"hanet_fast.analyze: label folder not found: {root}")
        self.paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.paths:
            raise DatasetError(f"hanet_fast.analyze: no label maps ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        self.lut = label_to_train_lut() if label_ids else None
        self.non_train_pixels = self.non_train_maps = 0
        self.num_classes = num_classes  # the train ids are 0 .. num_classes - 1

    def __len__(self) -> int:
        return len(self.paths)

    def load_mask(self, index: int) -> np.ndarray:
        mask = read_label(self.paths[index])
        if self.lut is not None:
            return self.lut[mask]
        labelled = int((mask != IGNORE_INDEX).sum())
        outside = int(((mask >= self.num_classes) & (mask != IGNORE_INDEX)).sum())
        if outside > NON_TRAIN_ID_LIMIT * labelled:
            raise DatasetError(
                f"hanet_fast.analyze: {self.paths[index]}: {100 * outside / labelled:.0f}% of its labelled pixels hold "
                f"values {self.num_classes}-{IGNORE_INDEX - 1}, which are not trainIds (0-{self.num_classes - 1}, "
                f"{IGNORE_INDEX} ignored): Cityscapes labelId maps need --label-ids")
        if outside:
            self.non_train_pixels += outside
            self.non_train_maps += 1
        return mask


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hanet_fast.analyze",
        description="Height-wise class statistics of a segmentation data set (paper Table 1, Fig. 1, Fig. 10) and, "
                    "with --checkpoint, HANet attention maps (Fig. 5, Fig. 7). With no arguments: the built-in "
                    "synthetic training scenes (the default training data).",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="synthetic",
                   help="synthetic (built in), cityscapes, bdd100k, mapillary (65 classes, named and coloured by its "
                        "config.json), or folder (label maps under --data-root)")
    g.add_argument("--data-root", default=None,
                   help="data set root (cityscapes: with leftImg8bit/ and gtFine/; bdd100k: with images/10k and "
                        "labels/sem_seg/masks; mapillary: with config.json, training/ and validation/; folder: label "
                        "maps, searched recursively)")
    g.add_argument("--split", default="train", help="split to analyse (cityscapes, bdd100k, synthetic)")
    g.add_argument("--label-ids", action="store_true",
                   help="folder: the maps hold Cityscapes labelIds (mapped to trainIds), not trainIds")
    g.add_argument("--image-root", default=None,
                   help="folder: the images for --checkpoint (any folder of images, searched recursively)")
    g.add_argument("--limit", type=int, default=0, help="analyse the first N maps only (0: all)")
    g.add_argument("--synthetic-count", type=int, default=2000, help="synthetic: number of scenes")
    g.add_argument("--synthetic-size", type=size_arg, metavar="HxW", default="128x256", help="synthetic: scene size HxW")
    g.add_argument("--data-seed", type=int, default=0, help="synthetic: data seed")
    g = p.add_argument_group("statistics")
    g.add_argument("--bins", type=int, default=64,
                   help="relative-position bins of the height- and width-wise distributions (Fig. 1, 10)")
    g.add_argument("--no-paper", action="store_true",
                   help="leave out the paper's Cityscapes Table 1 rows printed under ours for comparison")
    g = p.add_argument_group("attention (with --checkpoint)")
    g.add_argument("--checkpoint", default=None,
                   help="checkpoint.pt or run folder of python -m hanet_fast.train, or an official HANet checkpoint")
    g.add_argument("--sample", type=int, default=0, help="index of the image shown in Fig. 5")
    g.add_argument("--attention-images", type=int, default=32,
                   help="images whose attention is averaged for Fig. 7 (the first N of the split)")
    g.add_argument("--size", type=size_arg, metavar="HxW", default=None,
                   help="resize images to HxW before the network (default: as stored)")
    g.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None,
                   help="folder for table1.txt, statistics.json and the PNGs (default: <run folder>/analysis when "
                        "--checkpoint is a run folder, else ./analysis)")
    g.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("limit", "synthetic_count", "bins", "sample", "attention_images", "threads"):
        value = getattr(args, name)
        low = 1 if name in ("synthetic_count", "bins") else 0
        if value < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if args.dataset != "synthetic" and not args.data_root:
        p.error(f"--dataset {args.dataset} needs --data-root")
    if args.dataset == "folder" and args.checkpoint and not args.image_root:
        p.error("--dataset folder with --checkpoint needs --image-root (the images; --data-root holds the labels)")
    args.out = default_out(args.out, args.checkpoint, "analysis")


def _datasets(args) -> tuple[object, object | None]:
    """(the label source, the image data set for the attention maps or None)."""
    tf = EvalTransform(tuple(args.size) if args.size else None)
    if args.dataset == "synthetic":
        ds = SyntheticUrbanScenes(args.split, args.synthetic_count, args.synthetic_size, args.data_seed, tf)
        return ds, ds
    if args.dataset == "cityscapes":
        ds = Cityscapes(args.data_root, args.split, transform=tf)
        return ds, ds
    if args.dataset == "bdd100k":
        ds = BDD100K(args.data_root, args.split, transform=tf)
        return ds, ds
    if args.dataset == "mapillary":
        ds = build_dataset("mapillary", args.split, tf, root=args.data_root)
        return ds, ds
    labels = LabelFolder(args.data_root, args.label_ids)
    return labels, (ImageFolder(args.image_root, tf) if args.checkpoint else None)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, mininterval=0.5, file=sys.stderr)


def class_statistics(labels, limit: int = 0, bins: int = 64, progress: bool = True,
                     num_classes: int = NUM_CLASSES) -> ClassDistribution:
    """Accumulate a :class:`ClassDistribution` of ``num_classes`` classes over the first ``limit``
    maps (0: all) of any object with ``len`` and ``load_mask(i)``."""
    n = len(labels) if not limit else min(limit, len(labels))
    masks: Iterator[np.ndarray] = (labels.load_mask(i) for i in range(n))
    return ClassDistribution(num_classes, bins).update(_progress(masks, n, "class statistics", progress))


@torch.no_grad()
def attention_maps(model, dataset, indices: list[int], device: torch.device,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """Per HANet layer the attention ``[C, rows]`` averaged over ``dataset[i]`` for ``i`` in
    ``indices`` (one image at a time: sizes may differ; the coarse rows do not)."""
    total: dict[str, torch.Tensor] = {}
    for i in _progress(indices, len(indices), "attention", progress):
        s = dataset[i]
        out = model(s["image"][None].to(device), s["row_pos"][None].to(device), return_attention=True)
        for name, a in out.attention.items():
            total[name] = total.get(name, 0) + a[0].double().cpu()
    return {name: (t / len(indices)).numpy() for name, t in total.items()}


def _load_checkpoint(args, images) -> tuple[object, dict, torch.device]:
    """The network of ``--checkpoint`` with HANet layers, checked against ``--sample``."""
    from hanet_fast.inference import load_model

    device = resolve_device(args.device)
    model, info = load_model(args.checkpoint, device=device)
    if not model.hanet_modules:
        raise ValueError(f"--checkpoint {args.checkpoint}: the network has no HANet layer (a baseline): "
                         "no attention to show")
    if args.sample >= len(images):
        raise ValueError(f"--sample {args.sample} is out of range: the data have {len(images)} images")
    return model, info, device


def _checkpoint_figures(args, images, dist: ClassDistribution, report: dict, model, info: dict,
                        device: torch.device) -> list[str]:
    written = []
    sample = images[args.sample]
    with torch.no_grad():
        out = model(sample["image"][None].to(device), sample["row_pos"][None].to(device), return_attention=True)
    path = os.path.join(args.out, FIG5)
    with _io.atomic_path(path) as tmp:
        attention_figure(sample["image"], {n: a[0] for n, a in out.attention.items()}, tmp,
                         title=f"HANet attention, image {args.sample} ({args.dataset} {args.split})")
    written.append(path)
    arrays = {f"sample_{n}": a[0].float().cpu().numpy() for n, a in out.attention.items()}
    report["attention"] = {"checkpoint": info["path"], "source": info["source"], "iteration": info.get("iteration"),
                           "sample": args.sample, "layers": list(out.attention), "mean_over_images": 0,
                           "arrays": "attention_maps.npz (sample_<layer>, mean_<layer>: [C, rows])"}
    n = min(args.attention_images, len(images))
    if n:
        means = attention_maps(model, images, list(range(n)), device, not args.no_progress)
        arrays.update({f"mean_{k}": v for k, v in means.items()})
        path = os.path.join(args.out, FIG7)
        shown = {"L5": means["L5"]} if "L5" in means else means
        with _io.atomic_path(path) as tmp:
            attention_distribution_figure(dist, shown, tmp, title=(
                f"Height-wise class distribution vs HANet attention (mean over {n} images)"
                + ("" if "L5" in means else "; no L5 in this network: its channels are features, not classes")))
        written.append(path)
        report["attention"]["mean_over_images"] = n
    path = os.path.join(args.out, ATTENTION_NPZ)
    _io.save_npz(path, **arrays)
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> dict:
    """Run the analysis; returns the numbers written to ``statistics.json``."""
    p = build_parser()
    args = parse_args(p, argv, _check_args)
    try:
        labels, images = _datasets(args)
        names = [TABLE1, FIG1, FIG10, STATISTICS]
        if args.checkpoint:
            names += [FIG5, ATTENTION_NPZ] + ([FIG7] if args.attention_images else [])
        protected = [args.data_root, args.image_root] if args.dataset == "folder" else [
            os.path.dirname(f) for pair in getattr(labels, "pairs", ()) for f in pair if f]
        check_outputs([os.path.join(args.out, name) for name in names], flag="--out", overwrite=args.overwrite,
                      protected=[f for f in protected if f])
        # Before the statistics: a bad checkpoint is reported at once, not after all of them.
        network = _load_checkpoint(args, images) if args.checkpoint else None
        classes = getattr(labels, "labels", CITYSCAPES_LABELS)  # a folder of label maps: Cityscapes trainIds
        dist = class_statistics(labels, args.limit, args.bins, not args.no_progress, classes.num_classes)
        if getattr(labels, "non_train_pixels", 0):
            print(f"note: {labels.non_train_pixels} pixels in {labels.non_train_maps} map(s) hold values "
                  f"{NUM_CLASSES}-{IGNORE_INDEX - 1}, not trainIds: counted as ignored (Cityscapes labelId maps need "
                  "--label-ids)", file=sys.stderr)
        table = format_table1(dist, classes.class_names, paper=not args.no_paper and classes is CITYSCAPES_LABELS)
        name = args.dataset + (f" {args.split}" if args.dataset != "folder" else f" {args.data_root}")
        text = f"Table 1 ({name}): probabilities (%) of pixels per class given the region\n\n{table}\n"
        print(text)
        _io.write_text(os.path.join(args.out, TABLE1), text)
        report = {"dataset": args.dataset, "split": args.split, "data_root": args.data_root,
                  **dist.to_dict(classes.class_names)}
        written = [os.path.join(args.out, TABLE1)]
        with _io.atomic_path(os.path.join(args.out, FIG1)) as tmp:
            class_distribution_figure(dist, tmp, classes.class_names, palette=classes.palette)
        with _io.atomic_path(os.path.join(args.out, FIG10)) as tmp:
            height_width_figure(dist, tmp)
        written += [os.path.join(args.out, FIG1), os.path.join(args.out, FIG10)]
        if network is not None:
            written += _checkpoint_figures(args, images, dist, report, *network)
        _io.write_json(os.path.join(args.out, STATISTICS), report)
        written.append(os.path.join(args.out, STATISTICS))
    except (DatasetError, OSError, ValueError, RuntimeError) as e:
        error_exit(p, e)
    print("wrote: " + ", ".join(written))
    return report


if __name__ == "__main__":
    main()
