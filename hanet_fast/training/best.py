"""The best checkpoint of a run, as the official trainer keeps it (``utils/misc.py``: the
snapshot of the best validation mIoU): ``best.pt`` beside ``checkpoint.pt`` in the run folder.

:class:`BestCheckpoint` is a hook on every process (writing a checkpoint gathers every rank's
random state): after each validation whose mIoU beats the best so far, the trainer writes
``best.pt`` (atomically, the whole resumable state, with ``best`` = ``{"iteration", "mIoU"}``).
A resumed run reads the best so far from the ``best.pt`` already in its folder, so a worse later
validation never replaces it. The final ``metrics.json`` records it as ``best``.
"""

from __future__ import annotations

import math
import os

import torch

from hanet_fast.training.hooks import Hook
from hanet_fast.training.resume import run_folder_of

__all__ = ["BEST_FILE", "BestCheckpoint", "read_best"]

#: The best checkpoint's file name in a run folder.
BEST_FILE = "best.pt"


def read_best(folder: str) -> dict | None:
    """``{"iteration", "mIoU"}`` of ``folder/best.pt``, or None when there is none (or it holds
    no record, e.g. an unreadable file: the next validation then writes a new one)."""
    path = os.path.join(folder, BEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True).get("best")
    except Exception:  # noqa: BLE001 - a damaged best.pt is replaced, never trusted
        return None
    return dict(record) if isinstance(record, dict) and "mIoU" in record else None


class BestCheckpoint(Hook):
    """Keeps ``best.pt`` (see the module docstring); ``trainer.best`` is the record so far."""

    def before_train(self, trainer) -> None:
        if trainer.resumed:  # the run's folder, else (a resume into another --out) the resumed one's
            trainer.best = read_best(trainer.out) or read_best(run_folder_of(trainer.config.resume))

    def after_validation(self, trainer, result) -> None:
        if math.isnan(result.miou):
            return
        if trainer.best is None or result.miou > trainer.best["mIoU"]:
            trainer.best = {"iteration": result.iteration, "mIoU": result.miou}
            trainer.save_checkpoint(os.path.join(trainer.out, BEST_FILE), latest=False)
