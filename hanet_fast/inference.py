"""Loading trained networks and segmenting images with test-time augmentation (paper Table 4).

```python
from hanet_fast.inference import load_model, predict
model, info = load_model("runs/20260101-120000", device="cuda")      # ours, or an official .pth
probs = predict(model, images, scales=(0.5, 1.0, 2.0), flip=True)    # [B, 19, H, W] probabilities
labels = probs.argmax(1)
```

Row positions. HANet's positional encoding needs each image row's vertical position in the full
image, as a fraction of its height (``row_pos``, see :mod:`hanet_fast.data.transforms`).
:func:`predict` keeps them consistent with what the network sees: a rescaled image gets its
positions resampled at the rescaled rows (row ``i`` of an ``H' = s * H`` image starts at source
row ``i * H / H'``, and its position is ``row_pos`` linearly interpolated there, so a full image
stays ``arange(H') / H'`` and a crop ``(top + r) / H_full`` stays the same fractions); a sliding
window gets its slice of the rescaled positions; a flip leaves rows, and so positions, alone.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from hanet_fast._messages import one_line
from hanet_fast.models import (DeepLabConfig, DeepLabV3PlusHANet, HANetConfig, OfficialCheckpointError,
                               load_official_checkpoint)
from hanet_fast.training import checkpoint as ckpt_io
from hanet_fast.nn.positional import full_image_row_pos

__all__ = ["AMP_MODES", "CheckpointError", "WorkloadError", "load_model", "predict", "resample_row_pos",
           "window_starts", "scaled_size", "check_workload", "MAX_PIXELS", "MAX_WINDOWS", "MAX_CLASSES"]

AMP_MODES = ("off", "bf16", "fp16")

#: The largest image (in pixels, after scaling) the network is run on: 2^25, e.g. 4096 x 8192 (a
#: 1024 x 2048 Cityscapes image at scale 4). Its stride-4 decoder features (304 channels) stay
#: below 2^31 elements; larger inputs take minutes and tens of GB, or overflow int32 indexing.
MAX_PIXELS = 2 ** 25
#: The most sliding windows per image and scale: 64 x 64. A 1024 x 2048 image at the official
#: 768-pixel crops with 1/3 overlap takes 3 x 4.
MAX_WINDOWS = 4096
#: The most classes a checkpoint's network may have: predictions are written as 8-bit maps.
MAX_CLASSES = 256


class WorkloadError(ValueError):
    """Test-time settings that would run the network on too large an image or too many windows;
    ``argument`` names the setting to change (``"scales"`` or ``"window"``)."""

    def __init__(self, message: str, argument: str) -> None:
        super().__init__(message)
        self.argument = argument


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a PyTorch file) or does not
    hold a network; the message names the file."""


# torch.save writes a zip archive; torch 1.4 (the official HANet snapshots) wrote a pickle,
# whose first byte is the PROTO opcode.
_TORCH_FILE_MAGICS = (b"PK\x03\x04", b"\x80")
# What torch.load and the unpickler raise on a damaged file.
_READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                pickle.UnpicklingError)


def _read_checkpoint(path: str) -> object | None:
    """The object in a checkpoint file, or None for a file that only the official loader can
    read (it allows the numpy scalars of official snapshots). CheckpointError for anything
    else: empty, truncated, corrupt, or not written by torch.save."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_TORCH_FILE_MAGICS):
        raise CheckpointError(f"hanet_fast.inference: {path} is not a PyTorch checkpoint"
                              + (" (the file is empty)" if not head else " (not a file written by torch.save)"))
    try:
        return ckpt_io.load(path)
    except pickle.UnpicklingError as err:
        # weights_only refusing a global: official snapshots hold numpy scalars.
        if "Unsupported global" in str(err):
            return None
        raise CheckpointError(f"hanet_fast.inference: cannot read the checkpoint {path}: corrupt "
                              f"({one_line(err, 200, with_type=True)})") from err
    except _READ_ERRORS as err:
        raise CheckpointError(f"hanet_fast.inference: cannot read the checkpoint {path}: truncated or corrupt "
                              f"({one_line(err, 200, with_type=True)})") from err


def _config_from_dict(cfg: dict) -> DeepLabConfig:
    """A :class:`DeepLabConfig` from its ``dataclasses.asdict`` form (as checkpoints store it);
    ValueError for a number of classes outside ``1..MAX_CLASSES`` (before any weight is allocated)."""
    hanet = tuple(None if h is None else HANetConfig(**h) for h in cfg["hanet"])
    classes = cfg["num_classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be an int in [1, {MAX_CLASSES}], got {classes!r}")
    return DeepLabConfig(backbone=cfg["backbone"], output_stride=int(cfg["output_stride"]),
                         num_classes=classes, hanet=hanet, aux=bool(cfg["aux"]))


def _check_iteration(iteration: object, path: str) -> None:
    if iteration is not None and (isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0):
        raise CheckpointError(f"hanet_fast.inference: the checkpoint {path} has an invalid iteration {iteration!r} "
                              f"(a count of training steps, >= 0)")


def _warn_non_finite(model: torch.nn.Module, path: str) -> None:
    """Warn, naming them, about weights or buffers holding NaN or Inf: such a network's outputs are
    meaningless, and a score or prediction made with it must not pass unremarked."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"hanet_fast.inference: the checkpoint {path} holds NaN or Inf in {len(bad)} tensor(s) "
                      f"({shown}): its outputs are meaningless", stacklevel=3)


def _runs_inside(folder: str | os.PathLike) -> str:
    """For a folder of run folders (``runs``) given as a checkpoint: "; run folders in it: ..."."""
    if not os.path.isdir(folder):
        return ""
    runs = sorted(e.path for e in os.scandir(folder) if os.path.isfile(os.path.join(e.path, "checkpoint.pt")))
    if not runs:
        return ""
    shown = ", ".join(runs[-3:])
    return (f"; {folder} holds {len(runs)} run folder(s), give one of them, e.g. {shown}"
            + (" (the last 3 by name)" if len(runs) > 3 else ""))


def _is_ours(obj: object) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("model_config"), dict)


def load_model(checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu", backbone: str | None = None,
               output_stride: int | None = None) -> tuple[DeepLabV3PlusHANet, dict]:
    """Load a trained network for inference.

    Args:
        checkpoint: our checkpoint (``checkpoint.pt`` written by ``python -m hanet_fast.train``, or
            its run folder), or an official HANet checkpoint (detected automatically: anything
            without our ``"model"`` / ``"model_config"`` entries; built with
            :func:`hanet_fast.models.load_official_checkpoint`).
        device: where to put the network.
        backbone: official checkpoints: passed on (overrides the backbone inferred from the
            weights). Ours: must agree with the checkpoint's if given.
        output_stride: official checkpoints: passed on (needed when the file has no saved
            command line). Ours: evaluate at this output stride instead of the trained one (the
            weights fit any stride; only dilations change).

    Returns:
        ``(model, info)``: the network in eval mode on ``device``, and a dict with ``"source"``
        (``"hanet_fast"`` or ``"official"``), ``"config"`` (the :class:`DeepLabConfig`),
        ``"train_args"`` (the training run's settings; ``{}`` for official checkpoints),
        ``"iteration"`` (None when unknown), ``"path"`` (the file read) and ``"labels"`` (the
        checkpoint's class names and colours as ``LabelSet.to_dict()`` wrote them, or None: give it
        to :func:`hanet_fast.data.labels.labels_for` with the network's ``num_classes``).

    Raises:
        FileNotFoundError: no such file (or no ``checkpoint.pt`` in the folder).
        ValueError: ``backbone`` contradicts our checkpoint, or ``output_stride`` is invalid.
        CheckpointError: a file that cannot be read (empty, truncated, corrupt, not a PyTorch
            file), or our checkpoint whose weights do not fit its saved configuration.
        hanet_fast.models.OfficialCheckpointError: a file that is neither ours nor a loadable
            official checkpoint.
    """
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hanet_fast.inference: checkpoint not found: {path}{_runs_inside(checkpoint)}")
    obj = _read_checkpoint(path)
    if obj is not None and _is_ours(obj):
        try:
            config = _config_from_dict(obj["model_config"])
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise CheckpointError(f"hanet_fast.inference: the checkpoint {path} has an invalid model_config "
                                  f"({one_line(err, 200, with_type=True)})") from err
        _check_iteration(obj.get("iteration"), path)
        if backbone is not None and backbone != config.backbone:
            raise ValueError(f"hanet_fast.inference: backbone={backbone!r} but the checkpoint {path} was trained "
                             f"with {config.backbone!r}; leave backbone out for our checkpoints")
        if output_stride is not None and output_stride != config.output_stride:
            config = DeepLabConfig(config.backbone, int(output_stride), config.num_classes, config.hanet, config.aux)
        model = DeepLabV3PlusHANet.from_config(config)
        try:
            model.load_state_dict(obj["model"])
        except RuntimeError as err:
            raise CheckpointError(f"hanet_fast.inference: the weights in {path} do not fit its model_config "
                                  f"({one_line(err, 200, with_type=True)})") from err
        info = {"source": "hanet_fast", "config": config, "train_args": dict(obj.get("args") or {}),
                "iteration": obj.get("iteration"), "path": path, "labels": obj.get("labels")}
    else:
        try:
            model = load_official_checkpoint(path if obj is None else obj, backbone=backbone,
                                             output_stride=output_stride, name=path)
        except OfficialCheckpointError as err:
            if obj is None or (isinstance(obj, dict) and "state_dict" in obj):
                raise  # an official checkpoint that cannot be used: the error names the file and the reason
            # It was given the loaded object: say which file held it.
            raise OfficialCheckpointError(f"hanet_fast.inference: {path} is not a checkpoint of hanet_fast.train, nor "
                                          f"an official HANet one: {str(err).removeprefix('hanet_fast.models: ')}"
                                          ) from err
        except tuple(e for e in _READ_ERRORS if e is not ValueError) as err:
            raise CheckpointError(f"hanet_fast.inference: cannot read the checkpoint {path}: truncated or corrupt "
                                  f"({one_line(err, 200, with_type=True)})") from err
        info = {"source": "official", "config": model.config, "train_args": {}, "iteration": None, "path": path,
                "labels": None}
    _warn_non_finite(model, path)
    return model.to(device).eval(), info


def resample_row_pos(row_pos: torch.Tensor, height: int) -> torch.Tensor:
    """Row positions ``[B, H]`` of an image resized to ``height`` rows: ``[B, height]``.

    Row ``i`` of the resized image starts at source row ``y = i * H / height``; its position is
    ``row_pos`` linearly interpolated at ``y`` (extrapolated past the last row with the last
    step), so affine positions such as a full image's ``arange(H) / H`` or a crop's
    ``(top + arange(H)) / H_full`` map exactly to the same fractions at the new resolution.
    """
    h = row_pos.shape[1]
    if h == height:
        return row_pos
    pos = row_pos.double()
    y = torch.arange(height, dtype=torch.float64, device=row_pos.device) * (h / height)
    lo = y.floor().long().clamp_(max=h - 1)
    step = pos[:, 1:] - pos[:, :-1] if h > 1 else torch.zeros_like(pos)
    # Past the last row the last step continues the sequence.
    step = torch.cat([step, step[:, -1:]], dim=1) if h > 1 else step
    return (pos[:, lo] + (y - lo)[None] * step[:, lo]).to(row_pos.dtype)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Offsets of sliding windows of ``window`` pixels covering ``size`` pixels with at least
    ``overlap`` (a fraction of the window) between neighbours; the last window ends at the edge.
    One window at 0 when ``size <= window``."""
    if size <= window:
        return [0]
    stride = max(1, int(math.floor(window * (1 - overlap))))
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size :func:`predict` runs an ``height x width`` image at for ``scale`` (at least 1 x 1)."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def check_workload(size: tuple[int, int], scales: Sequence[float], window: tuple[int, int] | None,
                   overlap: float) -> int:
    """Refuse settings under which :func:`predict` would run an image of ``size`` at more than
    :data:`MAX_PIXELS` pixels, or cut it into more than :data:`MAX_WINDOWS` windows at one scale.
    Returns the most windows at one scale (1 without ``window``): each is a pass of the network.

    Raises:
        WorkloadError: naming the scale or window, the image size and the limit.
    """
    h, w = size
    most = 1
    for s in scales:
        # in floats first: a huge scale must not build a huge int (or overflow one)
        if float(h) * s * float(w) * s > 2 * MAX_PIXELS or math.prod(scaled_size(h, w, s)) > MAX_PIXELS:
            raise WorkloadError(f"scale {s:g} makes the {h}x{w} image about {h * s:.4g}x{w * s:.4g} pixels, more "
                                f"than the {MAX_PIXELS} (2^25) the network is run on; use smaller scales", "scales")
        sh, sw = scaled_size(h, w, s)
        if window is not None:
            n = len(window_starts(sh, window[0], overlap)) * len(window_starts(sw, window[1], overlap))
            if n > MAX_WINDOWS:
                raise WorkloadError(f"{window[0]}x{window[1]} windows with overlap {overlap:g} cut the {h}x{w} image "
                                    f"at scale {s:g} into {n} windows, more than {MAX_WINDOWS}; use larger windows "
                                    f"or less overlap", "window")
            most = max(most, n)
    return most


def _check_predict_args(images, row_pos, scales, window, overlap, amp) -> tuple[tuple[float, ...], tuple[int, int] | None]:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"hanet_fast.inference: images must be a [B, 3, H, W] tensor, got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"hanet_fast.inference: images must be floating point (normalised), got {images.dtype}")
    if row_pos is not None:
        if not isinstance(row_pos, torch.Tensor) or tuple(row_pos.shape) != (images.shape[0], images.shape[2]):
            shape = tuple(row_pos.shape) if isinstance(row_pos, torch.Tensor) else type(row_pos).__name__
            raise ValueError(f"hanet_fast.inference: row_pos must be a [B, H] = {[images.shape[0], images.shape[2]]} "
                             f"tensor, got {shape}")
        if not row_pos.is_floating_point():
            raise TypeError(f"hanet_fast.inference: row_pos must be floating point, got {row_pos.dtype}")
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise ValueError(f"hanet_fast.inference: scales must be a non-empty sequence of positive numbers, got {scales!r}")
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"hanet_fast.inference: scales must be positive numbers, got {scales!r}") from None
    if any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"hanet_fast.inference: scales must be positive finite numbers, got {scales!r}")
    if window is not None:
        if (isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in window)):
            raise ValueError(f"hanet_fast.inference: window must be (height, width) positive ints or None, got {window!r}")
        window = (int(window[0]), int(window[1]))
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ValueError(f"hanet_fast.inference: overlap must be a number in [0, 1), got {overlap!r}")
    if amp not in AMP_MODES:
        raise ValueError(f"hanet_fast.inference: amp must be one of {AMP_MODES}, got {amp!r}")
    check_workload(tuple(images.shape[2:]), scales, window, overlap)
    return scales, window


def amp_context(amp: str, device: torch.device):
    """The autocast context of an ``amp`` setting (``"off"``, ``"bf16"``, ``"fp16"``) on ``device``."""
    if amp not in AMP_MODES:
        raise ValueError(f"hanet_fast.inference: amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _logits(model, images: torch.Tensor, row_pos: torch.Tensor, amp: str) -> torch.Tensor:
    with amp_context(amp, images.device):
        out = model(images, row_pos)
    return (out.logits if hasattr(out, "logits") else out).float()


def _probs_windowed(model, images, row_pos, window, overlap, amp) -> torch.Tensor:
    """Softmax of ``images`` ([B, 3, h, w]) by sliding windows, averaged where they overlap."""
    b, _, h, w = images.shape
    wh, ww = window
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    if ph or pw:
        # Like the training crops: zeros (the mean colour after normalisation), edge positions.
        images = F.pad(images, (0, pw, 0, ph))
        row_pos = F.pad(row_pos[:, None], (0, ph), mode="replicate")[:, 0]
    total = count = None
    for top in window_starts(h + ph, wh, overlap):
        for left in window_starts(w + pw, ww, overlap):
            crop = images[:, :, top:top + wh, left:left + ww]
            p = _logits(model, crop, row_pos[:, top:top + wh], amp).softmax(1)
            if total is None:
                total = images.new_zeros((b, p.shape[1], h + ph, w + pw), dtype=torch.float32)
                count = images.new_zeros((1, 1, h + ph, w + pw), dtype=torch.float32)
            total[:, :, top:top + wh, left:left + ww] += p
            count[:, :, top:top + wh, left:left + ww] += 1
    return (total / count)[:, :, :h, :w]


@torch.no_grad()
def predict(model, images: torch.Tensor, row_pos: torch.Tensor | None = None, *, scales: Sequence[float] = (1.0,),
            flip: bool = False, window: tuple[int, int] | None = None, overlap: float = 1 / 3,
            amp: str = "off") -> torch.Tensor:
    """Class probabilities of ``images`` with optional multi-scale, flip and sliding-window inference.

    Args:
        model: a :class:`~hanet_fast.models.DeepLabV3PlusHANet` (or any module called as
            ``model(images, row_pos)`` that returns logits or an object with ``.logits``), in
            eval mode, on the images' device.
        images: ``[B, 3, H, W]`` normalised float images.
        row_pos: ``[B, H]`` each row's position as a fraction of the full image height; None:
            the images are full images (``arange(H) / H``).
        scales: image scales; each scaled image is ``round(s * H) x round(s * W)`` (at least 1),
            its probabilities resized back to ``H x W`` bilinearly.
        flip: also segment the horizontally flipped images (and flip their result back).
        window: ``(height, width)`` of a sliding window run over each scaled image; images
            smaller than the window are zero-padded to it. None: the whole image at once.
        overlap: fraction of the window shared by neighbouring windows, in ``[0, 1)``.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` autocast.

    Returns:
        ``[B, num_classes, H, W]`` float32 probabilities: the softmax averaged over scales and
        flips (and, with ``window``, over the windows covering each pixel).
    """
    scales, window = _check_predict_args(images, row_pos, scales, window, overlap, amp)
    b, _, h, w = images.shape
    if row_pos is None:
        row_pos = full_image_row_pos(b, h, images.device)
    row_pos = row_pos.to(images.device, torch.float32)
    total = None
    views = 0
    for s in scales:
        sh, sw = scaled_size(h, w, s)
        x = images if (sh, sw) == (h, w) else F.interpolate(images, size=(sh, sw), mode="bilinear", align_corners=False)
        pos = resample_row_pos(row_pos, sh)
        for flipped in (False, True) if flip else (False,):
            xin = x.flip(3) if flipped else x
            if window is None:
                p = _logits(model, xin, pos, amp).softmax(1)
            else:
                p = _probs_windowed(model, xin, pos, window, overlap, amp)
            if flipped:
                p = p.flip(3)
            if (sh, sw) != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            total = p if total is None else total + p
            views += 1
    return total / views
