"""Triton backend (DESIGN §2): ``torch.library.triton_op`` registrations of the two fused ops,
forward and backward, as ops of their own (the dispatcher holds one CUDA kernel per op):

=========================================  ===================================================
``hanet_fast::height_pool_avg_triton``     ``hanet_fast::height_pool_avg_backward_triton``
``hanet_fast::height_pool_max_triton``     ``hanet_fast::height_pool_max_backward_triton``
``hanet_fast::height_gate_triton``         ``hanet_fast::height_gate_backward_triton``,
                                           ``hanet_fast::height_gate_attn_backward_triton``
=========================================  ===================================================

with the schemas of the C++ ops and the same autograd. Kernels live in
:mod:`hanet_fast.triton.height_pool` and :mod:`hanet_fast.triton.height_gate`.

Triton kernels run on CUDA tensors, or on CPU tensors when Triton's interpreter is on
(``TRITON_INTERPRET=1`` in the environment before triton is imported; slow, for tests).
The ops are registered at import where they can run (a CUDA device is present, or the
interpreter is on); elsewhere :func:`ensure_registered` registers them on demand, since
``triton_op`` pulls in torch._inductor (seconds of import time) to no use there.
This package stays importable without triton: :func:`unavailable_reason` then says why.
"""

from __future__ import annotations

import torch

_REGISTERED = False


def _probe() -> tuple[str | None, bool]:
    """(why the backend cannot run, or None; whether triton interprets)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton not installed", False
    if not (hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")):
        return f"torch {torch.__version__} has no torch.library.triton_op (needs torch >= 2.6)", False
    try:
        from hanet_fast.triton._common import INTERPRETED
    except Exception as error:  # a broken or too old triton
        return f"triton could not be used ({type(error).__name__}: {error})", False
    return None, INTERPRETED


def ensure_registered() -> None:
    """Registers the ``hanet_fast::*_triton`` ops (once); raises if the backend is unavailable."""
    global _REGISTERED, _UNAVAILABLE_REASON
    if _REGISTERED:
        return
    if _UNAVAILABLE_REASON is not None:
        raise RuntimeError(f"hanet_fast: backend 'triton' is not available: {_UNAVAILABLE_REASON}")
    try:
        from hanet_fast.ops.autograd import register_autograd
        from hanet_fast.triton import height_gate, height_pool  # noqa: F401  (registers the ops)

        register_autograd("_triton")
    except Exception as error:
        _UNAVAILABLE_REASON = f"the triton ops could not be registered ({type(error).__name__}: {error})"
        raise RuntimeError(f"hanet_fast: backend 'triton' is not available: {_UNAVAILABLE_REASON}") from error
    _REGISTERED = True


_UNAVAILABLE_REASON, INTERPRETED = _probe()
if _UNAVAILABLE_REASON is None and (INTERPRETED or torch.cuda.is_available()):
    try:
        ensure_registered()
    except RuntimeError:
        pass  # _UNAVAILABLE_REASON says why


def unavailable_reason() -> str | None:
    """None when the Triton backend can run (triton imports and its ops are or can be
    registered), else why it cannot."""
    return _UNAVAILABLE_REASON


def interpreted() -> bool:
    """True when the kernels run under Triton's interpreter (on CPU tensors)."""
    return INTERPRETED
