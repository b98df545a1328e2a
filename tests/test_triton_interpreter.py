"""The Triton backend against the reference ops (DESIGN §1-2), on CPU under Triton's interpreter.

Triton decides whether it interprets when the kernels are defined, so ``TRITON_INTERPRET=1``
must be in the environment before triton (and hanet_fast) is imported. This file therefore
works in two ways:

* collected by a plain ``python -m pytest`` (no ``TRITON_INTERPRET``): one test,
  :func:`test_interpreter_suite`, runs this file again in a subprocess with
  ``TRITON_INTERPRET=1`` and asserts that it passes (its output is shown on failure). The
  parity tests below then run on CUDA tensors with the compiled kernels, when a GPU is
  present (``gpu`` mark), together with ``opcheck`` and ``torch.compile`` tests that need
  a GPU (on CPU tensors both are GPU-only paths of ``triton_op``).
* collected with ``TRITON_INTERPRET=1`` (``TRITON_INTERPRET=1 python -m pytest
  tests/test_triton_interpreter.py``): the parity tests run the kernels on CPU tensors in
  the interpreter, on small shapes (the interpreter runs every program in Python).

The interpreter runs float32, float64, float16 and bfloat16 (bfloat16 through the float32
casts the kernels make on load and store).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hanet_fast
from hanet_fast.ops import reference
from op_cases import DTYPES, MEMORY_FORMATS, SHAPES, assert_close, oracle_dtype

TRITON_REASON = hanet_fast.ops.available_backends()["triton"]
INTERPRETED = TRITON_REASON is None and hanet_fast.triton.interpreted()
DEVICE = "cpu" if INTERPRETED else "cuda"
POOL_MODES = ["avg", "max"]
REPO = Path(__file__).resolve().parents[1]

# inf * 0 in the interpolation gives NaN, as in the reference; numpy warns about it.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.usefixtures("one_thread"),
]

# The interpreter is slow: the shapes of op_cases.SHAPES without the large ones.
if INTERPRETED:
    SHAPES = [p for p in SHAPES if p.id in ("divisible", "H_not_divisible", "H_lt_rows", "W1", "all_ones")]
    SHAPES.append(pytest.param((1, 7, 10, 11, 3), id="B1_rows3"))


def _requires_triton_here() -> None:
    if TRITON_REASON is not None:
        pytest.skip(f"backend 'triton' unavailable: {TRITON_REASON}")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)")


def kernel_test(test):
    """Marks a test that runs the triton kernels: under the interpreter on CPU tensors, else
    on a GPU (``gpu`` mark; skipped without one)."""
    test = pytest.mark.usefixtures("_triton_here")(test)
    return test if INTERPRETED else pytest.mark.gpu(test)


@pytest.fixture
def _triton_here():
    _requires_triton_here()


def make_x(shape, dtype, memory_format=torch.contiguous_format, seed=0):
    B, C, H, W, _ = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    return x.to(DEVICE).contiguous(memory_format=memory_format)


def make_attn(shape, dtype, seed=1):
    B, C, _, _, rows = shape
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, rows, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)


def grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


# ----------------------------------------------------------------------------- the driver
@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="this is the interpreter run")
def test_interpreter_suite():
    """Runs this file under TRITON_INTERPRET=1 in a fresh process (triton reads it at import)."""
    if TRITON_REASON is not None:
        pytest.skip(f"backend 'triton' unavailable: {TRITON_REASON}")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", str(Path(__file__).relative_to(REPO)), "-q", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    elapsed = time.perf_counter() - start
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"interpreter run failed ({elapsed:.0f} s): {' '.join(command)}\n{output[-20000:]}"
    assert " passed" in output and " failed" not in output, output[-5000:]
    print(f"interpreter run: {elapsed:.0f} s\n{output.strip().splitlines()[-1]}")


# ----------------------------------------------------------------------------- parity
@kernel_test
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("mode", POOL_MODES)
def test_height_pool_matches_reference(dtype, atol, rtol, shape, memory_format, mode):
    rows = shape[4]
    x = make_x(shape, dtype, memory_format).requires_grad_()
    z = hanet_fast.height_pool(x, rows, mode, backend="triton")
    assert z.shape == (shape[0], shape[1], rows) and z.dtype == dtype and z.is_contiguous()

    x_ref = x.detach().to(oracle_dtype(dtype)).requires_grad_()
    z_ref = reference.height_pool(x_ref, rows, mode)
    assert_close(z, z_ref, atol, rtol)
    if mode == "max":  # the argmax is the reference's too
        indices = torch.ops.hanet_fast.height_pool_max_triton(x.detach(), rows)[1]
        ref_indices = torch.nn.functional.adaptive_max_pool2d(x_ref.detach(), (rows, 1), return_indices=True)[1]
        assert torch.equal(indices, ref_indices.squeeze(-1))

    grad_z = torch.randn_like(z_ref)
    (grad_x,) = grads(z, x, grad_z.to(dtype))
    (grad_x_ref,) = grads(z_ref, x_ref, grad_z)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape
    assert grad_x.is_contiguous(memory_format=memory_format)
    assert_close(grad_x, grad_x_ref, atol, rtol)


@kernel_test
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_height_gate_matches_reference(dtype, atol, rtol, shape, memory_format):
    x = make_x(shape, dtype, memory_format).requires_grad_()
    attn = make_attn(shape, dtype).requires_grad_()
    y = hanet_fast.height_gate(x, attn, backend="triton")
    assert y.shape == x.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=memory_format)

    x_ref = x.detach().to(oracle_dtype(dtype)).requires_grad_()
    attn_ref = attn.detach().to(oracle_dtype(dtype)).requires_grad_()
    y_ref = reference.height_gate(x_ref, attn_ref)
    assert_close(y, y_ref, atol, rtol)

    grad_y = torch.randn_like(y_ref)
    grad_x, grad_attn = grads(y, (x, attn), grad_y.to(dtype))
    grad_x_ref, grad_attn_ref = grads(y_ref, (x_ref, attn_ref), grad_y)
    assert grad_x.is_contiguous(memory_format=memory_format)
    assert grad_attn.shape == attn.shape and grad_attn.dtype == dtype
    assert_close(grad_x, grad_x_ref, atol, rtol)
    terms = shape[3] * max(1, shape[2] // shape[4])  # grad_attn sums ~ W * H / rows products
    assert_close(grad_attn, grad_attn_ref, atol, rtol, scale=terms**0.5)


@kernel_test
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("wanted", ["x", "attn"])
def test_height_gate_single_gradient(memory_format, wanted):
    """Only the requested gradient is computed (x only: the forward op; attn only: its own op)."""
    shape = (2, 3, 21, 6, 8)
    x = make_x(shape, torch.float64, memory_format).requires_grad_(wanted == "x")
    attn = make_attn(shape, torch.float64).requires_grad_(wanted == "attn")
    target = x if wanted == "x" else attn
    grad_y = torch.randn(x.shape, dtype=torch.float64).to(DEVICE)
    (got,) = grads(hanet_fast.height_gate(x, attn, backend="triton"), target, grad_y)
    (expected,) = grads(reference.height_gate(x, attn), target, grad_y)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@kernel_test
def test_gradient_with_zero_strides():
    """The backward of .sum() hands the kernels an expanded (stride 0) gradient."""
    shape = (2, 4, 13, 5, 6)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = make_x(shape, torch.float64, memory_format).requires_grad_()
        attn = make_attn(shape, torch.float64).requires_grad_()
        got = grads(hanet_fast.height_gate(x, attn, backend="triton").sum(), (x, attn), None)
        want = grads(reference.height_gate(x, attn).sum(), (x, attn), None)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)
        for mode in POOL_MODES:
            (g,) = grads(hanet_fast.height_pool(x, 6, mode, backend="triton").sum(), x, None)
            (w,) = grads(reference.height_pool(x, 6, mode).sum(), x, None)
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)
    # And straight into the backward ops, which take strides rather than copying.
    x = make_x(shape, torch.float64)
    attn = make_attn(shape, torch.float64)
    grad_y = torch.ones((), dtype=torch.float64, device=DEVICE).expand(x.shape)
    assert grad_y.stride() == (0, 0, 0, 0)
    grad_x, grad_attn = torch.ops.hanet_fast.height_gate_backward_triton(grad_y, x, attn)
    want = grads(reference.height_gate(x.requires_grad_(), attn.requires_grad_()), (x, attn), grad_y)
    torch.testing.assert_close(grad_x, want[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad_attn, want[1], atol=1e-12, rtol=1e-12)
    grad_z = torch.full((), 2.0, dtype=torch.float64, device=DEVICE).expand(2, 4, 6)
    got = torch.ops.hanet_fast.height_pool_avg_backward_triton(grad_z, 13, 5, False)
    torch.testing.assert_close(got, grads(reference.height_pool(x, 6, "avg"), x, grad_z)[0], atol=1e-12, rtol=1e-12)


@kernel_test
@pytest.mark.parametrize("op", ["pool_avg", "pool_max", "gate"])
def test_non_dense_strides(op):
    """Inputs that are neither NCHW- nor NHWC-contiguous still give the reference's answer."""
    base = torch.randn(2, 9, 15, 22, dtype=torch.float64, device=DEVICE)
    views = [base[:, ::2, :, ::3], base.transpose(2, 3), base.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)]
    for x in views:
        x = x.detach().requires_grad_()
        grad_source = torch.randn(x.shape, dtype=torch.float64, device=DEVICE)
        if op == "gate":
            attn = torch.rand(x.shape[0], x.shape[1], 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
            out = hanet_fast.height_gate(x, attn, backend="triton")
            expected = reference.height_gate(x, attn)
            inputs = (x, attn)
        else:
            mode = op.split("_")[1]
            out = hanet_fast.height_pool(x, 4, mode, backend="triton")
            expected = reference.height_pool(x, 4, mode)
            inputs = (x,)
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
        grad_out = grad_source.flatten()[: out.numel()].view(out.shape)
        for got, want in zip(grads(out, inputs, grad_out), grads(expected, inputs, grad_out)):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@kernel_test
def test_height_gate_promotes_dtypes_like_multiplication():
    shape = (1, 3, 9, 4, 4)
    x = make_x(shape, torch.bfloat16)
    attn = make_attn(shape, torch.float32)
    y = hanet_fast.height_gate(x, attn, backend="triton")
    y_ref = reference.height_gate(x, attn)
    assert y.dtype == y_ref.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-6)


@kernel_test
@pytest.mark.parametrize("rows", [1, 2, 40])
def test_rows_extremes(rows):
    """One bin (every row), and more bins than rows (bins repeat rows, several r-blocks)."""
    shape = (1, 3, 11, 5, rows)
    x = make_x(shape, torch.float64, seed=rows).requires_grad_()
    attn = make_attn(shape, torch.float64).requires_grad_()
    for mode in POOL_MODES:
        z = hanet_fast.height_pool(x, rows, mode, backend="triton")
        z_ref = reference.height_pool(x, rows, mode)
        torch.testing.assert_close(z, z_ref, atol=1e-12, rtol=1e-12)
        grad_z = torch.randn_like(z)
        torch.testing.assert_close(grads(z, x, grad_z)[0], grads(z_ref, x, grad_z)[0], atol=1e-12, rtol=1e-12)
    y = hanet_fast.height_gate(x, attn, backend="triton")
    y_ref = reference.height_gate(x, attn)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    grad_y = torch.randn_like(y)
    for got, want in zip(grads(y, (x, attn), grad_y), grads(y_ref, (x, attn), grad_y)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@kernel_test
def test_empty_batch():
    x = torch.randn(0, 3, 5, 4, device=DEVICE, requires_grad=True)
    attn = torch.rand(0, 3, 2, device=DEVICE, requires_grad=True)
    assert hanet_fast.height_pool(x, 2, "max", backend="triton").shape == (0, 3, 2)
    y = hanet_fast.height_gate(x, attn, backend="triton")
    assert y.shape == x.shape
    grad_x, grad_attn = grads(y, (x, attn), torch.ones_like(y))
    assert grad_x.shape == x.shape and grad_attn.shape == attn.shape


# ----------------------------------------------------------------------------- special values
@kernel_test
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_and_inf_propagate_like_reference(memory_format, dtype):
    shape = (2, 3, 11, 7, 4)
    x = make_x(shape, torch.float32)
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 5, 0] = float("inf")
    x[1, 2, 9, 6] = float("-inf")
    x[1, 0, 0, :] = float("-inf")  # a whole row of -inf: max keeps the first position
    x[1, 1, 3, 2] = float("nan")
    x[1, 1, 4, 5] = float("nan")  # two NaNs in one bin: the later one is the argmax
    x[0, 2, 6, 1] = x[0, 2, 6, 4] = x[0, 2, 7, 2] = 9.0  # tied maxima: the first one is the argmax
    x = x.to(dtype).contiguous(memory_format=memory_format)
    attn = make_attn(shape, dtype)
    attn[0, 2, 1] = float("nan")
    attn[1, 0, 3] = float("inf")
    for mode in POOL_MODES:
        xg = x.detach().requires_grad_()
        z = hanet_fast.height_pool(xg, 4, mode, backend="triton")
        xr = x.detach().requires_grad_()
        z_ref = reference.height_pool(xr, 4, mode)
        torch.testing.assert_close(z, z_ref, equal_nan=True, atol=1e-2, rtol=1e-2)
        grad = torch.ones_like(z)
        torch.testing.assert_close(grads(z, xg, grad)[0], grads(z_ref, xr, grad)[0], equal_nan=True)
    indices = torch.ops.hanet_fast.height_pool_max_triton(x, 4)[1]
    ref_indices = torch.nn.functional.adaptive_max_pool2d(x, (4, 1), return_indices=True)[1].squeeze(-1)
    assert torch.equal(indices, ref_indices)
    y = hanet_fast.height_gate(x, attn, backend="triton")
    y_ref = reference.height_gate(x, attn)
    assert torch.equal(y.isnan(), y_ref.isnan())
    assert torch.equal(y.isinf(), y_ref.isinf())
    finite = y_ref.isfinite()
    torch.testing.assert_close(y[finite], y_ref[finite], atol=1e-2, rtol=1e-2)


@kernel_test
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_max_pool_ties_and_signed_zeros_pick_the_first(memory_format):
    x = torch.zeros(1, 2, 3, 4, device=DEVICE)
    x[0, 0, :, 0] = -0.0
    x[0, 1] = torch.tensor([[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 3.0, 3.0], [-1.0, 3.0, 3.0, 3.0]])
    for rows in (2, 3):
        xg = x.contiguous(memory_format=memory_format).requires_grad_()
        z = hanet_fast.height_pool(xg, rows, "max", backend="triton")
        z_ref = reference.height_pool(xg, rows, "max")
        assert torch.equal(z, z_ref) and torch.equal(z.signbit(), z_ref.signbit())
        grad = torch.arange(1.0, 2 * rows + 1, device=DEVICE).view(1, 2, rows)
        assert torch.equal(grads(z, xg, grad)[0], grads(z_ref, xg, grad)[0])


# ----------------------------------------------------------------------------- determinism
@kernel_test
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_bitwise_deterministic(memory_format):
    shape = (2, 6, 19, 10, 8) if INTERPRETED else (2, 24, 45, 67, 16)

    def run():
        x = make_x(shape, torch.float32, memory_format).requires_grad_()
        attn = make_attn(shape, torch.float32).requires_grad_()
        outs = []
        for mode in POOL_MODES:
            z = hanet_fast.height_pool(x, shape[4], mode, backend="triton")
            outs += [z, *grads(z, x, torch.ones_like(z))]
        y = hanet_fast.height_gate(x, attn, backend="triton")
        outs += [y, *grads(y, (x, attn), torch.ones_like(y) / 3)]
        return outs

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


# ----------------------------------------------------------------------------- errors
def _bad_inputs():
    x = torch.randn(2, 3, 8, 4, device=DEVICE)
    attn = torch.rand(2, 3, 4, device=DEVICE)
    other = "meta" if DEVICE == "cpu" else "cpu"
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


@kernel_test
def test_bad_input_errors_name_the_argument():
    gate, pool = _bad_inputs()
    for args, error, message in gate:
        with pytest.raises(error, match=message):
            hanet_fast.height_gate(*args, backend="triton")
    for args, error, message in pool:
        with pytest.raises(error, match=message):
            hanet_fast.height_pool(*args, backend="triton")


@kernel_test
def test_direct_op_calls_fail_like_the_public_api():
    ops = torch.ops.hanet_fast
    gate, pool = _bad_inputs()
    for args, error, message in gate:
        if args[1].device.type == "meta":
            continue  # the dispatcher refuses mixed devices before the op runs
        with pytest.raises(error, match=message):
            ops.height_gate_triton(*args)
    for args, error, message in pool:
        if args[2] != "avg":
            continue
        for op in (ops.height_pool_avg_triton, ops.height_pool_max_triton):
            with pytest.raises(error, match=message):
                op(args[0], args[1])
    x = torch.randn(2, 3, 8, 4, device=DEVICE)
    attn = torch.rand(2, 3, 4, device=DEVICE)
    with pytest.raises(TypeError, match=r"attn must have x's dtype"):
        ops.height_gate_triton(x, attn.double())
    with pytest.raises(ValueError, match=r"grad_y must have x's shape"):
        ops.height_gate_backward_triton(x[:1], x, attn)
    with pytest.raises(TypeError, match=r"grad_y must have x's dtype"):
        ops.height_gate_attn_backward_triton(x.double(), x, 4)
    with pytest.raises(ValueError, match=r"rows must be >= 1"):
        ops.height_gate_attn_backward_triton(x, x, 0)
    with pytest.raises(ValueError, match=r"grad_out must be a 3-D tensor"):
        ops.height_pool_avg_backward_triton(x, 8, 4, False)
    with pytest.raises(ValueError, match=r"indices must be an int64 tensor"):
        ops.height_pool_max_backward_triton(attn, attn, 8, 4, False)


# ----------------------------------------------------------------------------- registration
def test_schemas_match_the_cpp_ops():
    """Each Triton op has the schema of the C++ op it stands in for."""
    if TRITON_REASON is not None:
        pytest.skip(f"backend 'triton' unavailable: {TRITON_REASON}")
    if hanet_fast.ops.available_backends()["cpu"] is not None:
        pytest.skip("the C++ extension is not built")
    hanet_fast.triton.ensure_registered()  # deferred where no kernel can run (no GPU, no interpreter)
    names = [
        "height_pool_avg", "height_pool_avg_backward", "height_pool_max", "height_pool_max_backward",
        "height_gate", "height_gate_backward", "height_gate_attn_backward",
    ]
    for name in names:
        cpp = str(getattr(torch.ops.hanet_fast, name).default._schema)
        triton_schema = str(getattr(torch.ops.hanet_fast, name + "_triton").default._schema)
        assert triton_schema.replace(f"{name}_triton(", f"{name}(", 1) == cpp


def test_device_rule():
    """triton runs on cuda tensors, and on cpu tensors only under the interpreter; auto keeps cpu."""
    if TRITON_REASON is not None:
        pytest.skip(f"backend 'triton' unavailable: {TRITON_REASON}")
    resolve = hanet_fast.ops.resolve_backend
    if INTERPRETED:
        assert resolve("triton", torch.device("cpu")) == "triton"
    else:
        with pytest.raises(ValueError, match=r"backend 'triton' runs on cuda tensors"):
            resolve("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"backend 'triton' runs on cuda tensors"):
        resolve("triton", torch.device("meta"))
    if hanet_fast.ops.backends.DEFAULT_BACKEND == "auto" and hanet_fast.ops.available_backends()["cpu"] is None:
        assert resolve("auto", torch.device("cpu")) == "cpu"


# ----------------------------------------------------------------------------- GPU only
def _op_samples():
    ops = torch.ops.hanet_fast
    samples = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(2, 3, 9, 5, dtype=dtype, device="cuda").contiguous(memory_format=memory_format)
            attn = torch.rand(2, 3, 4, dtype=dtype, device="cuda")
            grad_z = torch.randn(2, 3, 4, dtype=dtype, device="cuda")
            grad_y = torch.randn_like(x)
            indices = ops.height_pool_max_triton(x, 4)[1]
            cl = memory_format == torch.channels_last
            samples += [
                (ops.height_pool_avg_triton.default, (x.requires_grad_(), 4)),
                (ops.height_pool_max_triton.default, (x, 4)),
                (ops.height_gate_triton.default, (x, attn.requires_grad_())),
                (ops.height_pool_avg_backward_triton.default, (grad_z, 9, 5, cl)),
                (ops.height_pool_max_backward_triton.default, (grad_z, indices, 9, 5, cl)),
                (ops.height_gate_backward_triton.default, (grad_y, x.detach(), attn.detach())),
                (ops.height_gate_attn_backward_triton.default, (grad_y, x.detach(), 4)),
            ]
    return samples


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="opcheck's fake-tensor test of a triton_op is a GPU path")
def test_opcheck_every_op():
    _requires_triton_here()
    for op, args in _op_samples():
        torch.library.opcheck(op, args)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="torch.compile of a triton_op is a GPU path")
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_torch_compile_fullgraph(memory_format):
    """torch.compile sees through the triton ops (no graph break), forward and backward."""
    _requires_triton_here()

    def gate_by_pooled(x_low, x_high, mode):
        attn = torch.sigmoid(hanet_fast.height_pool(x_low, 8, mode, backend="triton"))
        return hanet_fast.height_gate(x_high, attn, backend="triton")

    compiled = torch.compile(gate_by_pooled, fullgraph=True)
    for mode in POOL_MODES:
        x_low = torch.randn(2, 6, 20, 12, device="cuda").contiguous(memory_format=memory_format).requires_grad_()
        x_high = torch.randn(2, 6, 33, 17, device="cuda").contiguous(memory_format=memory_format).requires_grad_()
        got = compiled(x_low, x_high, mode)
        want = gate_by_pooled(x_low, x_high, mode)
        torch.testing.assert_close(got, want)
        grad = torch.randn_like(want)
        for g, w in zip(grads(got, (x_low, x_high), grad), grads(want, (x_low, x_high), grad)):
            torch.testing.assert_close(g, w)


# ----------------------------------------------------------------------------- compiles for a GPU
def _compile_for_sm90(kernel, pointers: dict, constants: dict, num_warps: int):
    """Compiles a kernel to a cubin for sm_90 ahead of time (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.autotuner import Autotuner

    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in fn.arg_names}
    source = triton.compiler.ASTSource(fn, signature, constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="the interpreter does not compile")
def test_kernels_compile_for_sm90():
    """Every kernel, with the launch settings it gets on a GPU, goes through Triton's real
    compiler down to a cubin: the interpreter accepts code the compiler rejects."""
    if TRITON_REASON is not None:
        pytest.skip(f"backend 'triton' unavailable: {TRITON_REASON}")
    import triton

    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend")
    from hanet_fast.triton import height_gate as hg
    from hanet_fast.triton import height_pool as hp
    from hanet_fast.triton._common import ELEMENTWISE_NCHW_CONFIGS, ELEMENTWISE_NHWC_CONFIGS

    # (C, H, W, R): a typical map, and sizes of 1 (Triton turns int arguments equal to 1 into constants).
    shapes = [(256, 97, 96, 16), (1, 1, 1, 1)]
    for dtype in ("fp32", "fp64", "bf16"):
        acc = "fp64" if dtype == "fp64" else "fp32"
        fp64 = dtype == "fp64"
        for channels_last in (False, True):
            unit_stride = {"sxc": 1} if channels_last else {"sxw": 1}
            for C, H, W, R in shapes:
                ones = {k: 1 for k, v in dict(C=C, H=H, W=W, R=R).items() if v == 1}
                for is_max, kernel in ((False, hp._pool_avg_kernel), (True, hp._pool_max_kernel)):
                    cfg = hp._forward_config(2, C, H, W, R, channels_last, is_max)
                    pointers = {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "idx_ptr": "*i64"}
                    blocks = {k: v for k, v in cfg.items() if k != "num_warps"}
                    constants = dict(IS_FP64=fp64, **blocks, **unit_stride, **ones)
                    _compile_for_sm90(kernel, pointers, constants, cfg["num_warps"])
                configs = ELEMENTWISE_NHWC_CONFIGS if channels_last else ELEMENTWISE_NCHW_CONFIGS
                for config in (configs[0], configs[-1]):
                    for is_max in (False, True):
                        index_type = "*i64" if is_max else f"*{dtype}"
                        pointers = {"gx_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "idx_ptr": index_type}
                        constants = dict(IS_MAX=is_max, IS_FP64=fp64, **config.kwargs, **ones)
                        _compile_for_sm90(hp._pool_backward_kernel, pointers, constants, config.num_warps)
                    pointers = {"y_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "attn_ptr": f"*{dtype}"}
                    constants = dict(IS_FP64=fp64, **config.kwargs, **unit_stride, **ones)
                    _compile_for_sm90(hg._gate_forward_kernel, pointers, constants, config.num_warps)
                cfg = hg._rows_config(C, H, W, channels_last)
                blocks = {k: v for k, v in cfg.items() if k != "num_warps"}
                for write_grad_x in (False, True):
                    pointers = {name: f"*{dtype}" for name in ("gx_ptr", "gy_ptr", "x_ptr", "attn_ptr")}
                    pointers["sums_ptr"] = f"*{acc}"
                    constants = dict(WRITE_GRAD_X=write_grad_x, IS_FP64=fp64, **blocks, **unit_stride, **ones)
                    _compile_for_sm90(hg._gate_backward_rows_kernel, pointers, constants, cfg["num_warps"])
                cfg = hg._attn_config(R)
                blocks = {k: v for k, v in cfg.items() if k != "num_warps"}
                ones_attn = {k: 1 for k, v in dict(C=C, H=H, R=R).items() if v == 1}
                pointers = {"gattn_ptr": f"*{dtype}", "sums_ptr": f"*{acc}"}
                constants = dict(IS_FP64=fp64, **blocks, **ones_attn)
                _compile_for_sm90(hg._gate_backward_attn_kernel, pointers, constants, cfg["num_warps"])
