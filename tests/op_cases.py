"""Cases shared by the op tests (and the benchmarks): backends, dtypes with tolerances, shapes,
input makers and bad arguments."""

from __future__ import annotations

import pytest
import torch

import hanet_fast


AVAILABLE = [name for name, why in hanet_fast.ops.available_backends().items() if why is None]
# Under TRITON_INTERPRET=1 (set by tests/test_triton_interpreter.py's driver) the triton backend
# runs on CPU tensors in Triton's interpreter, one program at a time in Python: small shapes only.
TRITON_INTERPRETED = hanet_fast.ops.available_backends()["triton"] is None and hanet_fast.triton.interpreted()
TRITON_DEVICE = "cpu" if TRITON_INTERPRETED else "cuda"
# Fused backends and the device their tensors live on.
FUSED_BACKENDS = [
    pytest.param(name, device, id=name, marks=[pytest.mark.gpu] if device == "cuda" else [])
    for name, device in (("cpu", "cpu"), ("cuda", "cuda"), ("triton", TRITON_DEVICE))
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
if TRITON_INTERPRETED:
    SHAPES = [p for p in SHAPES if p.id in ("divisible", "H_not_divisible", "H_lt_rows", "W1", "all_ones")]
    SHAPES.append(pytest.param((1, 7, 10, 11, 3), id="B1_rows3"))

MEMORY_FORMATS = [
    pytest.param(torch.contiguous_format, id="nchw"),
    pytest.param(torch.channels_last, id="nhwc"),
]


def require_backend(name: str, device: str) -> None:
    """Skips the calling test when `name` cannot run here or `device` is missing."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    why = hanet_fast.ops.available_backends(device)[name]
    if why is not None:
        pytest.skip(f"backend {name!r} unavailable: {why}")


def make_x(shape, dtype, device, memory_format=torch.contiguous_format, seed=0) -> torch.Tensor:
    """A random ``x`` of ``shape = (B, C, H, W, rows)``, drawn in float64 so every dtype sees the same values."""
    B, C, H, W, _ = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    return x.to(device).contiguous(memory_format=memory_format)


def make_attn(shape, dtype, device, seed=1) -> torch.Tensor:
    """A random attention map ``[B, C, rows]`` in [0, 1) for ``shape = (B, C, H, W, rows)``."""
    B, C, _, _, rows = shape
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, rows, generator=gen, dtype=torch.float64).to(dtype).to(device)


def grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


def oracle_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference runs in when checking a backend's `dtype` results."""
    return torch.float64 if dtype in (torch.float16, torch.bfloat16) else dtype


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, scale: float = 1.0) -> None:
    """Compares in float64; `scale` widens atol for values that are sums of many terms."""
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol * scale, rtol=rtol, equal_nan=True
    )




def bad_inputs(device: str) -> tuple[list, list]:
    """(gate cases, pool cases) of bad public-API arguments: ``(args, error type, message regex)``."""
    x = torch.randn(2, 3, 8, 4, device=device)
    attn = torch.rand(2, 3, 4, device=device)
    other = "meta" if device == "cpu" else "cpu"
    gate = [
        ((x[0], attn), ValueError, r"x must be a 4-D tensor"),
        ((x.long(), attn), TypeError, r"x must have a floating-point dtype"),
        ((x, attn[0]), ValueError, r"attn must be a 3-D tensor"),
        ((x, attn.int()), TypeError, r"attn must have a floating-point dtype"),
        ((x, attn.to(other)), ValueError, r"attn is on .* but x is on"),
        ((x, attn[:1]), ValueError, r"attn must have x's batch and channel sizes"),
        ((x, attn[:, :2]), ValueError, r"attn must have x's batch and channel sizes"),
        ((x, attn[:, :, :0]), ValueError, r"attn must have at least one row"),
    ]
    pool = [
        ((x[0], 4, "avg"), ValueError, r"x must be a 4-D tensor"),
        ((x.to(torch.int32), 4, "avg"), TypeError, r"x must have a floating-point dtype"),
        ((x, 0, "avg"), ValueError, r"rows must be >= 1"),
        ((x, -3, "max"), ValueError, r"rows must be >= 1"),
        ((x, 4, "median"), ValueError, r"mode must be one of"),
        ((x[:, :, :0], 4, "avg"), ValueError, r"x must have height and width >= 1"),
    ]
    return gate, pool


def check_direct_op_errors(suffix: str, device: str) -> None:
    """Calls the operators ``torch.ops.hanet_fast.<name><suffix>`` (``""``: C++, ``"_triton"``)
    directly with bad arguments and asserts they fail with the public API's wording."""
    def op(name: str):
        return getattr(torch.ops.hanet_fast, name + suffix)

    gate, pool = bad_inputs(device)
    for args, error, message in gate:
        if args[1].device.type == "meta":
            continue  # the dispatcher refuses mixed devices before the kernel runs
        with pytest.raises(error, match=message):
            op("height_gate")(*args)
    for args, error, message in pool:
        if args[2] != "avg":
            continue  # the mode is the public API's; the ops are split by mode
        for name in ("height_pool_avg", "height_pool_max"):
            with pytest.raises(error, match=message):
                op(name)(args[0], args[1])
    x = torch.randn(2, 3, 8, 4, device=device)
    attn = torch.rand(2, 3, 4, device=device)
    with pytest.raises(TypeError, match=r"attn must have x's dtype"):
        op("height_gate")(x, attn.double())
    with pytest.raises(ValueError, match=r"grad_y must have x's shape"):
        op("height_gate_backward")(x[:1], x, attn)
    with pytest.raises(TypeError, match=r"grad_y must have x's dtype"):
        op("height_gate_attn_backward")(x.double(), x, 4)
    with pytest.raises(ValueError, match=r"rows must be >= 1"):
        op("height_gate_attn_backward")(x, x, 0)
    with pytest.raises(ValueError, match=r"grad_out must be a 3-D tensor"):
        op("height_pool_avg_backward")(x, 8, 4, False)
    with pytest.raises(ValueError, match=r"indices must be an int64 tensor"):
        op("height_pool_max_backward")(attn, attn, 8, 4, False)
