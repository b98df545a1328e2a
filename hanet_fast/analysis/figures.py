"""Matplotlib (Agg) figures of the analysis, after the paper's:

- Fig. 1: average pixels per image of each class, over the entire image (a) and per
  horizontal third (b), log-scale y;
- Fig. 10: height-wise vs width-wise class distributions, and each class's distribution
  normalised on the right;
- Fig. 7: where each class lies along the height next to the data-set mean of the HANet
  attention (L5's channels are the classes);
- Fig. 5 is :func:`hanet_fast.training.visualize.attention_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hanet_fast.analysis.statistics import REGIONS, ClassDistribution
from hanet_fast.data.labels import CLASS_NAMES, PALETTE
from hanet_fast.training.visualize import pyplot, seriate_channels

__all__ = ["class_distribution_figure", "height_width_figure", "attention_distribution_figure"]

_REGION_COLOURS = {"upper": "#4c72b0", "middle": "#dd8452", "lower": "#55a868"}


def _plt():
    plt = pyplot()
    if plt is None:
        raise RuntimeError("hanet_fast.analysis: the figures need matplotlib (pip install matplotlib)")
    return plt


def _per_class_max(a: np.ndarray) -> np.ndarray:
    """Scale each column of ``a`` to a maximum of 1 (all-zero columns stay 0)."""
    m = a.max(0, keepdims=True)
    return np.divide(a, m, out=np.zeros_like(a, dtype=np.float64), where=m > 0)


def class_distribution_figure(dist: ClassDistribution, path: str, class_names: Sequence[str] = CLASS_NAMES,
                              title: str | None = None, palette: np.ndarray = PALETTE) -> None:
    """Paper Fig. 1: (a) average pixels per image of each class (bars in the class colours ``palette``,
    sorted by frequency) and (b) the same per upper / middle / lower third, log-scale y."""
    plt = _plt()
    names = list(class_names)[: dist.num_classes]
    entire = dist.pixels_per_image("image")
    order = np.argsort(-entire, kind="stable")
    x = np.arange(len(order))
    labels = [f"{names[i]} ({i})" for i in order]
    colours = [palette[i] / 255.0 if i < len(palette) else (0.5, 0.5, 0.5) for i in order]
    fig, (ax_a, ax_b) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax_a.bar(x, entire[order], color=colours, edgecolor="black", linewidth=0.5)
    ax_a.set_title("(a) entire image")
    width = 0.27
    for k, region in enumerate(REGIONS[1:]):
        ax_b.bar(x + (k - 1) * width, dist.pixels_per_image(region)[order], width, label=region,
                 color=_REGION_COLOURS[region], edgecolor="black", linewidth=0.3)
    ax_b.set_title("(b) upper / middle / lower third")
    ax_b.legend()
    for ax in (ax_a, ax_b):
        ax.set_yscale("log")
        ax.set_ylabel("pixels per image")
        ax.grid(axis="y", which="major", alpha=0.3)
    ax_b.set_xticks(x, labels, rotation=60, ha="right")
    total = dist.counts("image").sum() / max(dist.images, 1)
    fig.suptitle(title or f"Class distribution: average over {dist.images} images of {total:,.0f} pixels")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def height_width_figure(dist: ClassDistribution, path: str, title: str | None = None) -> None:
    """Paper Fig. 10: top, the height-wise class distribution ``p(class | height)`` (class on x,
    height on y, darker = more pixels) and on its right each class's distribution over height
    scaled to its maximum; bottom, the same width-wise (width on y, left at the top)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    info = {a: dist.positional_information(a) for a in ("height", "width")}
    for row, axis in enumerate(("height", "width")):
        grid = dist.height_distribution() if axis == "height" else dist.width_distribution()
        panels = ((grid, f"{axis}-wise class distribution\nI(class; {axis}) = {info[axis]:.3f} nats"),
                  (_per_class_max(dist.class_profiles(axis)), f"{axis}-wise, normalised per class"))
        for col, (data, name) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(data, aspect="auto", cmap="Blues", interpolation="nearest", vmin=0)
            ax.set_title(name, fontsize=10)
            ax.set_xticks(range(dist.num_classes))
            ax.tick_params(axis="x", labelsize=7)
            ax.set_xlabel("class (trainId)")
            ax.set_ylabel(f"{axis} ({'top' if axis == 'height' else 'left'} = 0, {dist.bins} bins)")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title or f"Height-wise vs width-wise class distributions ({dist.images} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def attention_distribution_figure(dist: ClassDistribution, attention: dict[str, np.ndarray], path: str,
                                  title: str | None = None) -> None:
    """Paper Fig. 7: left, the real height-wise class distribution (each class's pixels over
    height, scaled to its maximum, class on x); right, per HANet layer the attention averaged
    over images, ``attention[name]`` ``[C, rows]``, height on y. A layer with one channel per
    class (L5 gates the logits) keeps the class order, so its columns line up with the left
    panel; other layers' channels are ordered by :func:`seriate_channels`."""
    plt = _plt()
    n = 1 + len(attention)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 4.2), squeeze=False)
    axes = axes[0]
    im = axes[0].imshow(_per_class_max(dist.class_profiles("height")), aspect="auto", cmap="Blues",
                        interpolation="nearest", vmin=0)
    axes[0].set_title("real class distribution\n(per class, scaled to max)", fontsize=10)
    axes[0].set_xlabel("class (trainId)")
    axes[0].set_ylabel("height (top = 0)")
    axes[0].set_xticks(range(dist.num_classes))
    axes[0].tick_params(axis="x", labelsize=6)
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    for ax, (name, a) in zip(axes[1:], attention.items()):
        a = np.asarray(a, dtype=np.float64)
        classes = a.shape[0] == dist.num_classes
        shown = a if classes else a[seriate_channels(a)]
        im = ax.imshow(shown.T, aspect="auto", cmap="Blues", interpolation="nearest")
        ax.set_title(f"HANet {name} attention\n(mean over images)", fontsize=10)
        if classes:
            ax.set_xticks(range(dist.num_classes))
            ax.tick_params(axis="x", labelsize=6)
            ax.set_xlabel("class (trainId)")
        else:
            ax.set_xlabel(f"channel ({a.shape[0]}, ordered by height)")
        ax.set_ylabel("coarse row (top = 0)")
        ax.yaxis.get_major_locator().set_params(integer=True)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title or "Height-wise class distribution vs HANet attention")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
