"""Which code produced a result: a fingerprint of the source that a training run executes.

Two results with the same fingerprint come from byte-identical Python, C++ and CUDA sources,
whatever their commits; the scripts that write the README's figures record it next to the
commit, so the README can say whether two figures come from the same code without asking git.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["TRAINING_CODE", "code_fingerprint"]

#: The sources a training run executes, relative to the repository root.
TRAINING_CODE = ("hanet_fast", "csrc", "kernels", "setup.py")
_SOURCE_SUFFIXES = (".py", ".cpp", ".h", ".cu", ".cuh")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _source_files(root: str) -> list[str]:
    files = []
    for entry in TRAINING_CODE:
        path = os.path.join(root, entry)
        if os.path.isfile(path):
            files.append(entry)
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [os.path.relpath(os.path.join(folder, n), root) for n in names if n.endswith(_SOURCE_SUFFIXES)]
    return sorted(files)


def code_fingerprint(root: str | None = None) -> str:
    """The first 12 hex digits of a SHA-256 over the relative path and bytes of every source
    file (``.py``, ``.cpp``, ``.h``, ``.cu``, ``.cuh``) under :data:`TRAINING_CODE` in ``root``
    (default: the checkout this package was imported from)."""
    root = root or _ROOT
    digest = hashlib.sha256()
    for name in _source_files(root):
        with open(os.path.join(root, name), "rb") as f:
            data = f.read()
        digest.update(f"{name.replace(os.sep, '/')}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:12]
