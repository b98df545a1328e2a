"""Loads the compiled op library ``hanet_fast._C`` and says what it was built with.

Importing ``_C`` runs the C++ ``TORCH_LIBRARY`` registrations, which define the
``torch.ops.hanet_fast.*`` operators and their CPU (and, when built, CUDA) kernels.
"""

from __future__ import annotations

import importlib.util

import torch

LOAD_ERROR: str | None = None
if importlib.util.find_spec("hanet_fast._C") is None:  # a source tree that was never built
    LOAD_ERROR = "the C++ extension hanet_fast._C is not built; install with `pip install -e .`"
else:
    try:
        from hanet_fast import _C  # noqa: F401  (imported for its registrations)
    except ImportError as error:  # built against another torch, or a missing library
        LOAD_ERROR = f"the C++ extension hanet_fast._C failed to load ({error}); rebuild with `pip install -e .`"


def is_loaded() -> bool:
    """True when the C++ op library is importable (the ``cpu`` backend exists)."""
    return LOAD_ERROR is None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when ``hanet_fast::<op>`` has a kernel registered for ``dispatch_key`` (e.g. "CPU", "CUDA")."""
    if LOAD_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"hanet_fast::{op}", dispatch_key)


def built_with_cuda() -> bool:
    """True when the library was compiled with its CUDA kernels."""
    return has_kernel("height_gate", "CUDA")
