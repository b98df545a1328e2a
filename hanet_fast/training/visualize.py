"""Figures: sample predictions (image | ground truth | prediction, Cityscapes colours) and the
HANet attention maps (paper Fig. 5: per layer, channels x coarse rows)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hanet_fast.data.labels import colorize
from hanet_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def denormalize(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` normalised -> ``[H, W, 3]`` uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = (image.detach().float().cpu() * std + mean).clamp(0, 1)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def prediction_grid(images, masks, preds) -> np.ndarray:
    """Rows of ``image | ground truth | prediction`` as one uint8 array."""
    rows = []
    for img, m, p in zip(images, masks, preds):
        rows.append(np.concatenate([denormalize(img), colorize(m.cpu().numpy()), colorize(p.cpu().numpy())], 1))
    return np.concatenate(rows, 0)


def save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path)


def attention_figure(image: torch.Tensor, attention: dict[str, torch.Tensor], path: str) -> bool:
    """Save the attention maps of one image (``attention[name]`` is ``[C, rows]``) with matplotlib;
    False (nothing written) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    n = len(attention)
    fig, axes = plt.subplots(1, n + 2, figsize=(3.2 * (n + 2), 3.4), gridspec_kw={"width_ratios": [2] + [1] * (n + 1)})
    axes[0].imshow(denormalize(image))
    axes[0].set_title("input")
    axes[0].axis("off")
    for ax, (name, attn) in zip(axes[1:], attention.items()):
        a = attn.detach().float().cpu().numpy()  # [C, rows]
        im = ax.imshow(a.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"HANet {name}: {a.shape[0]} ch")
        ax.set_xlabel("channel")
        if ax is axes[1]:
            ax.set_ylabel("coarse row (top = 0)")
    ax = axes[-1]
    for name, attn in attention.items():
        a = attn.detach().float().cpu().numpy()
        ax.plot(a.mean(0), np.arange(a.shape[1]), label=name)
    ax.invert_yaxis()
    ax.set_title("mean over channels")
    ax.set_xlabel("attention")
    ax.legend(fontsize=7)
    if n:
        fig.colorbar(im, ax=axes[1:-1], fraction=0.05)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return True
