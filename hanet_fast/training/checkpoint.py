"""Atomic checkpoints (through :mod:`hanet_fast._io`): written to a temporary file in the same
folder, fsynced, then ``os.replace``d over the target, so a crash never leaves a truncated checkpoint. Loaded with
``torch.load(weights_only=True)``: checkpoints hold tensors and plain Python containers only."""

from __future__ import annotations

import errno
import os
import pickle

import torch

from hanet_fast import _io
from hanet_fast._io import remove_stale_temporaries  # noqa: F401  (public here since before _io)

# Keys every training checkpoint written by hanet_fast.train holds (what --resume needs).
TRAINING_KEYS = ("iteration", "model", "optimizer", "scheduler", "rng", "args")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or a file is not a checkpoint that can be resumed; the
    message names the file."""


def save_atomic(obj: dict, path: str) -> None:
    """Write ``obj`` to ``path`` atomically (:func:`hanet_fast._io.torch_save`): the previous file
    stays intact if anything fails, and a link at ``path`` is replaced, never written through.

    Raises:
        CheckpointError: the file cannot be written (the message says "no space left on device"
            for a full disk, and names ``path``).
    """
    try:
        _io.torch_save(obj, path)
    except OSError as cause:
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = "no space left on device" if cause.errno == errno.ENOSPC else "disk quota exceeded"
        else:
            reason = cause.strerror or str(cause)
        raise CheckpointError(f"cannot write checkpoint {path}: {reason} (the previous checkpoint, if any, "
                              f"is unchanged)") from cause


def load(path: str, map_location="cpu") -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hanet_fast.train: checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_training(path: str, map_location="cpu") -> dict:
    """A training checkpoint written by ``hanet_fast.train`` (a file or a run folder), to resume.

    Raises:
        CheckpointError: missing, unreadable or truncated, or not a hanet_fast training
            checkpoint (e.g. an official HANet snapshot or a weights-only file); names the file.
    """
    file = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    try:
        obj = load(file, map_location)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {file}") from None
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise CheckpointError(f"cannot read checkpoint {file}: not a PyTorch checkpoint file") from None
        # weights_only refuses the numpy / argparse objects of official HANet snapshots.
        raise CheckpointError(f"{file} is not a hanet_fast training checkpoint (it holds Python objects other "
                              f"than tensors and containers, as official HANet snapshots do); only "
                              f"checkpoint.pt files of hanet_fast.train runs can be resumed") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        # torch's first sentence says what failed; the rest is generic advice
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {file} (truncated or not a PyTorch file?): {first}") from None
    missing = [k for k in TRAINING_KEYS if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise CheckpointError(f"{file} is not a hanet_fast training checkpoint (no {', '.join(map(repr, missing))}); "
                              f"only checkpoint.pt files of hanet_fast.train runs can be resumed")
    return obj
