"""Joint transforms for segmentation samples that carry each row's position (``row_pos``).

A sample is a dict ``{"image": [H, W, 3] uint8, "mask": [H, W] uint8 trainIds, "row_pos": [H]
float32}``; ``row_pos[i]`` is row ``i``'s vertical position in the original full image as a
fraction in ``[0, 1)`` (``arange(H) / H`` for a full image), or ``PAD_ROW_POS`` (1.0) for a
padded row. Geometric transforms move mask rows and ``row_pos`` entries with the same index map,
so image, mask and ``row_pos`` stay aligned.

The training transform is the official one (``RandomSizeAndCrop`` with ``crop_nopad=False``,
``RandomHorizontallyFlip``, ``ColorJitter(--color_aug)``, ``RandomGaussianBlur`` for ``--gblur``
of github.com/shachoi/HANet):

- random scale ``s`` uniform in the range: the image is resized to ``int(s * W) x int(s * H)``
  with PIL bicubic, the mask and ``row_pos`` with PIL nearest;
- crop: where the crop is larger than the scaled image, ``(crop - size) // 2 + 1`` pad rows
  (columns) are added on *both* sides, the image padded with 0, the mask with 255 and
  ``row_pos`` with ``PAD_ROW_POS``; the window origin is ``randint(0, padded - crop)``, or, for
  a class-uniform sample, ``randint(c - crop, c)`` around the scaled centroid ``c``, clamped into
  the (padded) image;
- horizontal flip with probability 0.5 (``row_pos`` unchanged);
- colour jitter: brightness, contrast and saturation factors uniform in
  ``[max(0, 1 - j), 1 + j]``, hue shift uniform in ``[-j, j]``, applied in a random order;
- gaussian blur with ``sigma = 0.15 + 1.15 * U[0, 1)`` on every sample (when enabled).

Randomness comes from a ``numpy.random.Generator`` the caller passes in (the training sampler
seeds one per sample), so augmentation is reproducible and resumable whatever the worker layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF_PIL
import torchvision.transforms.v2.functional as TF
from PIL import Image

from hanet_fast.nn.positional import PAD_ROW_POS

__all__ = ["full_row_pos", "resize", "resize_image", "normalize_image", "crop", "crop_pad", "crop_origin", "hflip",
           "color_jitter", "gaussian_blur", "blur_sigma", "TrainTransform", "EvalTransform", "ResizeHeightCrop", "to_tensor",
           "IMAGENET_MEAN", "IMAGENET_STD", "PAD_ROW_POS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: PIL interpolations :func:`resize_image` accepts: bilinear (evaluation, inference) and bicubic
#: (the official training rescale).
IMAGE_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

#: Range of the official gaussian blur's sigma: ``0.15 + 1.15 * U[0, 1)``.
BLUR_SIGMA_MIN, BLUR_SIGMA_SPAN = 0.15, 1.15

#: scipy's (and so skimage's) default kernel extent of a gaussian filter, in sigmas.
_BLUR_TRUNCATE = 4.0


def full_row_pos(height: int) -> np.ndarray:
    """Row positions of a full image: ``arange(H) / H``."""
    return (np.arange(height, dtype=np.float64) / height).astype(np.float32)


def _nearest_rows(src: int, dst: int) -> np.ndarray:
    """The source row of each of ``dst`` rows when PIL resizes ``src`` rows with NEAREST: the map the
    official code applies to its position image, computed by PIL itself on a column of row numbers."""
    column = Image.fromarray(np.arange(src, dtype=np.int32)[:, None])
    return np.asarray(column.resize((1, dst), Image.NEAREST))[:, 0].astype(np.int64)


def resize_image(image: np.ndarray, height: int, width: int, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 ``[H, W, 3]`` image resized with PIL's ``interpolation`` (``"bilinear"`` or ``"bicubic"``) to ``height x width``."""
    if interpolation not in IMAGE_FILTERS:
        raise ValueError(
            f"hanet_fast.data: interpolation must be one of {sorted(IMAGE_FILTERS)}, got {interpolation!r}")
    return np.asarray(Image.fromarray(image).resize((width, height), IMAGE_FILTERS[interpolation]))


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` image -> float ``[3, H, W]`` normalised with the ImageNet statistics."""
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255)
    return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


def resize(sample: dict, height: int, width: int, interpolation: str = "bilinear") -> dict:
    """Resize to ``height x width``: the image with PIL's ``interpolation``, the mask with PIL nearest and
    ``row_pos`` with the same nearest row map (so every mask row keeps its position)."""
    h, w = sample["mask"].shape
    if (h, w) == (height, width):
        return dict(sample)
    out = dict(sample)
    out["image"] = resize_image(sample["image"], height, width, interpolation)
    out["mask"] = np.asarray(Image.fromarray(sample["mask"]).resize((width, height), Image.NEAREST))
    out["row_pos"] = sample["row_pos"][_nearest_rows(h, height)]
    return out


def crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    """Crop rows ``top:top+height`` and columns ``left:left+width``; where the window leaves the
    image (negative or too large offsets) it is padded: image 0, mask 255, row_pos
    ``PAD_ROW_POS``."""
    image, mask, pos = sample["image"], sample["mask"], sample["row_pos"]
    h, w = mask.shape
    rows = np.arange(top, top + height)
    cols = np.arange(left, left + width)
    rin = (rows >= 0) & (rows < h)
    cin = (cols >= 0) & (cols < w)
    rc, cc = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    out = dict(sample)
    valid = rin[:, None] & cin[None, :]
    out["image"] = np.where(valid[..., None], image[rc[:, None], cc[None, :]], 0).astype(np.uint8)
    out["mask"] = np.where(valid, mask[rc[:, None], cc[None, :]], 255).astype(np.uint8)
    out["row_pos"] = np.where(rin, pos[rc], np.float32(PAD_ROW_POS)).astype(np.float32)
    return out


def crop_pad(size: int, crop_size: int) -> int:
    """Pad added on *each* side of an axis of ``size`` pixels before cropping ``crop_size``: the
    official ``(crop - size) // 2 + 1`` when the crop is larger, else 0."""
    return (crop_size - size) // 2 + 1 if crop_size > size else 0


def crop_origin(padded: int, crop_size: int, rng: np.random.Generator, centre: int | None = None) -> int:
    """Window origin along an axis of the padded image (``padded >= crop_size``), as the official
    ``RandomCrop``: ``randint(0, padded - crop)`` (inclusive; 0 without a draw when they are
    equal), or around an integer ``centre``: ``randint(centre - crop, centre)`` clamped to
    ``[0, padded - crop]``."""
    if centre is None:
        return 0 if padded == crop_size else int(rng.integers(0, padded - crop_size + 1))
    return min(padded - crop_size, max(0, int(rng.integers(centre - crop_size, centre + 1))))


def hflip(sample: dict) -> dict:
    """Mirror image and mask left-right (``row_pos`` is unchanged)."""
    out = dict(sample)
    out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
    out["mask"] = np.ascontiguousarray(sample["mask"][:, ::-1])
    return out


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """The official ``ColorJitter(strength, strength, strength, strength)``: brightness, contrast and
    saturation factors uniform in ``[max(0, 1 - strength), 1 + strength]`` and a hue shift uniform in
    ``[-strength, strength]``, drawn in that order and applied in a random order with torchvision's
    PIL operations (``ImageEnhance`` and a wrapping uint8 shift of the HSV hue, as the official
    copies of them compute)."""
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    ops = [(TF_PIL.adjust_brightness, float(rng.uniform(lo, hi))),
           (TF_PIL.adjust_contrast, float(rng.uniform(lo, hi))),
           (TF_PIL.adjust_saturation, float(rng.uniform(lo, hi))),
           (TF_PIL.adjust_hue, float(rng.uniform(-strength, strength)))]
    pil = Image.fromarray(image)
    for k in rng.permutation(len(ops)):
        fn, factor = ops[k]
        pil = fn(pil, factor)
    return np.asarray(pil)


def blur_sigma(rng: np.random.Generator) -> float:
    """The official blur strength: ``0.15 + 1.15 * U[0, 1)``, i.e. uniform in ``[0.15, 1.3)``."""
    return BLUR_SIGMA_MIN + float(rng.random()) * BLUR_SIGMA_SPAN


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """What the official ``RandomGaussianBlur`` computes with ``skimage.filters.gaussian(image, sigma,
    multichannel=True)``: the uint8 image scaled to ``[0, 1]`` in float64, a separable gaussian over
    rows then columns (scipy's kernel: radius ``int(4 sigma + 0.5)``, normalised weights; edge pixels
    repeated past the border), times 255, truncated to uint8."""
    if not sigma > 0:
        raise ValueError(f"hanet_fast.data: gaussian_blur needs sigma > 0, got {sigma}")
    radius = int(_BLUR_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 / sigma ** 2 * x ** 2)
    weights /= weights.sum()
    out = np.multiply(image, 1.0 / 255, dtype=np.float64)  # skimage's img_as_float of uint8
    for axis in (0, 1):
        n = out.shape[axis]
        widths = [(0, 0)] * out.ndim
        widths[axis] = (radius, radius)
        padded = np.pad(out, widths, mode="edge")

        def shifted(offset: int) -> np.ndarray:
            return padded[(slice(None),) * axis + (slice(radius + offset, radius + offset + n),)]

        # scipy sums a symmetric kernel pairwise from the centre outwards; so do we (same rounding)
        acc = shifted(0) * weights[radius]
        for j in range(1, radius + 1):
            acc = acc + (shifted(-j) + shifted(j)) * weights[radius + j]
        out = acc
    return (out * 255).astype(np.uint8)


def to_tensor(sample: dict) -> dict:
    """uint8 HWC image -> normalised float ``[3, H, W]``; mask -> int64 ``[H, W]``; row_pos -> float32 ``[H]``."""
    out = dict(sample)
    out["image"] = normalize_image(sample["image"])
    out["mask"] = torch.from_numpy(np.ascontiguousarray(sample["mask"]).astype(np.int64))
    out["row_pos"] = torch.from_numpy(np.ascontiguousarray(sample["row_pos"], dtype=np.float32))
    return out


@dataclass
class TrainTransform:
    """The official training augmentation (see the module docstring): random scale, crop (padded
    as ``RandomCrop(nopad=False)``; around a centroid for class-uniform samples), flip, colour
    jitter, gaussian blur, to tensor.

    Args:
        crop_size: ``(height, width)`` of the crop (the official crop is square).
        scale_range: random scale factor range (paper / official: 0.5-2).
        flip: probability of a horizontal flip (official: 0.5).
        color_jitter: the official ``--color_aug``: brightness, contrast and saturation strength
            and hue shift, in ``[0, 0.5]`` (0: off; official 0.25).
        blur: probability of the gaussian blur (official ``--gblur``: 1, every sample; 0: off).
        tensor: convert to tensors (:func:`to_tensor`) at the end.
    """

    crop_size: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: float = 0.5
    color_jitter: float = 0.25
    blur: float = 1.0
    tensor: bool = True

    def __post_init__(self) -> None:
        # the hue shift must stay within half the hue circle (torchvision and the official code refuse more)
        if not 0 <= self.color_jitter <= 0.5:
            raise ValueError(f"hanet_fast.data: color_jitter must be in [0, 0.5] (it is also the hue shift), "
                             f"got {self.color_jitter}")
        if not 0 <= self.blur <= 1:
            raise ValueError(f"hanet_fast.data: blur must be a probability in [0, 1], got {self.blur}")

    def __call__(self, sample: dict, rng: np.random.Generator, centroid: tuple[int, int] | None = None) -> dict:
        """Augment ``sample``; ``centroid`` is an integer ``(row, col)`` of the unscaled image for a
        class-uniform crop."""
        h, w = sample["mask"].shape
        s = float(rng.uniform(*self.scale_range))
        # int() truncates as the official size does; at least one pixel, where it would give an empty image
        nh, nw = max(1, int(h * s)), max(1, int(w * s))
        sample = resize(sample, nh, nw, "bicubic")
        ch, cw = self.crop_size
        if (nh, nw) != (ch, cw):
            pad_h, pad_w = crop_pad(nh, ch), crop_pad(nw, cw)
            cy, cx = (None, None) if centroid is None else (int(centroid[0] * s), int(centroid[1] * s))
            # the official centroid is not moved by the padding: the origin is drawn in padded
            # coordinates from the unpadded centroid (x first, then y, as the official order)
            left = crop_origin(nw + 2 * pad_w, cw, rng, cx) - pad_w
            top = crop_origin(nh + 2 * pad_h, ch, rng, cy) - pad_h
            sample = crop(sample, top, left, ch, cw)
        if rng.random() < self.flip:
            sample = hflip(sample)
        if self.color_jitter > 0:
            sample["image"] = color_jitter(sample["image"], rng, self.color_jitter)
        if self.blur > 0 and (self.blur >= 1 or rng.random() < self.blur):
            sample["image"] = gaussian_blur(sample["image"], blur_sigma(rng))
        return to_tensor(sample) if self.tensor else sample


@dataclass
class EvalTransform:
    """Optional resize to ``size`` (``(height, width)``, None keeps the image; bilinear), then to tensor."""

    size: tuple[int, int] | None = None
    tensor: bool = True

    def __call__(self, sample: dict, rng: np.random.Generator | None = None, centroid=None) -> dict:
        if self.size is not None:
            sample = resize(sample, *self.size)
        return to_tensor(sample) if self.tensor else sample


@dataclass
class ResizeHeightCrop:
    """The official validation transform of Mapillary (``ResizeHeight`` then ``CenterCropPad``):
    resize to ``height`` rows and ``int(W / H * height)`` columns (image bicubic, mask and
    ``row_pos`` nearest), then keep the middle ``height`` columns, from column
    ``int(round((width - height) / 2))``, then to tensor. A narrower image is centred between
    padding columns (image 0, mask 255); the official code pads it with label 0, a class, and
    misplaces it (see docs/fidelity/data.md)."""

    height: int = 1536
    tensor: bool = True

    def __post_init__(self) -> None:
        if self.height < 1:
            raise ValueError(f"hanet_fast.data: height must be >= 1, got {self.height}")

    def __call__(self, sample: dict, rng: np.random.Generator | None = None, centroid=None) -> dict:
        h, w = sample["mask"].shape
        side = self.height
        width = max(1, int(w / h * side))
        sample = resize(sample, side, width, "bicubic")
        left = int(round((width - side) / 2)) if width >= side else -((side - width) // 2)
        sample = crop(sample, 0, left, side, side)
        return to_tensor(sample) if self.tensor else sample
