"""Every fused backend of height_pool and height_gate against the reference ops (DESIGN §1)."""

from __future__ import annotations

import functools

import pytest
import torch

import hanet_fast
from hanet_fast.ops import reference
from op_cases import (DTYPES, FUSED_BACKENDS, MEMORY_FORMATS, SHAPES, TRITON_INTERPRETED, assert_close, bad_inputs,
                      check_direct_op_errors, grads, make_attn, make_x, oracle_dtype, require_backend)

POOL_MODES = ["avg", "max"]


# inf * 0 in the interpolation gives NaN, as in the reference; the Triton interpreter's numpy warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def max_pool_op(backend: str):
    """The max-pooling operator a backend runs (returns values and argmax indices)."""
    return torch.ops.hanet_fast.height_pool_max_triton if backend == "triton" else torch.ops.hanet_fast.height_pool_max


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("mode", POOL_MODES)
def test_height_pool_matches_reference(backend, device, dtype, atol, rtol, shape, memory_format, mode):
    require_backend(backend, device)
    rows = shape[4]
    x = make_x(shape, dtype, device, memory_format).requires_grad_()
    z = hanet_fast.height_pool(x, rows, mode, backend=backend)
    assert z.shape == (shape[0], shape[1], rows) and z.dtype == dtype and z.is_contiguous()

    x_ref = x.detach().to(oracle_dtype(dtype)).requires_grad_()
    z_ref = reference.height_pool(x_ref, rows, mode)
    assert_close(z, z_ref, atol, rtol)
    if mode == "max":  # the argmax is the reference's too
        indices = max_pool_op(backend)(x.detach(), rows)[1]
        ref_indices = torch.nn.functional.adaptive_max_pool2d(x_ref.detach(), (rows, 1), return_indices=True)[1]
        assert torch.equal(indices, ref_indices.squeeze(-1))

    grad_z = torch.randn_like(z_ref)
    (grad_x,) = grads(z, x, grad_z.to(dtype))
    (grad_x_ref,) = grads(z_ref, x_ref, grad_z)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape
    assert grad_x.is_contiguous(memory_format=memory_format)
    assert_close(grad_x, grad_x_ref, atol, rtol)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_height_gate_matches_reference(backend, device, dtype, atol, rtol, shape, memory_format):
    require_backend(backend, device)
    x = make_x(shape, dtype, device, memory_format).requires_grad_()
    attn = make_attn(shape, dtype, device).requires_grad_()
    y = hanet_fast.height_gate(x, attn, backend=backend)
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
    assert_close(grad_x, grad_x_ref, atol, rtol)
    # grad_attn sums about W * H / rows products: widen atol with the count.
    terms = shape[3] * max(1, shape[2] // shape[4])
    assert_close(grad_attn, grad_attn_ref, atol, rtol, scale=terms**0.5)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("wanted", ["x", "attn"])
def test_height_gate_single_gradient(backend, device, wanted):
    """Only the requested gradient is computed, and it equals the reference's."""
    require_backend(backend, device)
    shape = (2, 3, 21, 6, 8)
    x = make_x(shape, torch.float64, device).requires_grad_(wanted == "x")
    attn = make_attn(shape, torch.float64, device).requires_grad_(wanted == "attn")
    target = x if wanted == "x" else attn
    grad_y = torch.randn_like(x)
    (got,) = grads(hanet_fast.height_gate(x, attn, backend=backend), target, grad_y)
    (expected,) = grads(reference.height_gate(x, attn), target, grad_y)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("op", ["pool_avg", "pool_max", "gate"])
def test_non_dense_strides(backend, device, op):
    """Inputs that are neither NCHW- nor NHWC-contiguous still give the reference's answer."""
    require_backend(backend, device)
    base = torch.randn(2, 9, 15, 22, dtype=torch.float64, device=device)
    views = [base[:, ::2, :, ::3], base.transpose(2, 3), base.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)]
    for x in views:
        x = x.detach().requires_grad_()
        grad_source = torch.randn(x.shape, dtype=torch.float64, device=device)
        if op == "gate":
            attn = torch.rand(x.shape[0], x.shape[1], 5, dtype=torch.float64, device=device, requires_grad=True)
            out = hanet_fast.height_gate(x, attn, backend=backend)
            expected = reference.height_gate(x, attn)
            inputs = (x, attn)
        else:
            mode = op.split("_")[1]
            out = hanet_fast.height_pool(x, 4, mode, backend=backend)
            expected = reference.height_pool(x, 4, mode)
            inputs = (x,)
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
        grad_out = grad_source.flatten()[: out.numel()].view(out.shape)
        for got, want in zip(grads(out, inputs, grad_out), grads(expected, inputs, grad_out)):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
def test_gradient_with_zero_strides(backend, device):
    """The backward of .sum() hands the kernels an expanded (stride 0) gradient."""
    require_backend(backend, device)
    shape = (2, 4, 13, 5, 6)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = make_x(shape, torch.float64, device, memory_format).requires_grad_()
        attn = make_attn(shape, torch.float64, device).requires_grad_()
        got = grads(hanet_fast.height_gate(x, attn, backend=backend).sum(), (x, attn), None)
        want = grads(reference.height_gate(x, attn).sum(), (x, attn), None)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)
        for mode in POOL_MODES:
            (g,) = grads(hanet_fast.height_pool(x, 6, mode, backend=backend).sum(), x, None)
            (w,) = grads(reference.height_pool(x, 6, mode).sum(), x, None)
            torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
def test_height_gate_promotes_dtypes_like_multiplication(backend, device):
    require_backend(backend, device)
    shape = (1, 3, 9, 4, 4)
    x = make_x(shape, torch.bfloat16, device)
    attn = make_attn(shape, torch.float32, device)
    y = hanet_fast.height_gate(x, attn, backend=backend)
    y_ref = reference.height_gate(x, attn)
    assert y.dtype == y_ref.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("rows", [1, 2, 40])
def test_rows_extremes(backend, device, rows):
    """One bin (every row), and more bins than rows (bins repeat rows)."""
    require_backend(backend, device)
    shape = (1, 3, 11, 5, rows)
    x = make_x(shape, torch.float64, device, seed=rows).requires_grad_()
    attn = make_attn(shape, torch.float64, device).requires_grad_()
    for mode in POOL_MODES:
        z = hanet_fast.height_pool(x, rows, mode, backend=backend)
        z_ref = reference.height_pool(x, rows, mode)
        torch.testing.assert_close(z, z_ref, atol=1e-12, rtol=1e-12)
        grad_z = torch.randn_like(z)
        torch.testing.assert_close(grads(z, x, grad_z)[0], grads(z_ref, x, grad_z)[0], atol=1e-12, rtol=1e-12)
    y = hanet_fast.height_gate(x, attn, backend=backend)
    y_ref = reference.height_gate(x, attn)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    grad_y = torch.randn_like(y)
    for got, want in zip(grads(y, (x, attn), grad_y), grads(y_ref, (x, attn), grad_y)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
def test_empty_batch(backend, device):
    require_backend(backend, device)
    x = torch.randn(0, 3, 5, 4, device=device, requires_grad=True)
    attn = torch.rand(0, 3, 2, device=device, requires_grad=True)
    assert hanet_fast.height_pool(x, 2, "max", backend=backend).shape == (0, 3, 2)
    y = hanet_fast.height_gate(x, attn, backend=backend)
    assert y.shape == x.shape
    grad_x, grad_attn = grads(y, (x, attn), torch.ones_like(y))
    assert grad_x.shape == x.shape and grad_attn.shape == attn.shape


# ----------------------------------------------------------------------------- special values
@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_and_inf_propagate_like_reference(backend, device, memory_format, dtype):
    require_backend(backend, device)
    shape = (2, 3, 11, 7, 4)
    x = make_x(shape, torch.float32, device)
    x[0, 0, 2, 3] = float("nan")
    x[0, 1, 5, 0] = float("inf")
    x[1, 2, 9, 6] = float("-inf")
    x[1, 0, 0, :] = float("-inf")  # a whole row of -inf: max keeps the first position
    x[1, 1, 3, 2] = float("nan")
    x[1, 1, 4, 5] = float("nan")  # two NaNs in one bin: the later one is the argmax
    x[0, 2, 6, 1] = x[0, 2, 6, 4] = x[0, 2, 7, 2] = 9.0  # tied maxima: the first one is the argmax
    x = x.to(dtype).contiguous(memory_format=memory_format)
    attn = make_attn(shape, dtype, device)
    attn[0, 2, 1] = float("nan")
    attn[1, 0, 3] = float("inf")
    for mode in POOL_MODES:
        xg = x.detach().requires_grad_()
        z = hanet_fast.height_pool(xg, 4, mode, backend=backend)
        xr = x.detach().requires_grad_()
        z_ref = reference.height_pool(xr, 4, mode)
        torch.testing.assert_close(z, z_ref, equal_nan=True, atol=1e-2, rtol=1e-2)
        grad = torch.ones_like(z)
        torch.testing.assert_close(grads(z, xg, grad)[0], grads(z_ref, xr, grad)[0], equal_nan=True)
    indices = max_pool_op(backend)(x, 4)[1]
    ref_indices = torch.nn.functional.adaptive_max_pool2d(x, (4, 1), return_indices=True)[1].squeeze(-1)
    assert torch.equal(indices, ref_indices)
    y = hanet_fast.height_gate(x, attn, backend=backend)
    y_ref = reference.height_gate(x, attn)
    assert torch.equal(y.isnan(), y_ref.isnan())
    assert torch.equal(y.isinf(), y_ref.isinf())
    finite = y_ref.isfinite()
    torch.testing.assert_close(y[finite], y_ref[finite], atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_bitwise_deterministic(backend, device, memory_format):
    require_backend(backend, device)
    shape = (2, 6, 19, 10, 8) if backend == "triton" and TRITON_INTERPRETED else (2, 24, 45, 67, 16)

    def run():
        x = make_x(shape, torch.float32, device, memory_format).requires_grad_()
        attn = make_attn(shape, torch.float32, device).requires_grad_()
        outs = []
        for mode in POOL_MODES:
            z = hanet_fast.height_pool(x, shape[4], mode, backend=backend)
            outs += [z, *grads(z, x, torch.ones_like(z))]
        y = hanet_fast.height_gate(x, attn, backend=backend)
        outs += [y, *grads(y, (x, attn), torch.ones_like(y) / 3)]
        return outs

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


# ----------------------------------------------------------------------------- gradcheck / opcheck
@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_gradcheck(backend, device, memory_format):
    require_backend(backend, device)
    # The interpreter runs each kernel in Python: gradcheck's fast mode (a random projection of
    # the Jacobian instead of every column) keeps it to seconds.
    check = functools.partial(torch.autograd.gradcheck, fast_mode=backend == "triton" and TRITON_INTERPRETED)
    shape = (2, 3, 7, 4, 5)
    x = make_x(shape, torch.float64, device, memory_format).requires_grad_()
    attn = make_attn(shape, torch.float64, device).requires_grad_()
    assert check(lambda a, b: hanet_fast.height_gate(a, b, backend=backend), (x, attn))
    for mode in POOL_MODES:
        assert check(lambda a: hanet_fast.height_pool(a, 5, mode, backend=backend), (x,))
    x_short = make_x((1, 2, 3, 2, 5), torch.float64, device, memory_format).requires_grad_()  # H < rows
    for mode in POOL_MODES:
        assert check(lambda a: hanet_fast.height_pool(a, 5, mode, backend=backend), (x_short,))


# The C++ ops (suffix "") and the Triton ones ("_triton"); opcheck's fake-tensor test of a
# triton_op is a GPU path, so Triton's ops are checked on CUDA only.
OP_FAMILIES = [
    pytest.param("", "cpu", id="cpp-cpu"),
    pytest.param("", "cuda", id="cpp-cuda", marks=pytest.mark.gpu),
    pytest.param("_triton", "cuda", id="triton-cuda", marks=pytest.mark.gpu),
]


def _op_samples(suffix: str, device: str):
    def op(name: str):
        return getattr(torch.ops.hanet_fast, name + suffix).default

    samples = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(2, 3, 9, 5, dtype=dtype, device=device).contiguous(memory_format=memory_format)
            attn = torch.rand(2, 3, 4, dtype=dtype, device=device)
            grad_z = torch.randn(2, 3, 4, dtype=dtype, device=device)
            grad_y = torch.randn_like(x)
            indices = op("height_pool_max")(x, 4)[1]
            cl = memory_format == torch.channels_last
            samples += [
                (op("height_pool_avg"), (x.requires_grad_(), 4)),
                (op("height_pool_max"), (x, 4)),
                (op("height_gate"), (x, attn.requires_grad_())),
                (op("height_pool_avg_backward"), (grad_z, 9, 5, cl)),
                (op("height_pool_max_backward"), (grad_z, indices, 9, 5, cl)),
                (op("height_gate_backward"), (grad_y, x.detach(), attn.detach())),
                (op("height_gate_attn_backward"), (grad_y, x.detach(), 4)),
            ]
    return samples


@pytest.mark.parametrize("suffix,device", OP_FAMILIES)
def test_opcheck_every_op(suffix, device):
    require_backend("triton" if suffix else device, device)
    for op, args in _op_samples(suffix, device):
        torch.library.opcheck(op, args)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "backend,device", [pytest.param("reference", "cpu", id="reference"), *FUSED_BACKENDS]
)
def test_bad_input_errors_name_the_argument(backend, device):
    require_backend(backend, device)
    gate, pool = bad_inputs(device)
    for args, error, message in gate:
        with pytest.raises(error, match=message):
            hanet_fast.height_gate(*args, backend=backend)
    for args, error, message in pool:
        with pytest.raises(error, match=message):
            hanet_fast.height_pool(*args, backend=backend)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
def test_direct_op_calls_fail_like_the_public_api(backend, device):
    """The C++ and Triton ops' own checks word each error as the Python checks do."""
    require_backend(backend, device)
    check_direct_op_errors("_triton" if backend == "triton" else "", device)


def test_unavailable_backends_say_why():
    reasons = hanet_fast.ops.available_backends()
    for name, why in reasons.items():
        if why is not None:
            with pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
                hanet_fast.height_gate(torch.randn(1, 1, 2, 2), torch.rand(1, 1, 2), backend=name)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        hanet_fast.height_pool(torch.randn(1, 1, 2, 2), 2, backend="fastest")


def test_auto_picks_the_fused_cpu_backend():
    require_backend("cpu", "cpu")
    assert hanet_fast.ops.resolve_backend("auto", torch.device("cpu")) in ("cpu", hanet_fast.ops.backends.DEFAULT_BACKEND)


def test_backend_env_var_overrides_auto(tmp_path):
    import subprocess
    import sys

    code = (
        "import torch, hanet_fast;"
        "print(hanet_fast.ops.resolve_backend('auto', torch.device('cpu')))"
    )
    env = {**__import__("os").environ, "HANET_FAST_BACKEND": "reference"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["HANET_FAST_BACKEND"] = "nonsense"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "HANET_FAST_BACKEND='nonsense'" in bad.stderr


def test_cpu_backend_refuses_tensors_of_another_device():
    require_backend("cpu", "cpu")
    x = torch.randn(1, 1, 2, 2, device="meta")
    with pytest.raises(ValueError, match="runs on cpu tensors"):
        hanet_fast.height_pool(x, 2, backend="cpu")


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_max_pool_ties_and_signed_zeros_pick_the_first(backend, device, memory_format):
    require_backend(backend, device)
    x = torch.zeros(1, 2, 3, 4, device=device)
    x[0, 0, :, 0] = -0.0
    x[0, 1] = torch.tensor([[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 3.0, 3.0], [-1.0, 3.0, 3.0, 3.0]])
    x = x.contiguous(memory_format=memory_format).requires_grad_()
    for rows in (2, 3):
        z = hanet_fast.height_pool(x, rows, "max", backend=backend)
        z_ref = reference.height_pool(x, rows, "max")
        assert torch.equal(z, z_ref) and torch.equal(z.signbit(), z_ref.signbit())
        grad = torch.arange(1.0, 2 * rows + 1, device=device).view(1, 2, rows)
        assert torch.equal(grads(z, x, grad)[0], grads(z_ref, x, grad)[0])


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_max_pool_argmax_in_wide_rows(backend, device, memory_format):
    """Rows wider than the CPU kernel's search chunks: the first maximum (ties, signed zeros,
    -inf rows) and the last NaN are found past the first chunk, as adaptive_max_pool2d finds them."""
    require_backend(backend, device)
    W = 53
    x = torch.randn(1, 6, 2, W, generator=torch.Generator().manual_seed(3)).clamp(max=4.0)
    x[0, 0, 0, 20] = x[0, 0, 0, 33] = x[0, 0, 1, 47] = 9.0  # tied maxima in different chunks
    x[0, 1] = -torch.rand(2, W) - 1
    x[0, 1, 0, 37] = -0.0
    x[0, 1, 1, 36] = 0.0  # +0 after -0 in one bin: -0 was first
    x[0, 1, 0, 38] = 0.0
    x[0, 2] = float("-inf")  # all -inf: the first position
    x[0, 3, 0, 18] = x[0, 3, 1, 50] = float("nan")  # the later NaN wins
    x[0, 4, :, W - 1] = 8.0  # the maximum in the tail after the last full chunk
    x = x.to(device).contiguous(memory_format=memory_format)
    for rows in (1, 2):
        z, indices = max_pool_op(backend)(x, rows)
        z_ref, ref_indices = torch.nn.functional.adaptive_max_pool2d(x, (rows, 1), return_indices=True)
        torch.testing.assert_close(z, z_ref.squeeze(-1), equal_nan=True, atol=0, rtol=0)
        assert torch.equal(z.signbit(), z_ref.squeeze(-1).signbit())
        assert torch.equal(indices, ref_indices.squeeze(-1))
