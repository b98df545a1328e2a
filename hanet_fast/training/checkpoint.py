"""Atomic checkpoints: written to a temporary file in the same folder, fsynced, then
``os.replace``d over the target, so a crash never leaves a truncated checkpoint. Loaded with
``torch.load(weights_only=True)``: checkpoints hold tensors and plain Python containers only."""

from __future__ import annotations

import errno
import glob
import os
import pickle

import torch

# Keys every training checkpoint written by hanet_fast.train holds (what --resume needs).
TRAINING_KEYS = ("iteration", "model", "optimizer", "scheduler", "rng", "args")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or a file is not a checkpoint that can be resumed; the
    message names the file."""


class _WriteRecorder:
    """Forwards writes to a file and keeps the first OSError raised: torch's zip writer turns it
    into an unspecific "unexpected pos" error, and the cause (e.g. a full disk) must be reported."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _temporary(path: str, pid: int | str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp{pid}")


def save_atomic(obj: dict, path: str) -> None:
    """Write ``obj`` to ``path`` atomically: the previous file stays intact if anything fails.

    Raises:
        CheckpointError: the file cannot be written (the message says "no space left on device"
            for a full disk, and names ``path``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _temporary(path, os.getpid())
    recorder = None
    try:
        with open(tmp, "wb") as f:
            recorder = _WriteRecorder(f)
            torch.save(obj, recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        cause = recorder.error if recorder is not None and recorder.error is not None else e
        if not isinstance(cause, OSError):
            raise
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = "no space left on device" if cause.errno == errno.ENOSPC else "disk quota exceeded"
        else:
            reason = cause.strerror or str(cause)
        raise CheckpointError(f"cannot write checkpoint {path}: {reason} (the previous checkpoint, if any, "
                              f"is unchanged)") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str) -> list[str]:
    """Delete the temporaries that :func:`save_atomic` left next to ``path`` when its process was
    killed mid-write (their process is gone); returns the files removed."""
    removed = []
    for tmp in glob.glob(glob.escape(_temporary(path, "")) + "*"):
        suffix = tmp.rsplit(".tmp", 1)[-1]
        if not suffix.isdigit() or int(suffix) == os.getpid() or _pid_alive(int(suffix)):
            continue
        try:
            os.remove(tmp)
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        removed.append(tmp)
    return removed


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
