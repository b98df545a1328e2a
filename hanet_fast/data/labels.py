"""The 19 Cityscapes training classes, their colours, and labelId -> trainId mapping.

The mapping comes from ``cityscapesscripts.helpers.labels.labels`` (the official table) when
``cityscapesscripts`` is installed; otherwise from the copy below, which is that table's
``(id, trainId)`` columns verbatim (``tests/test_data.py`` checks they agree when it is installed).
Every labelId whose trainId is 255 or -1 (unlabeled, ego vehicle, parking, caravan, license
plate, ...) maps to the ignore index 255.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "IGNORE_INDEX", "PALETTE", "label_to_train_lut", "train_to_label_lut",
           "colorize"]

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


def colorize(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` trainIds -> ``[H, W, 3]`` uint8 Cityscapes colours (ignore -> black)."""
    mask = np.asarray(mask)
    out = np.zeros(mask.shape + (3,), dtype=np.uint8)
    valid = mask < NUM_CLASSES
    out[valid] = PALETTE[mask[valid]]
    return out
