"""The two fused HANet ops (DESIGN §1): :func:`height_pool` and :func:`height_gate`.

Each call picks a backend (see :mod:`hanet_fast.ops.backends`): ``reference`` (stock
PyTorch), ``cpu`` (C++), ``cuda`` (CUDA C++) or ``triton``. All backends give the
same results up to floating-point rounding, the same errors and the same gradients.
"""

from __future__ import annotations

import torch

from hanet_fast import _extension
from hanet_fast.ops import _validate, autograd, reference
from hanet_fast.ops.backends import BACKENDS, available_backends, resolve_backend

if _extension.is_loaded():
    from hanet_fast.ops import _registration  # noqa: F401  (fake kernels + autograd)

__all__ = ["height_pool", "height_gate", "available_backends", "resolve_backend", "BACKENDS"]


def height_pool(x: torch.Tensor, rows: int = 16, mode: str = "avg", *, backend: str = "auto") -> torch.Tensor:
    """Pool ``x`` over its width into ``rows`` coarse rows (paper Fig. 2a-b), reading ``x`` once.

    Args:
        x: feature map ``[B, C, H, W]`` of a floating dtype, NCHW or channels_last.
        rows: number of coarse rows ``R`` (>= 1). Row bin ``i`` spans input rows
            ``[floor(i*H/R), ceil((i+1)*H/R))``, so ``H < R`` and ``H % R != 0`` work.
        mode: ``"avg"`` (equals ``F.adaptive_avg_pool2d(x, (R, 1))``) or ``"max"``
            (equals ``F.adaptive_max_pool2d``; NaN propagates).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``[B, C, rows]`` in ``x``'s dtype, contiguous.
    """
    _validate.check_height_pool(x, rows, mode)
    name = resolve_backend(backend, x.device)
    if name == "reference":
        return reference.height_pool(x, rows, mode)
    suffix = "_triton" if name == "triton" else ""
    if mode == "avg":
        return autograd.apply("height_pool_avg", suffix, x, rows)
    return autograd.apply("height_pool_max", suffix, x, rows)[0]


def height_gate(x: torch.Tensor, attn: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Gate every row of ``x`` with the coarse attention linearly upsampled to ``x``'s height (Eq. 2).

    ``y = x * F.interpolate(attn, size=H, mode="linear", align_corners=False)[..., None]``,
    with the upsampled attention computed on the fly, never stored.

    Args:
        x: feature map ``[B, C, H, W]`` of a floating dtype, NCHW or channels_last.
        attn: coarse attention ``[B, C, rows]`` on ``x``'s device. Dtypes are promoted
            as ``x * attn`` would promote them.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``[B, C, H, W]`` in the promoted dtype and ``x``'s memory format.
    """
    _validate.check_height_gate(x, attn)
    name = resolve_backend(backend, x.device)
    if name == "reference":
        return reference.height_gate(x, attn)
    dtype = torch.promote_types(x.dtype, attn.dtype)
    return autograd.apply("height_gate", "_triton" if name == "triton" else "", x.to(dtype), attn.to(dtype))
