"""The run folder: refused when it holds another run (unless ``--overwrite`` replaces it), created
exclusively under ``runs/`` when not given, claimed by one run at a time (a lock held while the
run lasts, :func:`hanet_fast._io.claim_run_folder`), and where a run records its settings."""

from __future__ import annotations

import datetime
import os
import sys

from hanet_fast import _io
from hanet_fast.data.sampling import default_cache_dir
from hanet_fast.training.errors import RunError

__all__ = ["RUN_OUTPUTS", "check_out_folder", "check_cache_dir", "create_run_folder", "clear_run_folder",
           "prepare_run_folder"]

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
    """RunError unless ``out`` can receive a new run: absent, empty, or with --overwrite (and, then,
    with no file where the run's TensorBoard folder goes)."""
    problem = _io.folder_problem(out)
    if problem:
        raise RunError(f"--out {problem}")
    tb = os.path.join(out, "tb")
    if os.path.lexists(tb) and not os.path.isdir(tb):
        raise RunError(f"--out {out}: {tb} is a file where the run's TensorBoard folder goes; move it away or "
                       f"choose another --out")
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


def check_cache_dir(cache_dir: str | None) -> None:
    """RunError (naming ``--cache-dir`` or ``$HANET_FAST_CACHE``) when the class-statistics cache
    folder cannot be one (a file, a link loop...): checked before the statistics are computed."""
    problem = _io.folder_problem(cache_dir or default_cache_dir())
    if problem:
        source = "--cache-dir" if cache_dir else "HANET_FAST_CACHE" if "HANET_FAST_CACHE" in os.environ else "the cache"
        raise RunError(f"{source}: {problem}")


def prepare_run_folder(out: str | None, overwrite: bool, continuing: bool, settings: dict) -> _io.RunFolderClaim:
    """Claim the run folder for this run (creating it; ``runs/<timestamp>`` when ``out`` is None),
    clear an earlier run's outputs with ``overwrite`` unless ``continuing`` the run there, remove
    temporaries an interrupted checkpoint write left, and write ``args.json``. Returns the claim
    (its ``folder``), to hold while the run lasts.

    Raises:
        RunError: another run holds the folder (or, without ``overwrite``, has left files there
            meanwhile), or it cannot be written.
    """
    claim = None
    try:
        if out is None:
            out = create_run_folder(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        claim = _io.claim_run_folder(out, reuse=overwrite or continuing)
        if overwrite and not continuing:
            clear_run_folder(out)
        for tmp in _io.remove_stale_temporaries(os.path.join(out, "checkpoint.pt")):
            print(f"hanet_fast.train: removed {tmp}, left by an interrupted checkpoint write", file=sys.stderr)
        _io.write_json(os.path.join(out, "args.json"), dict(settings, out=out), indent=1, default=str)
    except _io.FolderInUseError as e:
        raise RunError(f"--out {e}: give another --out") from None
    except (OSError, ValueError) as e:
        if claim is not None:
            claim.release()
        raise RunError(f"cannot write the run folder {out or 'runs'}: {getattr(e, 'strerror', None) or e}") from None
    return claim
