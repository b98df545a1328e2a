"""Segmentation data sets: built-in synthetic scenes, Cityscapes, BDD100K, and image folders.

Every data set yields dicts ``{"image": [3, H, W] float, "mask": [H, W] int64 trainIds (255 =
ignore), "row_pos": [H] float32, "index": int}`` (plus ``"path"`` for files on disk) after its
transform (see :mod:`hanet_fast.data.transforms`). ``dataset[i]`` applies the transform with a
generator seeded by ``i``; the training sampler passes ``(index, seed_tuple, centroid)`` items
instead, to choose the augmentation seed and a class-uniform crop centre.

A missing or unreadable (corrupt, truncated) image or label raises :class:`DatasetError` naming
the file.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from hanet_fast.data.labels import CITYSCAPES_LABELS, IGNORE_INDEX, NUM_CLASSES, LabelSet, label_to_train_lut
from hanet_fast.data.synthetic import SPLIT_IDS, generate_scene
from hanet_fast.data.transforms import EvalTransform, full_row_pos

__all__ = ["DatasetError", "LabelError", "SegmentationDataset", "SyntheticUrbanScenes", "Cityscapes", "BDD100K",
           "ImageFolder", "BoostedDataset", "BDD100K_CLASS_UNIFORM_TILE", "read_image", "read_label", "check_label_values"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(RuntimeError):
    """A data set file is missing or unreadable, or a data set tree is malformed."""


class LabelError(DatasetError, ValueError):
    """A label map or label table (e.g. Mapillary's ``config.json``) that does not fit the data
    set's classes; the message names the file. Also a ValueError, as library argument errors are."""


def check_label_values(mask: np.ndarray, path: str, valid: int, meaning: str,
                       ignore: int | None = IGNORE_INDEX) -> None:
    """:class:`LabelError` naming ``path`` if ``mask`` holds a value ``>= valid`` other than
    ``ignore`` (such values would crash the loss or the confusion matrix far from the file's
    name); ``meaning`` says what the valid values are."""
    if mask.max(initial=0) < valid:
        return
    bad = np.unique(mask[(mask >= valid) & (mask != ignore)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise LabelError(f"hanet_fast.data: label {path} holds values {shown}, outside {meaning}")


def _rgb8(im: Image.Image, path: str) -> Image.Image:
    """8-bit RGB of an image of any mode. 16-bit greyscale (PIL modes ``I;16*``, and ``I``, how
    older PIL reads 16-bit PNGs) is scaled from 0-65535 and float greyscale (``F``) from 0-1 to
    0-255, so that a 16-bit copy of an 8-bit image (values x 257) reads back exactly as the 8-bit
    image; PIL's own conversion would clip them at 255. (16-bit colour PNGs PIL already reads
    as 8-bit.)"""
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DatasetError(f"hanet_fast.data: image {path} is a 32-bit integer image with values outside 0-65535 "
                               f"({arr.min()}..{arr.max()}); save it as an 8- or 16-bit image")
        grey = (arr * 255 + 32767) // 65535  # round(v / 257)
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
            raise DatasetError(f"hanet_fast.data: image {path} is a float image with values outside [0, 1] "
                               f"({arr.min():g}..{arr.max():g}); save it as an 8- or 16-bit image")
        grey = np.rint(arr * 255)
    else:
        return im.convert("RGB")
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")


def _read(path: str, mode: str, what: str, oriented: bool = False) -> np.ndarray:
    if not os.path.isfile(path):
        raise DatasetError(f"hanet_fast.data: {what} file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if oriented:
                im = ImageOps.exif_transpose(im)
            if mode == "RGB":
                im = _rgb8(im, path)
            elif im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"hanet_fast.data: {what} {path} has mode {im.mode}, expected a single-channel label map")
            arr = np.asarray(im)
    except DatasetError:
        raise
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), ...
        raise DatasetError(f"hanet_fast.data: cannot read {what} {path}: {type(e).__name__}: {e}") from e
    return arr


def read_image(path: str, *, oriented: bool = False) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB; :class:`DatasetError` naming the file if missing or corrupt.

    ``oriented``: apply the file's EXIF Orientation tag (a phone photo stored sideways comes out
    upright, as image viewers show it); for users' photos. Data set images are read as stored
    (the default), as the official loaders read them: their label maps are aligned with the
    stored pixels, and rotating only the image would misalign the two."""
    return _read(path, "RGB", "image", oriented)


def read_label(path: str) -> np.ndarray:
    """``[H, W]`` label map; :class:`DatasetError` naming the file if missing or corrupt."""
    arr = _read(path, "L", "label")
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise DatasetError(f"hanet_fast.data: label {path} has values above 255")
        arr = arr.astype(np.uint8)
    return arr


class SegmentationDataset(torch.utils.data.Dataset):
    """Base class: subclasses implement ``__len__``, :meth:`load` and :meth:`cache_key`.

    ``labels`` (a :class:`~hanet_fast.data.labels.LabelSet`) names and colours the train ids the
    masks hold: the 19 Cityscapes classes unless a data set defines others (Mapillary's 65).
    """

    labels: LabelSet = CITYSCAPES_LABELS

    def __init__(self, transform: Callable | None = None) -> None:
        self.transform = transform if transform is not None else EvalTransform()

    def load(self, index: int) -> dict:
        """The raw sample: ``{"image": uint8 [H, W, 3], "mask": uint8 [H, W]}`` (+ ``"path"``)."""
        raise NotImplementedError

    def load_mask(self, index: int) -> np.ndarray:
        return self.load(index)["mask"]

    def cache_key(self) -> str:
        """A string identifying the data (the class-centroid cache's key): it must change whenever a label map may have."""
        raise NotImplementedError

    def __getitem__(self, item) -> dict:
        if isinstance(item, (tuple, list)):
            index, seed, centroid = item
        else:
            index, seed, centroid = int(item), (int(item),), None
        if not 0 <= index < len(self):
            raise IndexError(f"hanet_fast.data: index {index} out of range for {type(self).__name__} of length {len(self)}")
        sample = self.load(index)
        image, mask = sample["image"], sample["mask"]
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"hanet_fast.data: image and label sizes differ ({image.shape[:2]} vs {mask.shape}) for "
                f"{sample.get('path', index)}")
        sample["row_pos"] = full_row_pos(mask.shape[0])
        rng = np.random.default_rng(list(seed))
        out = self.transform(sample, rng, centroid)
        out["index"] = index
        return out


class SyntheticUrbanScenes(SegmentationDataset):
    """The built-in procedurally generated street scenes (:mod:`hanet_fast.data.synthetic`).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint random streams).
        length: number of scenes.
        size: ``(height, width)`` of the generated scenes.
        seed: data seed; scene ``i`` is a function of ``(seed, split, i)`` only.
    """

    def __init__(self, split: str = "train", length: int = 2000, size: tuple[int, int] = (128, 256), seed: int = 0,
                 transform: Callable | None = None) -> None:
        super().__init__(transform)
        if split not in SPLIT_IDS:
            raise ValueError(f"hanet_fast.data: split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        self.split, self.length, self.size, self.seed = split, int(length), tuple(size), int(seed)

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> dict:
        image, mask = generate_scene(self.seed, index, *self.size, split=self.split)
        return {"image": image, "mask": mask}

    def cache_key(self) -> str:
        return f"synthetic-v1:{self.split}:{self.length}:{self.size}:{self.seed}"


class _FilePairs(SegmentationDataset):
    """Lists of (image path, label path or None) read from disk."""

    label_lut: np.ndarray | None = None

    def __init__(self, pairs: list[tuple[str, str | None]], transform: Callable | None) -> None:
        super().__init__(transform)
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> dict:
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        if label_path is None:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        else:
            mask = self.train_ids(read_label(label_path), label_path)
        return {"image": image, "mask": mask, "path": image_path}

    def load_mask(self, index: int) -> np.ndarray:
        label_path = self.pairs[index][1]
        if label_path is None:
            return np.full((1, 1), IGNORE_INDEX, dtype=np.uint8)
        return self.train_ids(read_label(label_path), label_path)

    def train_ids(self, mask: np.ndarray, path: str) -> np.ndarray:
        """The train ids of the label map read from ``path`` (through ``label_lut`` where set);
        subclasses check the values their files may hold."""
        return self.label_lut[mask] if self.label_lut is not None else mask

    def cache_key(self) -> str:
        """The class, the label mapping, and every label file's absolute path, size and
        modification time (ns), in order: rewriting, adding or removing a label changes it."""
        parts = [type(self).__name__, str(len(self.pairs)),
                 "lut=none" if self.label_lut is None else "lut=" + hashlib.sha1(self.label_lut.tobytes()).hexdigest()]
        for image_path, label_path in self.pairs:
            if label_path is None:
                parts.append(f"{os.path.abspath(image_path)}:unlabelled")
                continue
            try:
                st = os.stat(label_path)
            except OSError as e:
                raise DatasetError(f"hanet_fast.data: cannot read label {label_path}: {e.strerror}") from e
            parts.append(f"{os.path.abspath(label_path)}:{st.st_size}:{st.st_mtime_ns}")
        return "\n".join(parts)

    def __getitem__(self, item) -> dict:
        out = super().__getitem__(item)
        out["path"] = self.pairs[out["index"]][0]
        return out


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise DatasetError(f"hanet_fast.data: {what} folder not found: {path}")


def pairs_by_name(image_dir: str, label_dir: str, what: str) -> list[tuple[str, str]]:
    """``(image, label)`` for every image of ``image_dir`` (sorted), its label map the PNG of the
    same name in ``label_dir``; DatasetError naming the missing folder, or the first missing label."""
    _require_dir(image_dir, f"{what} image")
    _require_dir(label_dir, f"{what} label")
    images = sorted(p for p in glob.glob(os.path.join(image_dir, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise DatasetError(f"hanet_fast.data: no images under {image_dir}")
    pairs = []
    for path in images:
        label = os.path.join(label_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        if not os.path.isfile(label):
            raise DatasetError(f"hanet_fast.data: label file not found for {path}: {label}")
        pairs.append((path, label))
    return pairs


TRAINVAL_PARTS = ("train", "val")


class Cityscapes(_FilePairs):
    """Cityscapes: ``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
    ``root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png`` (labelIds mapped to the 19
    trainIds through cityscapesscripts' table, see :mod:`hanet_fast.data.labels`).

    Args:
        split: ``train``, ``val``, ``test`` (fine), ``trainval`` (train and val together, as the
            official ``_best`` recipe trains), or ``train_extra`` (with ``mode="coarse"``).
        mode: ``"fine"`` (gtFine) or ``"coarse"`` (gtCoarse, ``*_gtCoarse_labelIds.png``).
    """

    def __init__(self, root: str, split: str = "train", mode: str = "fine", transform: Callable | None = None) -> None:
        if mode not in ("fine", "coarse"):
            raise ValueError(f"hanet_fast.data: Cityscapes mode must be 'fine' or 'coarse', got {mode!r}")
        gt = "gtFine" if mode == "fine" else "gtCoarse"
        # The official loader's "trainval" is the fine train and val images together (the _best recipe).
        pairs = []
        for part in TRAINVAL_PARTS if split == "trainval" else (split,):
            image_dir = os.path.join(root, "leftImg8bit", part)
            _require_dir(image_dir, "Cityscapes image")
            _require_dir(os.path.join(root, gt, part), f"Cityscapes {mode} label")
            images = sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png")))
            if not images:
                raise DatasetError(f"hanet_fast.data: no *_leftImg8bit.png images under {image_dir}")
            for path in images:
                city = os.path.basename(os.path.dirname(path))
                name = os.path.basename(path)[: -len("_leftImg8bit.png")]
                label = os.path.join(root, gt, part, city, f"{name}_{gt}_labelIds.png")
                if not os.path.isfile(label):
                    raise DatasetError(f"hanet_fast.data: label file not found for {path}: {label}")
                pairs.append((path, label))
        super().__init__(pairs, transform)
        self.label_lut = label_to_train_lut()
        self.root, self.split, self.mode = root, split, mode


#: Class-uniform tile for BDD100K's 1280 x 720 images: half their width, as the official 1024 is
#: half of Cityscapes' 2048 columns, so that each image gives two full tiles side by side (rows
#: 0-639) as a Cityscapes image does; the official 1024 fits no tile in 720 rows (no centroid).
BDD100K_CLASS_UNIFORM_TILE = 640


class BDD100K(_FilePairs):
    """BDD100K segmentation: ``root/images/10k/<split>/<name>.jpg`` with
    ``root/labels/sem_seg/masks/<split>/<name>.png`` (already the 19 trainIds, 255 ignored)."""

    def __init__(self, root: str, split: str = "train", transform: Callable | None = None) -> None:
        image_dir = os.path.join(root, "images", "10k", split)
        label_dir = os.path.join(root, "labels", "sem_seg", "masks", split)
        super().__init__(pairs_by_name(image_dir, label_dir, "BDD100K"), transform)
        self.root, self.split = root, split

    def train_ids(self, mask: np.ndarray, path: str) -> np.ndarray:
        check_label_values(mask, path, NUM_CLASSES, f"the trainIds 0..{NUM_CLASSES - 1} and the ignore index "
                                                    f"{IGNORE_INDEX} (BDD100K's labels/sem_seg/masks hold trainIds)")
        return mask


class ImageFolder(_FilePairs):
    """Every image under ``root`` (recursively, sorted), without labels (mask all 255): for inference."""

    def __init__(self, root: str, transform: Callable | None = None) -> None:
        _require_dir(root, "image")
        images = sorted(
            os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            raise DatasetError(f"hanet_fast.data: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        super().__init__([(p, None) for p in images], transform)
        self.root = root


class BoostedDataset(SegmentationDataset):
    """The images of ``main`` followed by those of ``extra`` (index ``i >= len(main)`` is
    ``extra[i - len(main)]``), with ``main``'s transform and labels.

    Coarse boosting trains on this: the sampler draws its random images from the first
    :attr:`main_length` indices only (``TrainSampler(length=main_length)``) and reaches the extra
    (coarse) images only through the boosted classes' centroids.
    """

    def __init__(self, main: SegmentationDataset, extra: SegmentationDataset) -> None:
        if main.labels.class_names != extra.labels.class_names:
            raise ValueError(f"hanet_fast.data: extra must have main's classes, got {extra.labels.name!r} for "
                             f"{main.labels.name!r}")
        super().__init__(main.transform)
        self.main, self.extra, self.main_length = main, extra, len(main)
        self.labels = main.labels

    def __len__(self) -> int:
        return self.main_length + len(self.extra)

    def _part(self, index: int) -> tuple[SegmentationDataset, int]:
        return (self.main, index) if index < self.main_length else (self.extra, index - self.main_length)

    def load(self, index: int) -> dict:
        part, i = self._part(index)
        return part.load(i)

    def load_mask(self, index: int) -> np.ndarray:
        part, i = self._part(index)
        return part.load_mask(i)

    def cache_key(self) -> str:
        return f"{type(self).__name__}\n{self.main.cache_key()}\n--extra--\n{self.extra.cache_key()}"
