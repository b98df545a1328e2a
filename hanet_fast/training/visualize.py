"""Figures: sample predictions (image | ground truth | prediction, Cityscapes colours), overlays,
and the HANet attention maps (paper Fig. 5: per layer, channels x coarse rows).

The data-set figures of the analysis (paper Fig. 1, 7, 10) are in :mod:`hanet_fast.analysis.figures`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hanet_fast.data.labels import CITYSCAPES_LABELS, LabelSet
from hanet_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["denormalize", "prediction_grid", "overlay", "save_png", "pyplot", "seriate_channels",
           "attention_figure"]


def denormalize(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` normalised -> ``[H, W, 3]`` uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = (image.detach().float().cpu() * std + mean).clamp(0, 1)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


GRID_COLUMNS = ("image", "ground truth", "prediction")
_TEXT_ROW = 16  # pixels per line of the default bitmap font (about 11 px high)
_SWATCH = 11


def _text_strip(width: int, lines: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    strip = Image.new("RGB", (width, lines * _TEXT_ROW), (255, 255, 255))
    return strip, ImageDraw.Draw(strip)


def _titles(widths: list[int]) -> np.ndarray:
    """A white strip with each column's title centred over it."""
    strip, draw = _text_strip(sum(widths), 1)
    font = ImageFont.load_default()
    left = 0
    for title, width in zip(GRID_COLUMNS, widths):
        text_width = draw.textlength(title, font=font)
        draw.text((left + max(0, (width - text_width) / 2), 2), title, fill=(0, 0, 0), font=font)
        left += width
    return np.asarray(strip)


def class_legend(width: int, labels: LabelSet = CITYSCAPES_LABELS) -> np.ndarray:
    """The classes of ``labels`` as colour swatches with their names, wrapped to ``width`` pixels."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell = int(max(probe.textlength(name, font=font) for name in labels.class_names)) + _SWATCH + 12
    per_line = max(1, width // cell)
    strip, draw = _text_strip(width, -(-labels.num_classes // per_line))
    for k, name in enumerate(labels.class_names):
        x, y = (k % per_line) * cell + 4, (k // per_line) * _TEXT_ROW + 2
        draw.rectangle((x, y + 1, x + _SWATCH - 1, y + _SWATCH), fill=tuple(int(v) for v in labels.palette[k]),
                       outline=(0, 0, 0))
        draw.text((x + _SWATCH + 4, y), name, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def prediction_grid(images, masks, preds, labels: LabelSet = CITYSCAPES_LABELS) -> np.ndarray:
    """Rows of ``image | ground truth | prediction`` (in the colours of ``labels``) under column
    titles, above a class legend, as one uint8 ``[H, W, 3]`` array."""
    rows = []
    for img, m, p in zip(images, masks, preds):
        rows.append(np.concatenate([denormalize(img), labels.colorize(m.cpu().numpy()),
                                    labels.colorize(p.cpu().numpy())], 1))
    grid = np.concatenate(rows, 0)
    widths = [denormalize(images[0]).shape[1], masks[0].shape[-1], preds[0].shape[-1]] if rows else [0, 0, 0]
    return np.concatenate([_titles(widths), grid, class_legend(grid.shape[1], labels)], 0)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
            labels: LabelSet = CITYSCAPES_LABELS) -> np.ndarray:
    """Blend the colours (of ``labels``) of ``mask`` (``[H, W]`` trainIds) over ``image`` (``[H, W, 3]``
    uint8): ``(1 - alpha) * image + alpha * colours``; ignore pixels keep the image."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    colours = labels.colorize(mask).astype(np.float32)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    keep = np.asarray(mask) >= labels.num_classes
    blend[keep] = image[keep]
    return blend.round().clip(0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 ``[H, W]`` or ``[H, W, 3]`` array as PNG."""
    Image.fromarray(array).save(path)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or None when matplotlib is
    not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def seriate_channels(attention: np.ndarray) -> np.ndarray:
    """Channel order that groups channels by where they attend: ``[C, rows]`` -> the
    permutation sorting channels by the row of their highest attention (top first), and
    within a row by how much that peak stands out of the channel's mean (strongest first).
    Paper Fig. 5 clusters channels "to better visualize"; grouping by peak row shows the same
    height bands without a clustering dependency."""
    a = np.asarray(attention, dtype=np.float64)
    peak = a.argmax(1)
    contrast = a.max(1) - a.mean(1)
    return np.lexsort((-contrast, peak))


def attention_figure(image: torch.Tensor | np.ndarray | None, attention: dict[str, torch.Tensor], path: str, *,
                     title: str | None = None) -> bool:
    """Save paper Fig. 5 for one image: per HANet layer a heat map channel (x) by coarse row
    (y, top row at the top) of the attention ``attention[name]`` (``[C, rows]``), the input
    on the left (a normalised ``[3, H, W]`` tensor or a uint8 ``[H, W, 3]`` array; None: no
    input panel) and each layer's mean over channels on the right. The one figure of the
    attention: ``train`` (``runs/<run>/attention.png``), ``infer --attention`` and ``analyze``.

    Channels are sorted by the height they attend to (:func:`seriate_channels`, as the paper
    clusters them), except L5's, which are the classes and keep their order.

    Args:
        title: a figure title.

    Returns:
        False (nothing written) when matplotlib is not installed, else True.
    """
    plt = pyplot()
    if plt is None:
        return False
    maps = {name: attn.detach().float().cpu().numpy() if torch.is_tensor(attn) else np.asarray(attn, dtype=np.float32)
            for name, attn in attention.items()}
    ordered = {name: name != "L5" for name in maps}
    maps = {name: a[seriate_channels(a)] if ordered[name] else a for name, a in maps.items()}
    first = 1 if image is not None else 0
    ratios = ([2] if image is not None else []) + [1] * (len(maps) + 1)
    fig, axes = plt.subplots(1, len(ratios), figsize=(3.2 * len(ratios), 3.6), gridspec_kw={"width_ratios": ratios},
                             squeeze=False, constrained_layout=True)
    axes = axes[0]
    if image is not None:
        axes[0].imshow(denormalize(image) if torch.is_tensor(image) else image)
        axes[0].set_title("input")
        axes[0].axis("off")
    im = None
    for ax, (name, a) in zip(axes[first:], maps.items()):
        im = ax.imshow(a.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"HANet {name}: {a.shape[0]} ch")
        ax.set_xlabel("class (trainId)" if name == "L5" else "channel" + (" (by height)" if ordered[name] else ""))
        ax.yaxis.get_major_locator().set_params(integer=True)
        if ax is axes[first]:
            ax.set_ylabel("coarse row (top = 0)")
    ax = axes[-1]
    for name, a in maps.items():
        ax.plot(a.mean(0), np.arange(a.shape[1]), label=name)
    ax.invert_yaxis()
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("mean over channels")
    ax.set_xlabel("attention")
    if maps:
        ax.legend(title="layer")
    if im is not None:
        fig.colorbar(im, ax=list(axes[first:-1]), fraction=0.05)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
