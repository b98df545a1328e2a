"""The evaluation protocols of the official HANet ``eval.py`` (github.com/shachoi/HANet), reproduced.

```python
from hanet_fast.official_eval import official_scores
scores = official_scores(model, image_uint8, "official-sliding")   # [C, H, W] float64
labels = scores.argmax(0)
```

``official-sliding`` (``eval.py -im sliding``, its default), for each scale ``s``:

1. the uint8 image is resized with PIL's bilinear filter to ``int(w * s) x int(h * s)``;
2. square windows of ``int(crop_size * max(s, 1))`` pixels, stride
   ``ceil(window * (1 - overlap))``, ``ceil((size - window) / stride) + 1`` of them per axis, the
   last one moved back to end at the image's edge and clamped at 0: an image smaller than the
   window is run whole, never padded (see :func:`sliding_windows`);
3. each window's *logits* are summed into a float64 map and divided by eval.py's count array,
   which is **not** the number of windows covering a pixel (see :func:`count_array`);
4. with flipping, the same is done for the horizontally flipped scaled image and its map is
   flipped back; every map is resized to the full image bilinearly (half-pixel centres);
5. the maps are averaged over the flips, then over the scales, and the class is the argmax.

``official-pooling`` (``eval.py -im pooling``): for each flip and each scale, the whole
(flipped, then scaled) image is segmented, its logits resized bilinearly to the full size,
flipped back, turned into probabilities by a softmax, and folded into a float64 running mean
``m += (p - m) / k``; the class is the argmax of that mean.

Row positions. eval.py feeds HANet the position map of the *original* image (its rows quantised
to the coarse rows) for every scale, and for a window of a scaled image the slice of that map
between original rows ``int(y1 * H / h)`` and ``int(y2 * H / h)``; each HANet layer then takes
coarse row ``j``'s position from the slice by nearest interpolation. :func:`window_row_pos` gives
every input row of the window the original row that eval.py uses for the coarse row the row
belongs to, so that the network, picking input row ``floor(j * h_in / rows)`` for coarse row
``j``, sees exactly eval.py's positions (see docs/fidelity/evaluation.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hanet_fast.data.transforms import normalize_image, resize_image
from hanet_fast.inference import AMP_MODES, _logits
from hanet_fast.nn.positional import PositionalEncoding1d

__all__ = ["ProtocolError", "PROTOCOLS", "OFFICIAL_PROTOCOLS", "OFFICIAL_SCALES", "OFFICIAL_CROP_SIZE", "OFFICIAL_OVERLAP",
           "scaled_size", "window_size", "window_stride", "sliding_windows", "count_array", "window_row_pos",
           "coarse_rows", "sliding_scores", "pooling_scores", "official_scores"]

#: Evaluation protocols: ``ours`` is :func:`hanet_fast.inference.predict`'s test-time augmentation.
OFFICIAL_PROTOCOLS = ("official-sliding", "official-pooling")
PROTOCOLS = ("ours",) + OFFICIAL_PROTOCOLS
#: eval.py's defaults: ``--scales``, ``--crop_size``, ``--sliding_overlap``.
OFFICIAL_SCALES = (0.5, 1.0, 2.0)
OFFICIAL_CROP_SIZE = 1024
OFFICIAL_OVERLAP = 1 / 3

Window = tuple[int, int, int, int]


class ProtocolError(ValueError):
    """An image, setting or network that eval.py's protocol cannot evaluate (the CLI reports it
    as a usage error)."""


# --------------------------------------------------------------------------- geometry
def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(int(height * scale), int(width * scale))``, eval.py's truncated scaled size."""
    h, w = int(height * scale), int(width * scale)
    if h < 1 or w < 1:
        raise ProtocolError(f"hanet_fast.official_eval: scale {scale:g} turns a {height}x{width} image into {h}x{w} "
                            "pixels; use larger scales")
    return h, w


def window_size(crop_size: int, scale: float) -> int:
    """Side of eval.py's square window at ``scale``: ``int(crop_size * max(scale, 1))``."""
    return int(crop_size * max(scale, 1.0))


def window_stride(window: int, overlap: float) -> int:
    """eval.py's stride: ``ceil(window * (1 - overlap))`` in float64, so with overlap 1/3 a
    864-pixel window strides 577, not 576 (``1 - 1/3`` rounds up)."""
    return math.ceil(window * (1 - overlap))


def _window_count(size: int, window: int, stride: int) -> int:
    # eval.py gets no window at all (and crashes) once size <= window - stride; one whole-image
    # window is what it does for every other image smaller than the window.
    return max(1, int(math.ceil((size - window) / stride) + 1))


def sliding_windows(height: int, width: int, crop_size: int, scale: float, overlap: float) -> list[Window]:
    """eval.py's windows ``(x1, y1, x2, y2)`` over a scaled image of ``height x width``, in its order
    (columns of windows left to right, each top to bottom).

    The window is ``window_size(crop_size, scale)`` square; window ``k`` along an axis starts at
    ``k * stride``, ends at ``min(start + window, size)`` and is then moved to start at
    ``end - window``, clamped at 0; so the last one ends at the edge and an axis shorter than the
    window gets one window spanning it all (eval.py finds none when ``size <= window - stride``
    and fails; here that case also gets the whole-axis window).
    """
    tile = window_size(crop_size, scale)
    stride = window_stride(tile, overlap)
    windows = []
    for col in range(_window_count(width, tile, stride)):
        for row in range(_window_count(height, tile, stride)):
            x2 = min(col * stride + tile, width)
            y2 = min(row * stride + tile, height)
            windows.append((max(x2 - tile, 0), max(y2 - tile, 0), x2, y2))
    return windows


def count_array(num_classes: int, height: int, windows: Sequence[Window]) -> torch.Tensor:
    """eval.py's ``count_predictions`` of a ``height``-row scaled image: ``[num_classes, height]`` float64.

    eval.py allocates it as ``[C, H, W]`` and adds 1 to ``count[y1:y2, x1:x2]`` for each window:
    that slices the *class* axis with the window's rows and the *row* axis with its columns, and
    leaves the column axis whole. So ``count[c, r, :]`` is the number of windows with
    ``y1 <= c < y2`` and ``x1 <= r < x2`` (rows ``r >= W`` and classes ``c >= H`` are never counted),
    the same for every column. This returns that array without its constant column axis; eval.py
    divides the summed logits ``[C, H, W]`` by it, broadcast over columns.
    """
    count = torch.zeros(num_classes, height, dtype=torch.float64)
    for x1, y1, x2, y2 in windows:
        count[y1:y2, x1:x2] += 1
    return count


def window_row_pos(y1: int, y2: int, height: int, full_height: int, rows: int | None = None,
                   pooling: bool = False) -> torch.Tensor:
    """Row positions ``[y2 - y1]`` (float64 fractions of the full image) of rows ``y1 .. y2`` of a
    scaled image of ``height`` rows, as eval.py's position map gives them to HANet.

    eval.py's map has one entry per original row (``full_height`` of them). Sliding windows get
    the slice ``int(y1 * (full_height / height)) .. int(y2 * (full_height / height))``; pooling
    (``pooling=True``, a whole scaled image) gets the whole map whatever the scale. HANet resizes
    the slice to ``rows`` entries by nearest interpolation: coarse row ``j`` takes original row
    ``p_j = start + floor(j * len / rows)``.

    The network picks input row ``floor(j * (y2 - y1) / rows)`` for coarse row ``j``; input row
    ``i`` therefore gets ``p_j`` of the coarse row ``j`` whose block
    ``[floor(j * n / rows), floor((j + 1) * n / rows))`` holds it, so that every pick sees eval.py's
    position (exactly, when the window has at least ``rows`` rows). ``rows=None`` (a network without
    positional encoding): every row is its own block, ``p_i = start + floor(i * len / n)``.
    """
    n = y2 - y1
    if pooling:
        start, stop = 0, full_height
    else:
        ratio = full_height / height
        start, stop = int(y1 * ratio), int(y2 * ratio)
    rows = n if rows is None else rows
    source = torch.arange(start, stop, dtype=torch.float32)
    if source.numel() == 0:
        # A window thinner than one original row (crop size below the scale): eval.py's slice is
        # empty and it fails; the window's rows all lie in original row ``start``.
        source = torch.tensor([float(start)])
    # eval.py's own nearest resize of the position slice (torch's rule: floor(j * len / rows)).
    picked = F.interpolate(source.view(1, 1, -1), size=rows, mode="nearest").view(-1).double()
    block = (torch.arange(1, n + 1, dtype=torch.int64) * rows - 1) // n
    return picked[block.clamp_(max=rows - 1)] / full_height


def coarse_rows(model: torch.nn.Module) -> int | None:
    """The number of coarse rows of ``model``'s positional encodings (None without any).

    eval.py's network has one ``pos_rfactor`` for every HANet layer; a network whose layers
    differ cannot be given eval.py's positions for all of them at once.
    """
    found = {m.rows for m in model.modules() if isinstance(m, PositionalEncoding1d)}
    if len(found) > 1:
        raise ProtocolError(f"hanet_fast.official_eval: the network's HANet layers use different coarse rows "
                            f"{sorted(found)}; the official protocols need one number (eval.py's pos_rfactor)")
    return found.pop() if found else None


# --------------------------------------------------------------------------- protocols
def _check_image(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.cpu().numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"hanet_fast.official_eval: image must be a uint8 [H, W, 3] array, got {desc}")
    return np.ascontiguousarray(image)


def _check_settings(scales, overlap, crop_size, amp) -> tuple[float, ...]:
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise ValueError(f"hanet_fast.official_eval: scales must be a non-empty sequence of positive numbers, "
                         f"got {scales!r}")
    scales = tuple(float(s) for s in scales)
    if any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"hanet_fast.official_eval: scales must be positive finite numbers, got {scales!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ValueError(f"hanet_fast.official_eval: overlap must be a number in [0, 1), got {overlap!r}")
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
        raise ValueError(f"hanet_fast.official_eval: crop_size must be a positive int, got {crop_size!r}")
    if amp not in AMP_MODES:
        raise ValueError(f"hanet_fast.official_eval: amp must be one of {AMP_MODES}, got {amp!r}")
    return scales


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _resize_map(scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[C, h, w]`` -> ``[C, height, width]`` bilinear with half-pixel centres (eval.py: cv2.INTER_LINEAR)."""
    if tuple(scores.shape[1:]) == (height, width):
        return scores
    return F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def sliding_scores(model, image, *, crop_size: int = OFFICIAL_CROP_SIZE, scales: Sequence[float] = OFFICIAL_SCALES,
                   overlap: float = OFFICIAL_OVERLAP, flip: bool = True, amp: str = "off",
                   rows: int | None = None) -> torch.Tensor:
    """eval.py's sliding-window scores of one full image: ``[C, H, W]`` float64 (argmax: the prediction).

    Args:
        model: called as ``model(images, row_pos)``; returns logits at the input's size (or an
            object with ``.logits``); in eval mode.
        image: the full image, uint8 ``[H, W, 3]`` (numpy or tensor).
        crop_size, scales, overlap, flip: eval.py's ``--crop_size``, ``--scales``,
            ``--sliding_overlap`` and ``not --no_flip``.
        amp: autocast (``"off"`` as eval.py).
        rows: the network's coarse rows for :func:`window_row_pos` (None: every row its own).

    Raises:
        ValueError: bad arguments.
        ProtocolError: a scale that leaves no pixel, or an image for which eval.py's count array
            holds zeros (rows of the scaled image at or beyond its width, i.e. taller than wide,
            or fewer rows than classes), where eval.py divides by zero.
    """
    scales = _check_settings(scales, overlap, crop_size, amp)
    image = _check_image(image)
    full_h, full_w = image.shape[:2]
    device = _model_device(model)
    total = None
    for scale in scales:
        h, w = scaled_size(full_h, full_w, scale)
        x = normalize_image(resize_image(image, h, w))[None].to(device)
        windows = sliding_windows(h, w, crop_size, scale, overlap)
        positions = {(y1, y2): window_row_pos(y1, y2, h, full_h, rows).float()[None].to(device)
                     for _, y1, _, y2 in windows}
        per_flip = None
        for flipped in (False, True) if flip else (False,):
            xin = x.flip(3) if flipped else x
            summed = count = None
            for x1, y1, x2, y2 in windows:
                logits = _logits(model, xin[:, :, y1:y2, x1:x2], positions[(y1, y2)], amp)
                if tuple(logits.shape[2:]) != (y2 - y1, x2 - x1):
                    raise ValueError(f"hanet_fast.official_eval: the network returned {tuple(logits.shape[2:])} "
                                     f"logits for a {y2 - y1}x{x2 - x1} window; it must upsample to its input")
                if summed is None:
                    summed = torch.zeros(logits.shape[1], h, w, dtype=torch.float64, device=device)
                    count = count_array(logits.shape[1], h, windows).to(device)
                    if bool((count == 0).any()):
                        raise ProtocolError(
                            f"hanet_fast.official_eval: official-sliding is undefined for a {h}x{w} scaled image: "
                            f"eval.py's count array is zero for rows >= the width or classes >= the height, and "
                            f"it divides by it; use --protocol official-pooling or ours")
                summed[:, y1:y2, x1:x2] += logits[0].double()
            scores = summed / count[:, :, None]
            if flipped:
                scores = scores.flip(2)
            scores = _resize_map(scores, full_h, full_w)
            per_flip = scores if per_flip is None else per_flip + scores
        # numpy's mean: the sum divided by the count (flips here, scales below).
        per_flip = per_flip / (2 if flip else 1)
        total = per_flip if total is None else total + per_flip
    return total / len(scales)


@torch.no_grad()
def pooling_scores(model, image, *, scales: Sequence[float] = OFFICIAL_SCALES, flip: bool = True, amp: str = "off",
                   rows: int | None = None) -> torch.Tensor:
    """eval.py's pooling scores of one full image: the running mean of the softmax, ``[C, H, W]`` float64.

    For each flip (outer) and scale (inner): the image, flipped first, is resized with PIL's
    default filter of ``Image.resize`` (bicubic since Pillow 7; scale 1 is not resized) to
    ``int(w * s) x int(h * s)``, segmented whole with the full image's positions, its float32
    logits resized bilinearly to ``H x W``, flipped back, softmaxed and folded into
    ``mean += (p - mean) / k`` in float64. Arguments as :func:`sliding_scores`.
    """
    scales = _check_settings(scales, OFFICIAL_OVERLAP, OFFICIAL_CROP_SIZE, amp)
    image = _check_image(image)
    full_h, full_w = image.shape[:2]
    device = _model_device(model)
    pil = Image.fromarray(image)
    mean = None
    k = 0
    for flipped in (False, True) if flip else (False,):
        base = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else pil
        for scale in scales:
            if scale == 1.0:
                scaled = base
            else:
                h, w = scaled_size(full_h, full_w, scale)
                scaled = base.resize((w, h), Image.Resampling.BICUBIC)
            x = normalize_image(np.asarray(scaled))[None].to(device)
            pos = window_row_pos(0, x.shape[2], x.shape[2], full_h, rows, pooling=True).float()[None].to(device)
            logits = F.interpolate(_logits(model, x, pos, amp), size=(full_h, full_w), mode="bilinear",
                                   align_corners=False)
            if flipped:
                logits = logits.flip(3)
            probs = logits.softmax(1)[0]
            k += 1
            mean = torch.zeros(probs.shape, dtype=torch.float64, device=device) if mean is None else mean
            mean += (probs.double() - mean) / k
    return mean


def official_scores(model, image, protocol: str, *, crop_size: int = OFFICIAL_CROP_SIZE,
                    scales: Sequence[float] = OFFICIAL_SCALES, overlap: float = OFFICIAL_OVERLAP, flip: bool = True,
                    amp: str = "off", rows: int | None = None) -> torch.Tensor:
    """:func:`sliding_scores` or :func:`pooling_scores` by ``protocol`` (one of :data:`OFFICIAL_PROTOCOLS`).

    ``rows`` None: taken from the model (:func:`coarse_rows`).
    """
    if protocol not in OFFICIAL_PROTOCOLS:
        raise ValueError(f"hanet_fast.official_eval: protocol must be one of {OFFICIAL_PROTOCOLS}, got {protocol!r}")
    if rows is None:
        rows = coarse_rows(model)
    if protocol == "official-sliding":
        return sliding_scores(model, image, crop_size=crop_size, scales=scales, overlap=overlap, flip=flip, amp=amp,
                              rows=rows)
    return pooling_scores(model, image, scales=scales, flip=flip, amp=amp, rows=rows)
