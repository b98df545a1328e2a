"""Mapillary Vistas v1.2 as the official ``datasets/mapillary.py`` of github.com/shachoi/HANet reads it.

Layout: ``root/config.json`` (the label table shipped with the data set) and, per split,
``root/training/`` or ``root/validation/`` holding ``images/<name>.jpg`` and
``labels/<name>.png``. Label maps hold the ids 0..65 of ``config.json``'s 66 labels: 0..64 are the
65 training classes, 65 ("Unlabeled") is ignored (the official loader's ``ignore_label = 65``);
here 65 becomes the ignore index 255, as every other data set's ignored pixels are. Class names
(``readable``) and colours (``color``) come from ``config.json``.

Training uses the same augmentation and class-uniform sampling as Cityscapes (the official
loader takes the same joint transforms and the same centroid code, without an id mapping).
The official validation during training resizes each image to 1536 rows and crops the middle
1536 columns: :data:`MAPILLARY_EVAL_HEIGHT` with
:class:`hanet_fast.data.transforms.ResizeHeightCrop`.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable

import numpy as np

from hanet_fast.data.datasets import DatasetError, LabelError, _FilePairs, check_label_values, \
    pairs_by_name
from hanet_fast.data.labels import IGNORE_INDEX, LabelSet

__all__ = ["Mapillary", "read_mapillary_labels", "MAPILLARY_NUM_CLASSES", "MAPILLARY_UNLABELED",
           "MAPILLARY_SPLITS", "MAPILLARY_EVAL_HEIGHT"]

#: Training classes (official ``num_classes = 65``).
MAPILLARY_NUM_CLASSES = 65
#: The label id that is ignored (official ``ignore_label = 65``: config.json's "Unlabeled").
MAPILLARY_UNLABELED = 65
#: Split name -> folder (official ``make_dataset``: train -> training, val -> validation).
MAPILLARY_SPLITS = {"train": "training", "val": "validation"}
#: Height of the official validation resize and the side of its centre crop (``eval_size = 1536``).
MAPILLARY_EVAL_HEIGHT = 1536


def read_mapillary_labels(root: str) -> LabelSet:
    """The 65 classes of ``root/config.json``: names (``readable``) and colours (``color``).

    Raises:
        LabelError: config.json is missing, unreadable, or not a v1.2 table of 66 labels
            (65 classes and "Unlabeled"); the message names the file.
    """
    path = os.path.join(root, "config.json")
    if not os.path.isfile(path):
        raise LabelError(f"hanet_fast.data: Mapillary label table not found: {path} (the config.json shipped with "
                         f"Mapillary Vistas v1.2 names and colours its classes)")
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)["labels"]
        names = [str(label["readable"]) for label in table]
        colours = np.array([label["color"] for label in table], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LabelError(f"hanet_fast.data: cannot read the Mapillary label table {path}: expected a JSON object whose "
                         f"'labels' list has 'readable' and 'color' entries ({type(e).__name__}: {e})") from None
    if len(names) != MAPILLARY_NUM_CLASSES + 1 or colours.shape != (len(names), 3):
        raise LabelError(f"hanet_fast.data: the Mapillary label table {path} lists {len(names)} labels; Mapillary "
                         f"Vistas v1.2 has {MAPILLARY_NUM_CLASSES + 1} ({MAPILLARY_NUM_CLASSES} classes and "
                         f"'Unlabeled' = {MAPILLARY_UNLABELED}), each with an RGB colour")
    if colours.min() < 0 or colours.max() > 255:
        raise LabelError(f"hanet_fast.data: the Mapillary label table {path} has colours outside 0-255")
    return LabelSet("mapillary", tuple(names[:MAPILLARY_NUM_CLASSES]), colours[:MAPILLARY_NUM_CLASSES])


def _label_lut() -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    lut[MAPILLARY_UNLABELED] = IGNORE_INDEX
    return lut


class Mapillary(_FilePairs):
    """Mapillary Vistas v1.2 (see the module docstring).

    Args:
        root: the folder holding ``config.json``, ``training/`` and ``validation/``.
        split: ``"train"`` (``training/``) or ``"val"`` (``validation/``).
        transform: the joint transform (default: :class:`~hanet_fast.data.transforms.EvalTransform`).

    Raises:
        LabelError: a missing or malformed ``config.json``; when a label map is read, a value
            outside the table (above 65), naming the file.
        DatasetError: a missing folder, no images, or an image without its label map (or a label
            map without its image: the official loader requires the two lists to match).
    """

    def __init__(self, root: str, split: str = "train", transform: Callable | None = None) -> None:
        if split not in MAPILLARY_SPLITS:
            raise ValueError(f"hanet_fast.data: Mapillary split must be one of {sorted(MAPILLARY_SPLITS)}, got {split!r}")
        labels = read_mapillary_labels(root)
        image_dir = os.path.join(root, MAPILLARY_SPLITS[split], "images")
        label_dir = os.path.join(root, MAPILLARY_SPLITS[split], "labels")
        pairs = pairs_by_name(image_dir, label_dir, "Mapillary")
        stems = {os.path.splitext(os.path.basename(p))[0] for p, _ in pairs}
        orphans = sorted(p for p in glob.glob(os.path.join(label_dir, "*.png"))
                         if os.path.splitext(os.path.basename(p))[0] not in stems)
        if orphans:
            raise DatasetError(f"hanet_fast.data: label map without an image: {orphans[0]}"
                               + (f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""))
        super().__init__(pairs, transform)
        self.label_lut = _label_lut()
        self.labels = labels
        self.root, self.split = root, split

    def train_ids(self, mask: np.ndarray, path: str) -> np.ndarray:
        # 255 is no id of the table either: only 0..65 may appear
        check_label_values(mask, path, MAPILLARY_UNLABELED + 1, "the ids 0..65 of the Mapillary config.json",
                           ignore=None)
        return self.label_lut[mask]
