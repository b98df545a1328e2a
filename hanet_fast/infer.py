"""``python -m hanet_fast.infer``: segment images with a trained network.

Inputs are image files and/or folders (searched recursively). For every image ``<dir>/<stem>.<ext>``
it writes, under ``--out`` and mirroring the inputs' folder structure (paths relative to the
inputs' common parent folder, so same-named files in different folders never collide):

- ``<stem>_pred.png``: the prediction in the colours of the network's classes (a checkpoint of ours stores them, e.g.
  Mapillary's 65; Cityscapes' for a 19-class network without them);
- ``<stem>_overlay.png``: the colours blended over the image (``--alpha``);
- ``<stem>_trainids.png`` / ``<stem>_labelids.png`` (``--save-trainids`` / ``--save-labelids``):
  the raw 8-bit maps, trainIds 0-18 or Cityscapes labelIds (what the official evaluation reads);
- ``<stem>_attention.npz`` and ``<stem>_attention.png`` (``--attention``): every HANet
  layer's coarse attention ``[C, rows]`` and its paper Fig. 5-style plot.

Two images of one folder with the same stem (``a.png``, ``a.jpg``) keep their extension in the
stem (``a_png_pred.png``, ``a_jpg_pred.png``). Names that still clash, compared case-insensitively
as some file systems do (``a.png`` and ``a.PNG``; ``b.jpg`` next to ``b_jpg.png``), are numbered
in input order (``a_png``, ``a_png_2``): every image gets its own files.

Folders are searched recursively, following links to folders (each real folder once, so a link
loop ends). Images are read as a viewer shows them: a photo's EXIF Orientation tag is applied
(a phone photo stored sideways is segmented upright, and its outputs are upright).

Safety: nothing is written before every output name is known. The run refuses to write onto
one of its inputs (even with ``--overwrite``) and to replace files left by an earlier run
unless ``--overwrite`` is given. ``--out`` may be the input folder (outputs next to the
images) or lie above or inside it: a folder search skips the files under ``--out`` whose names
end like this tool's outputs (``*_pred.png``, ``*_overlay.png``, ...), so a second run does not
segment the first run's outputs; name such a file explicitly to segment it. Every file is written
atomically (:mod:`hanet_fast._io`): an output path that is a link is replaced, never followed.

Batches: ``--batch-size`` images of the same size go through the network together; images of
different sizes are never padded into one batch, because HANet's width-wise pooling would
average the padding into the attention and the row positions of the padded rows are
meaningless. Images are grouped by size (the order within a size is kept). With ``--size``
every image is resized to one size, so all batches are full; predictions are resized back
(probabilities, bilinearly) to each image's own size.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hanet_fast import _io
from hanet_fast._cli import (MAX_SCALE, MAX_THREADS, WARN_WINDOWS, HelpFormatter, add_compile_arg,
                             add_run_checkpoint_arg, check_outputs, check_workload, checkpoint_files, compile_model,
                             default_out, error_exit, image_size, interrupted, parse_args, resolve_device,
                             run_checkpoint, same_size_batches, scales_arg, size_arg)
from hanet_fast.data import DatasetError, read_image
from hanet_fast.data.datasets import IMAGE_EXTENSIONS
from hanet_fast.data.labels import NUM_CLASSES, labels_for, train_to_label_lut
from hanet_fast.data.transforms import normalize_image, resize_image
from hanet_fast.inference import MAX_PIXELS, MAX_WINDOWS, amp_context, load_model, predict
from hanet_fast.training.visualize import attention_figure, overlay, pyplot

__all__ = ["build_parser", "main", "find_images", "output_stems", "OUTPUT_SUFFIXES"]

# The endings of the files written for an image (after its output stem); one source for
# writing them, checking them before the run and recognising them in a later folder search.
PRED, OVERLAY, TRAINIDS, LABELIDS = "_pred.png", "_overlay.png", "_trainids.png", "_labelids.png"
ATTENTION_NPZ, ATTENTION_PNG = "_attention.npz", "_attention.png"
OUTPUT_SUFFIXES = (PRED, OVERLAY, TRAINIDS, LABELIDS, ATTENTION_NPZ, ATTENTION_PNG)


def find_images(inputs: list[str], exclude: str | None = None, skipped: list[str] | None = None) -> list[str]:
    """Absolute paths of the images named by ``inputs`` (files, or folders searched
    recursively), sorted within each folder and without duplicates, in argument order.
    Folder searches skip the files under ``exclude`` (the output folder) whose names end like
    this tool's outputs (:data:`OUTPUT_SUFFIXES`), so that a second run over the same folder
    does not segment the first run's outputs; their paths are appended to ``skipped``.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a file input is not an image, or no image was found at all.
    """
    found: list[str] = []
    out = os.path.realpath(exclude) + os.sep if exclude else None

    def earlier_output(path: str) -> bool:
        return (out is not None and path.endswith(OUTPUT_SUFFIXES)
                and (os.path.realpath(os.path.dirname(path)) + os.sep).startswith(out))

    for item in inputs:
        if os.path.isdir(item):
            images = []
            for path in sorted(p for p in _walk_files(item) if p.lower().endswith(IMAGE_EXTENSIONS)):
                if earlier_output(path):
                    if skipped is not None:
                        skipped.append(path)
                else:
                    images.append(path)
            if not images:
                raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under the folder {item}"
                                 + (f" (only earlier outputs of this tool, {len(skipped)} skipped)"
                                    if skipped else ""))
            found += images
        elif os.path.isfile(item):
            if not item.lower().endswith(IMAGE_EXTENSIONS):
                raise ValueError(f"{item} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
            found.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    unique = list(dict.fromkeys(os.path.abspath(p) for p in found))
    if not unique:
        raise ValueError("no images given")
    return unique


def _walk_files(folder: str) -> list[str]:
    """Every file under ``folder``, following links to folders (a photo folder linked into the
    input folder is part of it) but entering each real folder once (a link loop, or a link to a
    folder already searched, adds nothing)."""
    seen: set[str] = set()
    files = []
    for d, subfolders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        files += [os.path.join(d, f) for f in names]
    return files


def output_stems(paths: list[str]) -> list[str]:
    """Output path stems (relative, without suffix) for absolute image ``paths``, distinct even
    case-insensitively: each path relative to their common parent folder, without its
    extension; where two images share a stem, the extension stays in it (``a.png`` ->
    ``a_png``); names that still clash (``a.png``/``a.PNG``, ``b.jpg``/``b_jpg.png``) get
    ``_2``, ``_3``, ... in input order (the first keeps its name)."""
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    stems = [os.path.splitext(os.path.relpath(p, root))[0] for p in paths]
    counts: dict[str, int] = defaultdict(int)
    for s in stems:
        counts[s.casefold()] += 1
    stems = [s + "_" + os.path.splitext(p)[1].lstrip(".").lower() if counts[s.casefold()] > 1 else s
             for s, p in zip(stems, paths)]
    while True:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(stems):
            groups[s.casefold()].append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return stems
        # A numbered name may clash with another input's name: the loop runs until none does
        # (names only grow, so it ends).
        for group in clashes:
            for k, i in enumerate(group[1:], start=2):
                stems[i] = f"{stems[i]}_{k}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hanet_fast.infer",
        description="Segment images with a trained DeepLabv3+/HANet network: colour predictions (the classes' "
                    "palette stored in the checkpoint, else Cityscapes') and overlays, optionally raw trainId/labelId "
                    "maps and HANet attention maps.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint.pt (or best.pt) or run folder of python -m hanet_fast.train (it gives checkpoint.pt; "
                        "--run-checkpoint best: best.pt), or an official HANet checkpoint")
    add_run_checkpoint_arg(p)
    p.add_argument("--out", default=None,
                   help="output folder, mirroring the inputs' folder structure (default: <run folder>/predictions "
                        "when --checkpoint is a run folder, else ./predictions)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files left by an earlier run (inputs are never overwritten)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the class colours in the overlay, in [0, 1]")
    p.add_argument("--save-trainids", action="store_true", help="also write <stem>_trainids.png (trainIds 0-18)")
    p.add_argument("--save-labelids", action="store_true",
                   help="also write <stem>_labelids.png (Cityscapes labelIds, for the official evaluation scripts)")
    p.add_argument("--attention", action="store_true",
                   help="also write <stem>_attention.npz (each HANet layer's [C, rows] attention) and its plot "
                        "<stem>_attention.png (paper Fig. 5)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward pass; only same-size images share a batch (no padding)")
    p.add_argument("--size", type=size_arg, metavar="HxW", default=None,
                   help="resize every image to HxW for the network (outputs keep each image's size; default: "
                        "each image as it is)")
    p.add_argument("--scales", type=scales_arg, default="1",
                   help=f"comma-separated test scales, e.g. 0.75,1,1.25 (each at most {MAX_SCALE:g}; a scaled image "
                        f"of more than {MAX_PIXELS} pixels is refused)")
    p.add_argument("--flip", action="store_true", help="also average the horizontally flipped prediction")
    p.add_argument("--window", type=size_arg, metavar="HxW", default=None,
                   help=f"sliding-window inference with HxW windows (default: the whole image at once); more than "
                        f"{WARN_WINDOWS} windows per image are announced, more than {MAX_WINDOWS} refused")
    p.add_argument("--overlap", type=float, default=None,
                   help="with --window: fraction of a window shared by neighbouring windows, in [0, 1) (default: 1/3)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="autocast dtype on the device")
    add_compile_arg(p)
    p.add_argument("--threads", type=int, default=0, help=f"torch CPU threads (0: torch's default; at most {MAX_THREADS})")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.overlap is None:
        args.overlap = 1 / 3
    elif not 0.0 <= args.overlap < 1.0:
        p.error(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    args.out = default_out(args.out, args.checkpoint, "predictions")


def _normalise(image: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    if size is not None and image.shape[:2] != tuple(size):
        image = resize_image(image, *size)
    return normalize_image(image)


def _batches(paths: list[str], size: tuple[int, int] | None, batch_size: int) -> list[list[int]]:
    """Indices of ``paths`` in batches of at most ``batch_size`` same-size images."""
    return same_size_batches([tuple(size) if size else image_size(path, oriented=True) for path in paths], batch_size)


def _output_suffixes(args: argparse.Namespace) -> list[str]:
    """The endings of the files written for each image with these settings."""
    return ([PRED, OVERLAY] + ([TRAINIDS] if args.save_trainids else []) + ([LABELIDS] if args.save_labelids else [])
            + ([ATTENTION_NPZ, ATTENTION_PNG] if args.attention else []))


def main(argv: list[str] | None = None) -> list[str]:
    """Run inference; returns the output stems written (relative to ``--out``)."""
    p = build_parser()
    args = parse_args(p, argv, _check_args)
    written = 0
    try:
        device = resolve_device(args.device)
        skipped: list[str] = []
        paths = find_images(args.inputs, exclude=args.out, skipped=skipped)
        if skipped:
            print(f"note: skipped {len(skipped)} file(s) under --out named like this tool's outputs (e.g. "
                  f"{skipped[0]}); name them as files to segment them", file=sys.stderr)
        stems = output_stems(paths)
        suffixes = _output_suffixes(args)
        check_outputs([os.path.join(args.out, stem + end) for stem in stems for end in suffixes], flag="--out",
                      overwrite=args.overwrite, inputs=paths + checkpoint_files(args.checkpoint),
                      owners=[path for path in paths for _ in suffixes])
        batches = _batches(paths, args.size, args.batch_size)
        sizes = {tuple(args.size) if args.size else image_size(paths[batch[0]], oriented=True) for batch in batches}
        check_workload(sizes, args.scales, args.window, args.overlap)
        model, info = load_model(run_checkpoint(args.checkpoint, args.run_checkpoint), device=device)
        if args.attention and not model.hanet_modules:
            raise ValueError(f"--attention: the network of {info['path']} has no HANet layer (a baseline)")
        if args.compile:
            compile_model(model, args.compile)
        if args.save_labelids and model.num_classes != NUM_CLASSES:
            raise ValueError(f"--save-labelids: Cityscapes labelIds need a {NUM_CLASSES}-class network, "
                             f"{info['path']} has {model.num_classes} classes")
        args.labels = labels_for(model.num_classes, info["labels"])  # the classes' colours in _save
        to_label = train_to_label_lut() if args.save_labelids else None
        with tqdm(total=len(paths), desc="infer", unit="img", dynamic_ncols=True, file=sys.stderr,
                  disable=args.no_progress) as progress:
            for batch in batches:
                originals = [read_image(paths[i], oriented=True) for i in batch]
                images = torch.stack([_normalise(im, args.size) for im in originals]).to(device)
                probs = predict(model, images, scales=args.scales, flip=args.flip, window=args.window,
                                overlap=args.overlap, amp=args.amp)
                attention = _attention(model, images, args.amp) if args.attention else None
                for k, (i, original) in enumerate(zip(batch, originals)):
                    maps = {name: a[k] for name, a in attention.items()} if attention is not None else None
                    _save(os.path.join(args.out, stems[i]), paths[i], original, probs[k:k + 1], maps, args, to_label)
                    written += 1
                progress.update(len(batch))
    except (DatasetError, OSError, ValueError) as e:
        error_exit(p, f"{e} ({written} prediction(s) were written to {args.out} before this error)" if written else e)
    except KeyboardInterrupt:
        interrupted(p, f"{written} prediction(s) were written to {args.out}")
    print(f"wrote {written} prediction(s) ({written * len(suffixes)} files) to {args.out}")
    return stems


def _save(base: str, path: str, original: np.ndarray, prob: torch.Tensor, attention: dict[str, np.ndarray] | None,
          args: argparse.Namespace, to_label: np.ndarray | None) -> None:
    """Write one image's outputs ``<base>_*.png`` from its ``[1, classes, h, w]`` probabilities."""
    if prob.shape[2:] != original.shape[:2]:
        prob = F.interpolate(prob, size=original.shape[:2], mode="bilinear", align_corners=False)
    pred = prob[0].argmax(0).to(torch.uint8).cpu().numpy()
    # check_outputs has allowed these files (absent, or --overwrite): the writer replaces, never follows.
    _io.save_image(args.labels.colorize(pred), base + PRED)
    _io.save_image(overlay(original, pred, args.alpha, args.labels), base + OVERLAY)
    if args.save_trainids:
        _io.save_image(pred, base + TRAINIDS)
    if to_label is not None:
        _io.save_image(to_label[pred], base + LABELIDS)
    if attention is not None:
        _io.save_npz(base + ATTENTION_NPZ, **attention)
        if pyplot() is not None:  # else attention_figure writes nothing
            with _io.atomic_path(base + ATTENTION_PNG) as tmp:
                attention_figure(original, attention, tmp, title=os.path.basename(path))


@torch.no_grad()
def _attention(model, images: torch.Tensor, amp: str) -> dict[str, np.ndarray]:
    """Every HANet layer's coarse attention ``[B, C, rows]`` for full images at the network's input size."""
    with amp_context(amp, images.device):
        out = model(images, return_attention=True)
    return {name: a.float().cpu().numpy() for name, a in out.attention.items()}


if __name__ == "__main__":
    main()
