"""The 19 Cityscapes training classes, their colours, and labelId -> trainId mapping.

The mapping comes from ``cityscapesscripts.helpers.labels.labels`` (the official table) when
``cityscapesscripts`` is installed; otherwise from the copy below, which is that table's
``(id, trainId)`` columns verbatim (``tests/test_data.py`` checks they agree when it is installed).
Every labelId whose trainId is 255 or -1 (unlabeled, ego vehicle, parking, caravan, license
plate, ...) maps to the ignore index 255.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "IGNORE_INDEX", "PALETTE", "label_to_train_lut", "train_to_label_lut",
           "colorize", "LabelSet", "CITYSCAPES_LABELS", "labels_for"]

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_INDEX = 255

#: Cityscapes colours of the 19 train classes (RGB), index = trainId.
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

# (labelId, trainId) of cityscapesscripts' table, for when the package is not installed.
_BUILTIN_ID_TO_TRAINID = (
    (0, 255), (1, 255), (2, 255), (3, 255), (4, 255), (5, 255), (6, 255), (7, 0), (8, 1), (9, 255),
    (10, 255), (11, 2), (12, 3), (13, 4), (14, 255), (15, 255), (16, 255), (17, 5), (18, 255), (19, 6),
    (20, 7), (21, 8), (22, 9), (23, 10), (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (29, 255),
    (30, 255), (31, 16), (32, 17), (33, 18), (-1, -1),
)


def _id_to_trainid_pairs(source: str = "auto") -> list[tuple[int, int]]:
    if source in ("auto", "cityscapesscripts"):
        try:
            from cityscapesscripts.helpers.labels import labels
        except ImportError:
            if source == "cityscapesscripts":
                raise
        else:
            return [(int(l.id), int(l.trainId)) for l in labels]
    return list(_BUILTIN_ID_TO_TRAINID)


def label_to_train_lut(source: str = "auto") -> np.ndarray:
    """A 256-entry uint8 lookup table labelId -> trainId (255 = ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in _id_to_trainid_pairs(source):
        if 0 <= label_id < 256 and 0 <= train_id < NUM_CLASSES:
            lut[label_id] = train_id
    return lut


def train_to_label_lut(source: str = "auto") -> np.ndarray:
    """A 256-entry uint8 lookup table trainId -> labelId, for writing predictions in the
    Cityscapes benchmark's format; every other value (255 = ignore) maps to 0 ("unlabeled")."""
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, train_id in _id_to_trainid_pairs(source):
        # Each trainId has exactly one labelId in the table; 0 <= label_id skips "license plate".
        if 0 <= label_id < 256 and 0 <= train_id < NUM_CLASSES:
            lut[train_id] = label_id
    return lut


def colorize(mask: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """``[H, W]`` train ids -> ``[H, W, 3]`` uint8 colours of ``palette`` (``[C, 3]``; default the
    Cityscapes colours); ids of no class (the ignore index) -> black."""
    mask = np.asarray(mask)
    out = np.zeros(mask.shape + (3,), dtype=np.uint8)
    valid = mask < len(palette)
    out[valid] = palette[mask[valid]]
    return out


@dataclass(frozen=True, eq=False)
class LabelSet:
    """The training classes of a data set: names and colours, index = train id (255 is ignored).

    Checkpoints store it as :meth:`to_dict` so that evaluation, inference and analysis of a
    network name and colour its classes as its training data did (:func:`labels_for`).
    """

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray  # [num_classes, 3] uint8 RGB

    def __post_init__(self) -> None:
        palette = np.asarray(self.palette)
        if palette.shape != (len(self.class_names), 3):
            raise ValueError(f"hanet_fast.data: palette must be [{len(self.class_names)}, 3] (one RGB colour per "
                             f"class name), got shape {list(palette.shape)}")
        if not 0 < len(self.class_names) < IGNORE_INDEX:
            raise ValueError(f"hanet_fast.data: class_names must hold 1 to {IGNORE_INDEX - 1} names, "
                             f"got {len(self.class_names)}")
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "palette", palette.astype(np.uint8))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """``[H, W]`` train ids -> ``[H, W, 3]`` uint8 colours of this label set (ignore -> black)."""
        return colorize(mask, self.palette)

    def to_dict(self) -> dict:
        """Plain lists and strings (what a ``weights_only`` checkpoint can hold)."""
        return {"name": self.name, "class_names": list(self.class_names), "palette": self.palette.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "LabelSet":
        """The inverse of :meth:`to_dict`; ValueError naming ``labels`` for anything else."""
        try:
            return cls(str(data["name"]), tuple(data["class_names"]), np.asarray(data["palette"], dtype=np.int64))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"hanet_fast.data: labels must be a dict of 'name', 'class_names' and 'palette' "
                             f"as LabelSet.to_dict writes it ({type(e).__name__}: {e})") from None


#: The 19 Cityscapes training classes (also BDD100K's and the built-in synthetic scenes').
CITYSCAPES_LABELS = LabelSet("cityscapes", CLASS_NAMES, PALETTE)


def labels_for(num_classes: int, stored: Mapping | LabelSet | None = None) -> LabelSet:
    """The classes of a network with ``num_classes`` outputs: ``stored`` (a checkpoint's
    ``LabelSet.to_dict()``, or a LabelSet, e.g. read from a Mapillary ``config.json``) if given,
    else the 19 Cityscapes classes for a 19-class network.

    Raises:
        ValueError: ``stored`` does not have ``num_classes`` classes, or nothing names the classes
            of a network of another size (pass the data set's labels, e.g.
            ``hanet_fast.data.mapillary.read_mapillary_labels(root)``).
    """
    if stored is not None:
        labels = stored if isinstance(stored, LabelSet) else LabelSet.from_dict(stored)
        if labels.num_classes != num_classes:
            raise ValueError(f"hanet_fast.data: the labels {labels.name!r} name {labels.num_classes} classes but the "
                             f"network has {num_classes}")
        return labels
    if num_classes == NUM_CLASSES:
        return CITYSCAPES_LABELS
    raise ValueError(f"hanet_fast.data: a {num_classes}-class network without stored class names: pass its data "
                     f"set's labels (e.g. read_mapillary_labels(root) for Mapillary Vistas' config.json)")
