"""Joint transforms for segmentation samples that carry each row's position (``row_pos``).

A sample is a dict ``{"image": [H, W, 3] uint8, "mask": [H, W] uint8 trainIds, "row_pos": [H]
float32}``; ``row_pos[i]`` is row ``i``'s vertical position in the original full image as a
fraction in ``[0, 1)`` (``arange(H) / H`` for a full image). Geometric transforms move mask rows
and ``row_pos`` entries with the same index map, so image, mask and ``row_pos`` stay aligned:

- random scale (paper §4.1: 0.5-2): the image is resized bilinearly, the mask by nearest
  neighbour with source row ``floor((i + 0.5) * H / H')``, and ``row_pos`` with that same row map;
- crop (random, or placed so that a class centroid lies inside it, for class-uniform sampling),
  padding the image with 0, the mask with 255 and ``row_pos`` with its edge values when the
  image is smaller than the crop;
- horizontal flip (``row_pos`` unchanged);
- colour jitter and gaussian blur (image only).

Randomness comes from a ``numpy.random.Generator`` the caller passes in (the training sampler
seeds one per sample), so augmentation is reproducible and resumable whatever the worker layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFilter

__all__ = ["full_row_pos", "resize", "resize_image", "normalize_image", "crop", "hflip", "TrainTransform",
           "EvalTransform", "to_tensor", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def full_row_pos(height: int) -> np.ndarray:
    """Row positions of a full image: ``arange(H) / H``."""
    return (np.arange(height, dtype=np.float64) / height).astype(np.float32)


def _nearest_index(src: int, dst: int) -> np.ndarray:
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` image resized bilinearly to ``height x width``."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` image -> float ``[3, H, W]`` normalised with the ImageNet statistics."""
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255)
    return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


def resize(sample: dict, height: int, width: int) -> dict:
    """Resize to ``height x width``: image bilinear, mask and row_pos nearest (same row map)."""
    image, mask, pos = sample["image"], sample["mask"], sample["row_pos"]
    h, w = mask.shape
    if (h, w) == (height, width):
        return dict(sample)
    rows, cols = _nearest_index(h, height), _nearest_index(w, width)
    out = dict(sample)
    out["image"] = resize_image(image, height, width)
    out["mask"] = mask[rows[:, None], cols[None, :]]
    out["row_pos"] = pos[rows]
    return out


def crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    """Crop rows ``top:top+height`` and columns ``left:left+width``; padding (image 0, mask
    255, row_pos edge) where the window leaves the image (negative or too large offsets)."""
    image, mask, pos = sample["image"], sample["mask"], sample["row_pos"]
    h, w = mask.shape
    rows = np.arange(top, top + height)
    cols = np.arange(left, left + width)
    rin = (rows >= 0) & (rows < h)
    cin = (cols >= 0) & (cols < w)
    rc, cc = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    out = dict(sample)
    img = image[rc[:, None], cc[None, :]]
    msk = mask[rc[:, None], cc[None, :]]
    valid = rin[:, None] & cin[None, :]
    img = np.where(valid[..., None], img, 0).astype(np.uint8)
    msk = np.where(valid, msk, 255).astype(np.uint8)
    out["image"], out["mask"], out["row_pos"] = img, msk, pos[rc]
    return out


def hflip(sample: dict) -> dict:
    out = dict(sample)
    out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
    out["mask"] = np.ascontiguousarray(sample["mask"][:, ::-1])
    return out


def to_tensor(sample: dict) -> dict:
    """uint8 HWC image -> normalised float ``[3, H, W]``; mask -> int64 ``[H, W]``; row_pos -> float32 ``[H]``."""
    out = dict(sample)
    out["image"] = normalize_image(sample["image"])
    out["mask"] = torch.from_numpy(np.ascontiguousarray(sample["mask"]).astype(np.int64))
    out["row_pos"] = torch.from_numpy(np.ascontiguousarray(sample["row_pos"], dtype=np.float32))
    return out


@dataclass
class TrainTransform:
    """Random scale, crop (optionally around a centroid), flip, colour jitter, blur, to tensor.

    Args:
        crop_size: ``(height, width)`` of the crop.
        scale_range: random scale factor range (paper: 0.5-2).
        flip: probability of a horizontal flip.
        color_jitter: brightness/contrast/saturation strength (0 off); hue gets a fifth of it.
        blur: probability of a gaussian blur (radius 0.15-1.15 px as the official code).
    """

    crop_size: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: float = 0.5
    color_jitter: float = 0.25
    blur: float = 0.5
    tensor: bool = True

    def __call__(self, sample: dict, rng: np.random.Generator, centroid: tuple[float, float] | None = None) -> dict:
        h, w = sample["mask"].shape
        s = float(rng.uniform(*self.scale_range))
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        sample = resize(sample, nh, nw)
        ch, cw = self.crop_size
        if centroid is None:
            top = int(rng.integers(0, max(nh - ch, 0) + 1)) if nh >= ch else -int(rng.integers(0, ch - nh + 1))
            left = int(rng.integers(0, max(nw - cw, 0) + 1)) if nw >= cw else -int(rng.integers(0, cw - nw + 1))
        else:  # a window containing the (scaled) centroid, as the official class-uniform crop
            cy, cx = centroid[0] * nh / h, centroid[1] * nw / w
            top = self._around(cy, ch, nh, rng)
            left = self._around(cx, cw, nw, rng)
        sample = crop(sample, top, left, ch, cw)
        if rng.random() < self.flip:
            sample = hflip(sample)
        if self.color_jitter > 0:
            sample["image"] = _color_jitter(sample["image"], rng, self.color_jitter)
        if self.blur > 0 and rng.random() < self.blur:
            radius = float(rng.uniform(0.15, 1.15))
            sample["image"] = np.asarray(Image.fromarray(sample["image"]).filter(ImageFilter.GaussianBlur(radius)))
        return to_tensor(sample) if self.tensor else sample

    @staticmethod
    def _around(c: float, size: int, full: int, rng: np.random.Generator) -> int:
        lo = int(np.floor(c)) - size + 1  # smallest offset whose window holds c
        hi = int(np.floor(c))
        if full >= size:
            lo, hi = max(lo, 0), min(hi, full - size)
        else:
            lo, hi = max(lo, full - size), min(hi, 0)
        if hi < lo:
            hi = lo
        return int(rng.integers(lo, hi + 1))


def _color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    for op in rng.permutation(4):
        if op == 0:
            img = TF.adjust_brightness(img, float(rng.uniform(1 - strength, 1 + strength)))
        elif op == 1:
            img = TF.adjust_contrast(img, float(rng.uniform(1 - strength, 1 + strength)))
        elif op == 2:
            img = TF.adjust_saturation(img, float(rng.uniform(1 - strength, 1 + strength)))
        else:
            img = TF.adjust_hue(img, float(rng.uniform(-strength / 5, strength / 5)))
    return img.permute(1, 2, 0).numpy()


@dataclass
class EvalTransform:
    """Optional resize to ``size`` (``(height, width)``, None keeps the image), then to tensor."""

    size: tuple[int, int] | None = None
    tensor: bool = True

    def __call__(self, sample: dict, rng: np.random.Generator | None = None, centroid=None) -> dict:
        if self.size is not None:
            sample = resize(sample, *self.size)
        return to_tensor(sample) if self.tensor else sample
