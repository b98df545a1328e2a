"""The one safe way hanet_fast writes files: atomically, never through a link, and into run
folders claimed by one process at a time.

Every file is written to a temporary file in its target folder, fsynced, then moved over the
target with ``os.replace``. A crash therefore never leaves a truncated file, and a target that is
a symbolic link (dangling or not) is replaced as a link: what it points to is never written. With
``overwrite=False`` the move is ``os.link``, which fails if the target appeared meanwhile (no
check-then-write race).

A run folder is claimed with :func:`claim_run_folder`: the folder is created with ``os.mkdir``
(atomic) and a lock file inside it is held with ``flock`` for the run. The kernel releases the lock
when its process ends, however it ends, so a crashed run never leaves a stale claim behind (a lock
file created with ``O_EXCL`` would need a stale-lock rule).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import itertools
import json
import os
import socket
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["atomic_path", "atomic_open", "write_bytes", "write_text", "write_json", "save_image", "save_figure",
           "save_npz", "torch_save", "remove_stale_temporaries", "folder_problem", "claim_run_folder",
           "RunFolderClaim", "FolderInUseError", "LOCK_NAME"]

_counter = itertools.count()


def _temporary(path: str, pid: int | str, n: int | str = "") -> str:
    """``<folder>/.<name>.tmp<pid>.<n><ext>``: in the target's folder (so ``os.replace`` is a rename
    on one file system), hidden, naming the writing process (see :func:`remove_stale_temporaries`),
    and ending like the target (writers that take a file name infer the format from it)."""
    folder, name = os.path.split(os.path.abspath(path))
    tail = f".{n}{os.path.splitext(name)[1]}" if n != "" else ""
    return os.path.join(folder, f".{name}.tmp{pid}{tail}")


def folder_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as a folder to create or write into, or None if it can: a file,
    a symbolic link loop, a link to a missing target, or a non-folder ancestor."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"{path} is a symbolic link loop"
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    if os.path.lexists(path):
        return None if os.path.isdir(path) else f"{path} is a file, not a folder"
    parent = os.path.dirname(os.path.abspath(path))
    return None if parent == os.path.abspath(path) else folder_problem(parent)


def _commit(tmp: str, path: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails with EEXIST if anything (a file, a link) is at path
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists (not replaced)", path) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # a file system without hard links: check, then move (a narrow race instead of none)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists (not replaced)", path) from None
        os.replace(tmp, path)
        return
    os.remove(tmp)


def _fsync_folder(folder: str) -> None:
    """Persist the rename itself (best effort: not every file system lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[str]:
    """Yield a fresh temporary path in ``path``'s folder; when the block succeeds, the file written
    there is fsynced and moved onto ``path`` (replacing a link at ``path`` as a link, never writing
    through it). On an exception nothing at ``path`` changes and the temporary is removed.

    For writers that take a file name (ONNX export, ``savefig``); prefer :func:`atomic_open`.

    Raises:
        FileExistsError: ``overwrite`` is False and something exists at ``path``.
        IsADirectoryError: ``path`` is a folder.
        OSError: the folder cannot be created or written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _temporary(path, os.getpid(), next(_counter))
    # O_EXCL | O_NOFOLLOW: never open something that is already there, link or not.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path, overwrite)
        _fsync_folder(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


class _WriteRecorder:
    """Forwards writes to a file and keeps the first OSError raised: some writers (torch's zip
    writer) turn it into an unspecific error, and the cause (e.g. a full disk) must be reported."""

    def __init__(self, f: IO) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, overwrite: bool = True,
                encoding: str | None = None) -> Iterator[IO]:
    """``open(path, mode)`` for writing, atomically (see :func:`atomic_path`). If the writer fails
    after a write raised an OSError (say, a full disk), that OSError is raised instead of whatever
    the writer made of it."""
    if mode not in ("w", "wb"):
        raise ValueError(f"hanet_fast._io: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, mode, encoding=encoding if mode == "w" else None) as f:
            recorder = _WriteRecorder(f)
            try:
                yield recorder
            except Exception as e:
                if recorder.error is not None and recorder.error is not e:
                    raise recorder.error from e
                raise


def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", overwrite=overwrite) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", overwrite=overwrite, encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True, **dump_kwargs: Any) -> None:
    """``json.dump(obj, ..., **dump_kwargs)`` to ``path`` atomically (serialised first, so an
    object JSON cannot hold raises before anything is written)."""
    write_text(path, json.dumps(obj, **dump_kwargs), overwrite=overwrite)


def _image_format(path: str) -> str:
    from PIL import Image

    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"hanet_fast._io: cannot tell the image format of {path} from its extension")
    return fmt


def save_image(image, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Save a PIL image or a uint8 ``[H, W]`` / ``[H, W, 3]`` array to ``path`` atomically, in the
    format its extension names."""
    from PIL import Image

    path = os.fspath(path)
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    fmt = _image_format(path)
    with atomic_open(path, "wb", overwrite=overwrite) as f:
        image.save(f, format=fmt)


def save_figure(fig, path: str | os.PathLike, *, overwrite: bool = True, **savefig_kwargs: Any) -> None:
    """``fig.savefig`` (matplotlib) to ``path`` atomically, in the format its extension names."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or None
    with atomic_open(path, "wb", overwrite=overwrite) as f:
        fig.savefig(f, format=fmt, **savefig_kwargs)


def save_npz(path: str | os.PathLike, *, overwrite: bool = True, **arrays: Any) -> None:
    """``numpy.savez_compressed`` to ``path`` (which should end in ``.npz``) atomically."""
    import numpy as np

    with atomic_open(path, "wb", overwrite=overwrite) as f:
        np.savez_compressed(f, **arrays)


def torch_save(obj: Any, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """``torch.save(obj, path)`` atomically; a failed write raises its OSError (e.g. ENOSPC)."""
    import torch

    with atomic_open(path, "wb", overwrite=overwrite) as f:
        torch.save(obj, f)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Delete the temporaries that a write of ``path`` left behind when its process was killed
    mid-write (their process is gone); returns the files removed."""
    removed = []
    for tmp in glob.glob(glob.escape(_temporary(os.fspath(path), "")) + "*"):
        pid = tmp.rsplit(".tmp", 1)[-1].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            os.remove(tmp)
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        removed.append(tmp)
    return removed


#: The lock file a claimed run folder holds while its run lasts (removed when the claim is released).
LOCK_NAME = ".hanet_fast.lock"


class FolderInUseError(ValueError):
    """The run folder is claimed by another running process, or holds an earlier run."""


class RunFolderClaim:
    """A run folder held by this process (see :func:`claim_run_folder`); a context manager that
    releases it on exit. ``created`` says whether the claim created the folder."""

    def __init__(self, folder: str, fd: int, created: bool) -> None:
        self.folder, self._fd, self.created = folder, fd, created

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.folder, LOCK_NAME))
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self) -> RunFolderClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def _lock(folder: str) -> int:
    """The fd of ``folder``'s lock file, flocked; FolderInUseError if another process holds it."""
    lock = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # The holder writes its id just after locking, so a claim racing it may read nothing yet.
            holder = os.read(fd, 200).decode(errors="replace").strip() or "a process that has not yet named itself"
            os.close(fd)
            raise FolderInUseError(f"{folder} is in use by another run ({holder})") from None
        # The holder we waited for may have removed (released) the file we locked: lock the one there now.
        try:
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)


def claim_run_folder(folder: str | os.PathLike, *, reuse: bool = False) -> RunFolderClaim:
    """Claim ``folder`` for one run, atomically, before anything is written into it.

    The folder is created if absent. Then its lock file :data:`LOCK_NAME` is locked (``flock``)
    for as long as the returned claim is held (release it, use it as a context manager, or let the
    process end). Of two processes claiming one folder, exactly one succeeds; the other gets
    :class:`FolderInUseError` having written nothing.

    Args:
        folder: the run folder.
        reuse: whether a folder that already holds files may be claimed (``--overwrite``, or a
            resumed run); without it, only an absent or empty folder can be.

    Raises:
        FolderInUseError: another process holds the folder, or (without ``reuse``) it is not empty.
        ValueError: ``folder`` is a file, a symbolic link loop or a link to nothing (named).
        OSError: it cannot be created.
    """
    folder = os.fspath(folder)
    problem = folder_problem(folder)
    if problem:
        raise ValueError(problem)
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    try:
        os.mkdir(folder)
        created = True
    except FileExistsError:
        created = False
    claim = RunFolderClaim(folder, _lock(folder), created)
    if not created and not reuse:
        others = sorted(set(os.listdir(folder)) - {LOCK_NAME})
        if others:
            claim.release()
            raise FolderInUseError(f"{folder} already holds files (e.g. {others[0]}) of another run")
    return claim
