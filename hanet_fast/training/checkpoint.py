"""Atomic checkpoints: written to a temporary file in the same folder, fsynced, then
``os.replace``d over the target, so a crash never leaves a truncated checkpoint. Loaded with
``torch.load(weights_only=True)``: checkpoints hold tensors and plain Python containers only."""

from __future__ import annotations

import os

import torch


def save_atomic(obj: dict, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str, map_location="cpu") -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hanet_fast.train: checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)
