"""The evaluation loop shared by training (its validation) and ``python -m hanet_fast.evaluate``:
a network run over a data loader, its predictions counted into confusion matrices (see
:mod:`hanet_fast.training.metrics`), with our test-time augmentation or the official protocols."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hanet_fast.inference import predict
from hanet_fast.official_eval import OFFICIAL_CROP_SIZE, OFFICIAL_PROTOCOLS, coarse_rows, official_scores
from hanet_fast.training.metrics import region_confusion

__all__ = ["accumulate_confusion"]


@torch.no_grad()
def accumulate_confusion(model, loader, device: torch.device, *, regions: int = 1, scales: Sequence[float] = (1.0,),
                         flip: bool = False, window: tuple[int, int] | None = None, overlap: float = 1 / 3,
                         amp: str = "off", channels_last: bool = False, protocol: str = "ours",
                         crop_size: int = OFFICIAL_CROP_SIZE,
                         on_batch: Callable[[dict, torch.Tensor], None] | None = None, progress=None) -> torch.Tensor:
    """Run ``model`` over ``loader`` and count ``[regions, C, C]`` confusion matrices (see
    :func:`hanet_fast.training.metrics.region_confusion`).

    Args:
        model: the network, in eval mode, on ``device``.
        loader: yields batches ``{"image": [B, 3, H, W], "mask": [B, H, W], "row_pos": [B, H], ...}``
            (official protocols: ``"image"`` uint8 ``[B, H, W, 3]`` full images).
        regions: number of horizontal bands.
        scales, flip, window, overlap, amp: test-time augmentation, see :func:`hanet_fast.inference.predict`.
        protocol: ``"ours"`` (:func:`~hanet_fast.inference.predict`) or one of
            :data:`~hanet_fast.official_eval.OFFICIAL_PROTOCOLS` (with ``scales``, ``flip``,
            ``overlap``, ``crop_size``; ``window`` unused).
        channels_last: feed the images in channels_last memory format.
        on_batch: called with each batch and its ``[B, H, W]`` predicted trainIds (on the CPU).
        progress: a tqdm bar to advance by each batch's size, or None.
    """
    conf = None
    rows = coarse_rows(model) if protocol in OFFICIAL_PROTOCOLS else None
    for batch in loader:
        if protocol in OFFICIAL_PROTOCOLS:
            images = batch["image"]
            probs = torch.stack([official_scores(model, image, protocol, crop_size=crop_size, scales=scales,
                                                 overlap=overlap, flip=flip, amp=amp, rows=rows) for image in images])
        else:
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            probs = predict(model, images, batch["row_pos"].to(device), scales=scales, flip=flip, window=window,
                            overlap=overlap, amp=amp)
        pred = probs.argmax(1)
        part = region_confusion(pred, batch["mask"].to(device), probs.shape[1], regions)
        conf = part if conf is None else conf + part
        if on_batch is not None:
            on_batch(batch, pred.cpu())
        if progress is not None:
            progress.update(images.shape[0])
    if conf is None:
        raise ValueError("hanet_fast.evaluation: the data set is empty")
    return conf
