"""Small helpers shared by the command-line tools (``train``, ``evaluate``, ``infer``, ``analyze``)."""

from __future__ import annotations

import argparse
import os
import stat
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

import torch
from PIL import ExifTags, Image

from hanet_fast._io import folder_problem
from hanet_fast._messages import one_line
from hanet_fast.data import DatasetError

__all__ = ["HelpFormatter", "size_arg", "resolve_device", "scales_arg", "parse_args", "error_exit", "check_outputs",
           "image_size", "same_size_batches", "add_compile_arg", "compile_backend", "compile_model",
           "DEFAULT_COMPILE_BACKEND", "default_out", "check_workload", "interrupted", "MAX_SCALE",
           "MAX_THREADS", "WARN_WINDOWS", "checkpoint_files"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only for defaults worth reading (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def size_arg(text: str) -> tuple[int, int]:
    """argparse type: ``HxW``, ``H,W`` or one number for a square -> ``(H, W)`` positive ints."""
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW, H,W or one size (positive integers), got {text!r}")
    return parts[0], parts[1]


#: The largest test scale accepted on a command line (the image size bounds it further, see
#: :func:`check_workload`); the official multi-scale test goes up to 2.
MAX_SCALE = 16.0


def scales_arg(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated positive scales up to :data:`MAX_SCALE`, e.g. ``0.5,1,2``."""
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or any(not 0 < s <= MAX_SCALE for s in scales):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers up to {MAX_SCALE:g} such as "
                                         f"0.5,1,2, got {text!r}")
    return scales


def check_workload(sizes: Iterable[tuple[int, int]], scales: Sequence[float], window: tuple[int, int] | None,
                   overlap: float) -> None:
    """:func:`hanet_fast.inference.check_workload` for every image size, before the model loads:
    ValueError naming ``--scales`` or ``--window``; a warning with the count when an image takes
    more than :data:`WARN_WINDOWS` windows (a run that would take minutes is announced)."""
    from hanet_fast.inference import WorkloadError
    from hanet_fast.inference import check_workload as check

    most, at = 1, None
    for size in sizes:
        try:
            n = check(size, scales, window, overlap)
        except WorkloadError as e:
            raise ValueError(f"--{e.argument}: {e}") from None
        if n > most:
            most, at = n, size
    if most > WARN_WINDOWS:
        warnings.warn(f"--window {window[0]}x{window[1]} with --overlap {overlap:g} cuts the {at[0]}x{at[1]} images "
                      f"into {most} windows (at one scale), each a pass of the network: {most} times the work of "
                      f"whole images")


#: More sliding windows per image than this is announced (:func:`check_workload`).
WARN_WINDOWS = 64


#: The most torch CPU threads a command accepts (``--threads``): far more than any machine's cores,
#: far fewer than the tens of thousands at which creating the thread pool crashes the process.
MAX_THREADS = 1024


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None,
               check: Callable[[argparse.ArgumentParser, argparse.Namespace], None]) -> argparse.Namespace:
    """Parse ``argv``, run the tool's ``check(parser, args)`` (which calls ``parser.error``) and
    apply ``--threads`` (0: torch's default; at most :data:`MAX_THREADS`). Warnings are shown
    from then on as one line ``warning: <message>`` (without the library's file and source line)."""
    args = parser.parse_args(argv)
    check(parser, args)
    threads = getattr(args, "threads", 0)
    if threads and not 0 < threads <= MAX_THREADS:
        parser.error(f"--threads must be in 0..{MAX_THREADS} (this machine has {os.cpu_count()} CPUs), got {threads}")
    warnings.formatwarning = _one_line_warning
    if threads:
        torch.set_num_threads(threads)
    return args


def interrupted(parser: argparse.ArgumentParser, detail: str = "") -> NoReturn:
    """Ctrl-C: exit with status 130 and one line ``<prog>: interrupted[ (detail)]`` on stderr."""
    parser.exit(130, f"\n{parser.prog}: interrupted" + (f" ({detail})" if detail else "") + "\n")


def resolve_device(text: str) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:N``...; ValueError
    naming the problem for an unknown or unavailable device."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise ValueError(f"--device {text!r} is not a device: {e}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {text!r}: not a device that computes results here (use cpu or cuda)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text!r}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def error_exit(parser: argparse.ArgumentParser, err: BaseException | str) -> NoReturn:
    """Exit with status 2 and one line ``<prog>: error: <message>`` on stderr.

    An exception re-raised by a DataLoader worker carries the worker's traceback in its message:
    only the original exception's own line is kept. Multi-line messages (e.g. lists of
    mismatching checkpoint keys) are joined with ``; `` so that the error stays one line."""
    parser.exit(2, f"{parser.prog}: error: {one_line(err)}\n")


def _is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both already resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_folder_writable(folder: str, flag: str) -> None:
    """``folder`` must be a folder, or creatable in a writable one; ValueError naming ``flag``
    otherwise (a file, a symbolic link loop, a dangling link on the way, a read-only ancestor)."""
    problem = folder_problem(folder)
    if problem:
        raise ValueError(f"{flag}: cannot write into {folder}: {problem}")
    probe = os.path.abspath(folder)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: {probe} is not writable")


def _file_ids(paths: Iterable[str]) -> dict[tuple[int, int], str]:
    """``{(device, inode): path}`` of each path and, for a link, of what it points to."""
    ids = {}
    for path in paths:
        for follow in (True, False):
            try:
                st = os.stat(path, follow_symlinks=follow)
            except OSError:
                continue
            ids.setdefault((st.st_dev, st.st_ino), path)
    return ids


def _place(path: str) -> str:
    """Where a write of ``path`` lands: its folder resolved, its own name not (the writer replaces
    a link there instead of following it)."""
    return os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))


def check_outputs(paths: Sequence[str], *, flag: str, overwrite: bool, inputs: Iterable[str] = (),
                  protected: Iterable[str] = (), owners: Sequence[str] | None = None) -> None:
    """Refuse, before anything is written, a set of output files that would destroy data.

    The files are then written with :mod:`hanet_fast._io` (atomically; a link at an output path
    is replaced, never written through), so an output that is a link (dangling or not) counts as
    an existing file, to be replaced only with ``overwrite``.

    Args:
        paths: every file the command is about to write.
        flag: the option that chose them (named in the errors), e.g. ``--out``.
        overwrite: whether files left by an earlier run may be replaced (``--overwrite``).
        inputs: files the command reads: never written, even with ``overwrite`` (compared by
            identity, so links and case-insensitive file systems are covered).
        protected: folders nothing may be written into (equal or below), e.g. a data set's
            image and label folders: every file there is an input.
        owners: for each path, what it is the output of (named when two outputs collide or an
            output would replace an input).

    Raises:
        ValueError: two outputs are one file (compared case-insensitively, as some file systems
            do), an output is an input or lies in a protected folder, an output is a folder,
            its folder cannot be created or written, or (without ``overwrite``) it exists.
    """
    owners = list(owners) if owners is not None else list(paths)
    places = [_place(p) for p in paths]
    for folder in {os.path.realpath(f) for f in protected}:
        for path, place in zip(paths, places):
            if _is_within(place, folder):
                raise ValueError(f"{flag}: refusing to write {path} into the data set's folder {folder}; "
                                 f"choose another {flag}")
    first: dict[str, int] = {}
    for k, place in enumerate(places):
        j = first.setdefault(place.casefold(), k)
        if j != k:
            raise ValueError(f"{flag}: {owners[j]} and {owners[k]} would both be written to {paths[k]}")
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in paths}):
        _check_folder_writable(folder, flag)
    input_ids = _file_ids(inputs)
    existing = []
    for path, owner in zip(paths, owners):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ValueError(f"{flag}: cannot write {path}: {e.strerror}") from None
        # An output that is an input, or a link to one, is refused (although the writer would
        # replace the link, the user most likely meant the input).
        source = next((input_ids[i] for i in _file_ids([path]) if i in input_ids), None)
        if source is not None:
            what = f", the output of {owner}," if owner != path else ""
            raise ValueError(f"{flag}: {path}{what} would overwrite the input {source}; choose another {flag}")
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{flag}: {path} is a folder, not a file")
        existing.append(path)
    if existing and not overwrite:
        raise ValueError(f"{flag}: {len(existing)} file(s) to write already exist (e.g. {existing[0]}): pass "
                         f"--overwrite to replace them, or choose another {flag}")


# EXIF Orientation values that turn the image a quarter (its stored width becomes the height).
_QUARTER_TURNS = (5, 6, 7, 8)


def image_size(path: str, *, oriented: bool = False) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header, without decoding it; ``oriented``: as
    :func:`hanet_fast.data.read_image` with ``oriented=True`` returns it (EXIF Orientation applied).

    Raises:
        hanet_fast.data.DatasetError: the file is missing or not a readable image (named).
    """
    try:
        with Image.open(path) as im:
            if oriented and im.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS:
                return im.width, im.height
            return im.height, im.width
    except Exception as e:  # PIL.UnidentifiedImageError, OSError
        raise DatasetError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def same_size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices ``0..len(sizes)-1`` in batches of at most ``batch_size`` items of one size each
    (grouped by size in order of first appearance; the order within a size is kept), so that
    images of different sizes never need padding to share a batch."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, size in enumerate(sizes):
        groups[tuple(size)].append(i)
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]


COMPILE_HELP = ("torch.compile the whole network with the torch.compile backend BACKEND (default inductor, "
                "the one that generates fast code; aot_eager only traces, a quick check); slow first batches "
                "while it compiles, then faster; checkpoints stay interchangeable with eager runs")
DEFAULT_COMPILE_BACKEND = "inductor"


def compile_backend(name: str) -> str:
    """argparse type of ``--compile``: a backend name ``torch.compile`` knows."""
    import torch._dynamo  # imported here: only a run that compiles pays for it

    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise argparse.ArgumentTypeError(f"unknown torch.compile backend {name!r} (known: {', '.join(known)})")
    return name


#: The checkpoint a training run folder gives: ``last`` (the newest, default) or ``best`` (the best
#: validation mIoU, hanet_fast.training.best).
RUN_CHECKPOINT_FILES = {"last": "checkpoint.pt", "best": "best.pt"}


def add_run_checkpoint_arg(group) -> None:
    """The ``--run-checkpoint {last,best}`` flag of ``evaluate``, ``infer`` and ``export``."""
    group.add_argument("--run-checkpoint", choices=list(RUN_CHECKPOINT_FILES), default="last",
                       help="which checkpoint a run folder given as --checkpoint gives: last (checkpoint.pt, the newest) "
                            "or best (best.pt, the best validation mIoU of the run)")


def run_checkpoint(path: str, which: str = "last") -> str:
    """What ``--checkpoint path`` with ``--run-checkpoint which`` loads: ``last``, the path as it is
    (a run folder gives its ``checkpoint.pt``, see :func:`hanet_fast.inference.load_model`);
    ``best``, the run folder's ``best.pt``. ValueError naming the flag when ``best`` is asked of a
    file or of a run folder that has no ``best.pt``."""
    if which == "last":
        return path
    if not os.path.isdir(path):
        raise ValueError(f"--run-checkpoint {which} picks a file of a run folder; --checkpoint {path} is a file")
    file = os.path.join(path, RUN_CHECKPOINT_FILES[which])
    if not os.path.isfile(file):
        raise ValueError(f"--run-checkpoint best: {path} has no best.pt (the run has not validated yet)")
    return file


def add_compile_arg(group) -> None:
    """The ``--compile [BACKEND]`` flag of ``train``, ``evaluate`` and ``infer`` (one help text for
    all three): absent, ``None`` (eager); bare, :data:`DEFAULT_COMPILE_BACKEND`."""
    group.add_argument("--compile", nargs="?", const=DEFAULT_COMPILE_BACKEND, default=None, type=compile_backend,
                       metavar="BACKEND", help=COMPILE_HELP)


def compile_model(model: torch.nn.Module, backend: str = DEFAULT_COMPILE_BACKEND) -> torch.nn.Module:
    """``torch.compile`` ``model`` in place with ``backend`` and return it.

    ``nn.Module.compile`` compiles the module's forward without wrapping it in an
    ``OptimizedModule``, so ``state_dict()`` keeps its plain keys (no ``_orig_mod.`` prefix) and a
    checkpoint written by a compiled run loads into an eager one and back."""
    model.compile(backend=backend)
    return model


def checkpoint_files(checkpoint: str) -> list[str]:
    """The files ``--checkpoint`` may name, to pass as ``inputs`` to :func:`check_outputs`: the
    path itself and, for a run folder, its ``checkpoint.pt`` and ``best.pt``."""
    return [checkpoint] + [os.path.join(checkpoint, name) for name in RUN_CHECKPOINT_FILES.values()]


def default_out(out: str | None, checkpoint: str | None, name: str) -> str:
    """``--out`` of ``infer`` / ``analyze``: as given; else the subfolder ``name`` of the run folder
    given as ``--checkpoint``; else ``name`` in the current folder."""
    if out is not None:
        return out
    if checkpoint is not None and os.path.isdir(checkpoint):
        return os.path.join(checkpoint, name)
    return name
