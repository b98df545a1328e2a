"""Cases shared by the op tests (and the benchmarks): backends, dtypes with tolerances, shapes."""

from __future__ import annotations

import pytest
import torch

import hanet_fast


AVAILABLE = [name for name, why in hanet_fast.ops.available_backends().items() if why is None]
# Fused backends and the device their tensors live on.
FUSED_BACKENDS = [
    pytest.param(name, device, id=name, marks=[pytest.mark.gpu] if device == "cuda" else [])
    for name, device in (("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda"))
]

# (dtype, atol, rtol): float32/float64 are compared with the reference in the same dtype;
# half and bfloat16 with a float64 reference on the same inputs, since the fused kernels
# accumulate in float32 and round once, where the composed reference rounds every step.
DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="float32"),
    pytest.param(torch.float64, 1e-12, 1e-12, id="float64"),
    pytest.param(torch.float16, 2e-3, 2e-3, id="float16"),
    pytest.param(torch.bfloat16, 1.6e-2, 1.6e-2, id="bfloat16"),
]

# (B, C, H, W, rows): H divisible and not by rows, H < rows, W = 1, B = 1, large W.
SHAPES = [
    pytest.param((2, 3, 32, 8, 16), id="divisible"),
    pytest.param((2, 5, 37, 9, 16), id="H_not_divisible"),
    pytest.param((1, 4, 5, 7, 16), id="H_lt_rows"),
    pytest.param((3, 2, 19, 1, 4), id="W1"),
    pytest.param((1, 1, 1, 1, 1), id="all_ones"),
    pytest.param((1, 6, 23, 515, 16), id="large_W"),
    pytest.param((2, 19, 12, 10, 7), id="odd_channels"),
]

MEMORY_FORMATS = [
    pytest.param(torch.contiguous_format, id="nchw"),
    pytest.param(torch.channels_last, id="nhwc"),
]


def require_backend(name: str, device: str) -> None:
    """Skips the calling test when `name` cannot run here or `device` is missing."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    why = hanet_fast.ops.available_backends()[name]
    if why is not None:
        pytest.skip(f"backend {name!r} unavailable: {why}")


def oracle_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference runs in when checking a backend's `dtype` results."""
    return torch.float64 if dtype in (torch.float16, torch.bfloat16) else dtype


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, scale: float = 1.0) -> None:
    """Compares in float64; `scale` widens atol for values that are sums of many terms."""
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol * scale, rtol=rtol, equal_nan=True
    )


