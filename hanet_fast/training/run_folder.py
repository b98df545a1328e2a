"""The run folder: refused when it holds another run (unless ``--overwrite`` replaces it), created
exclusively under ``runs/`` when not given, and where a run records its settings."""

from __future__ import annotations

import datetime
import json
import os
import sys

from hanet_fast.training import checkpoint as ckpt_io
from hanet_fast.training.errors import RunError

__all__ = ["RUN_OUTPUTS", "check_out_folder", "create_run_folder", "clear_run_folder", "prepare_run_folder"]

# What a run writes into its folder (--overwrite removes the earlier run's copies first).
RUN_OUTPUTS = ("checkpoint.pt", "metrics.json", "args.json", "attention.png", "predictions.png")


def create_run_folder(stamp: str, parent: str = "runs") -> str:
    """Create ``parent/stamp`` (or ``parent/stamp-2``, ``-3``... if taken) exclusively and return it:
    two runs started in the same second never share a folder."""
    os.makedirs(parent, exist_ok=True)
    for n in range(1, 10000):
        path = os.path.join(parent, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise RunError(f"no free run folder name {stamp}-N under {parent}: give --out")


def check_out_folder(out: str, overwrite: bool) -> None:
    """RunError unless ``out`` can receive a new run: absent, empty, or with --overwrite."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"--out {out} is a file, not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        found = sorted(os.listdir(out))
        listing = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise RunError(f"--out {out} is not empty ({listing}): give --resume {out} to continue the run there, "
                       f"--overwrite to replace it, or another folder")


def clear_run_folder(out: str) -> None:
    """--overwrite: remove an earlier run's outputs from ``out`` (other files stay), so that its
    checkpoint, metrics and TensorBoard events are not mixed with the new run's."""
    for name in RUN_OUTPUTS:
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    tb = os.path.join(out, "tb")
    if os.path.isdir(tb):
        for name in os.listdir(tb):
            if name.startswith("events.out.tfevents."):
                os.remove(os.path.join(tb, name))


def prepare_run_folder(out: str | None, overwrite: bool, continuing: bool, settings: dict) -> str:
    """Create (or, with ``overwrite`` and not ``continuing`` the run there, clear) the run folder,
    remove temporaries an interrupted checkpoint write left, and write ``args.json``; returns the
    folder (``runs/<timestamp>`` when ``out`` is None).

    Raises:
        RunError: the folder cannot be written.
    """
    try:
        if out is None:
            out = create_run_folder(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        else:
            os.makedirs(out, exist_ok=True)
            if overwrite and not continuing:
                clear_run_folder(out)
        for tmp in ckpt_io.remove_stale_temporaries(os.path.join(out, "checkpoint.pt")):
            print(f"hanet_fast.train: removed {tmp}, left by an interrupted checkpoint write", file=sys.stderr)
        with open(os.path.join(out, "args.json"), "w") as f:
            json.dump(dict(settings, out=out), f, indent=1, default=str)
    except OSError as e:
        raise RunError(f"cannot write the run folder {out or 'runs'}: {e.strerror or e}") from None
    return out
