"""Input checks shared by every backend and by the fake (meta) kernels.

The C++ kernels repeat these checks with the same wording (csrc/checks.h) so that
calling ``torch.ops.hanet_fast.*`` directly fails the same way as the public API.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

POOL_MODES = ("avg", "max")
#: The dtypes every backend computes in (DESIGN §1); float8 and the rest are refused by name.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT64_MAX = 2**63 - 1


def check_dense_float(t: torch.Tensor, name: str) -> None:
    """TypeError naming ``name`` unless ``t`` is a dense (strided) tensor of a dtype in
    :data:`FLOAT_DTYPES` (sparse layouts and float8 would otherwise fail deep in a kernel)."""
    if t.layout != torch.strided:
        raise TypeError(f"hanet_fast: {name} must be a dense (strided) tensor, got layout {t.layout}; "
                        f"convert it with {name}.to_dense()")
    if t.dtype not in FLOAT_DTYPES:
        kind = "floating-point dtype" if not t.is_floating_point() else "dtype"
        raise TypeError(f"hanet_fast: {name} must have a {kind} among float16, bfloat16, float32, float64, "
                        f"got {t.dtype}")


def check_feature_map(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hanet_fast: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout == torch.strided and x.dim() != 4:
        raise ValueError(
            f"hanet_fast: {name} must be a 4-D tensor [B, C, H, W], got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    check_dense_float(x, name)


def check_rows(rows: int) -> None:
    if isinstance(rows, bool) or not isinstance(rows, int):
        raise TypeError(f"hanet_fast: rows must be an int, got {type(rows).__name__}")
    if rows < 1:
        raise ValueError(f"hanet_fast: rows must be >= 1, got {rows}")
    if rows > INT64_MAX:  # the operators take a C++ int64
        raise ValueError(f"hanet_fast: rows must be at most 2**63 - 1, got {rows}")


def check_pool_mode(mode: str) -> None:
    if mode not in POOL_MODES:
        raise ValueError(f"hanet_fast: mode must be one of {POOL_MODES}, got {mode!r}")


def check_height_pool(x: torch.Tensor, rows: int, mode: str = "avg") -> None:
    check_feature_map(x, "x")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"hanet_fast: x must have height and width >= 1 to be pooled, got shape {tuple(x.shape)}")
    check_rows(rows)
    check_pool_mode(mode)


def check_height_gate(x: torch.Tensor, attn: torch.Tensor) -> None:
    check_feature_map(x, "x")
    if not isinstance(attn, torch.Tensor):
        raise TypeError(f"hanet_fast: attn must be a torch.Tensor, got {type(attn).__name__}")
    if attn.dim() != 3:
        raise ValueError(
            f"hanet_fast: attn must be a 3-D tensor [B, C, rows], got {attn.dim()}-D with shape {tuple(attn.shape)}"
        )
    check_dense_float(attn, "attn")
    if attn.device != x.device:
        raise ValueError(f"hanet_fast: attn is on {attn.device} but x is on {x.device}; they must be on one device")
    if attn.shape[0] != x.shape[0] or attn.shape[1] != x.shape[1]:
        raise ValueError(
            f"hanet_fast: attn must have x's batch and channel sizes [{x.shape[0]}, {x.shape[1]}, rows], "
            f"got {tuple(attn.shape)}"
        )
    if attn.shape[2] < 1:
        raise ValueError("hanet_fast: attn must have at least one row (rows >= 1), got 0")


# ----------------------------------------------------------------------------- op-level checks
# What the operators themselves (C++ csrc/checks.h, Triton ops) check beyond the public API.
def check_same_dtype(x: torch.Tensor, attn: torch.Tensor) -> None:
    if attn.dtype != x.dtype:
        raise TypeError(f"hanet_fast: attn must have x's dtype {x.dtype}, got {attn.dtype}")


def check_grad_y(grad_y: torch.Tensor, x: torch.Tensor) -> None:
    if grad_y.device != x.device:
        raise ValueError(f"hanet_fast: grad_y is on {grad_y.device} but x is on {x.device}; they must be on one device")
    if grad_y.shape != x.shape:
        raise ValueError(f"hanet_fast: grad_y must have x's shape {tuple(x.shape)}, got {tuple(grad_y.shape)}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"hanet_fast: grad_y must have x's dtype {x.dtype}, got {grad_y.dtype}")


def check_pool_grad(grad_out: torch.Tensor, height: int, width: int) -> None:
    if grad_out.dim() != 3:
        raise ValueError(
            f"hanet_fast: grad_out must be a 3-D tensor [B, C, rows], got {grad_out.dim()}-D "
            f"with shape {tuple(grad_out.shape)}"
        )
    if not grad_out.is_floating_point():
        raise TypeError(f"hanet_fast: grad_out must have a floating-point dtype, got {grad_out.dtype}")
    if height < 1 or width < 1:
        raise ValueError(f"hanet_fast: height and width must be >= 1, got {height} and {width}")


def check_pool_indices(indices: torch.Tensor, grad_out: torch.Tensor, height: int, width: int) -> None:
    """The argmax handed to height_pool_max's backward, which writes through it (csrc/checks.h
    checks the same, worded the same): each entry of bin ``i`` must be a flat index ``h * W + w``
    of its plane with ``h`` among the bin's rows, i.e. lie in ``[bin_start * W, bin_end * W)``."""
    if indices.shape != grad_out.shape or indices.dtype != torch.int64:
        raise ValueError(
            f"hanet_fast: indices must be an int64 tensor shaped like grad_out {tuple(grad_out.shape)}, "
            f"got {indices.dtype} {tuple(indices.shape)}"
        )
    if indices.device != grad_out.device:
        raise ValueError(
            f"hanet_fast: indices is on {indices.device} but grad_out is on {grad_out.device}; "
            "they must be on one device"
        )
    # Fake and meta tensors (tracing, torch.compile) carry no values to check.
    if indices.numel() == 0 or indices.device.type == "meta" or is_fake(indices):
        return
    rows = grad_out.shape[2]
    bins = torch.arange(rows, device=indices.device)
    lo = torch.div(bins * height, rows, rounding_mode="floor") * width
    hi = (torch.div((bins + 1) * height - 1, rows, rounding_mode="floor") + 1) * width
    outside = (indices < lo) | (indices >= hi)
    if not bool(outside.any()):
        return
    first = int(outside.flatten().int().argmax())
    plane, b = divmod(first, rows)
    raise ValueError(
        "hanet_fast: indices must hold, for each bin i, a flat index h * W + w with h in the bin's rows "
        f"[floor(i*H/R), ceil((i+1)*H/R)) and 0 <= w < W (H = {height}, W = {width}, R = {rows}); "
        f"got {int(indices.flatten()[first])} at [{plane // grad_out.shape[1]}, {plane % grad_out.shape[1]}, {b}], "
        f"whose rows are [{int(lo[b]) // width}, {int(hi[b]) // width})"
    )
