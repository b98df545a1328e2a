"""Every fused backend of height_pool and height_gate against the reference ops (DESIGN §1)."""

from __future__ import annotations

import functools
import re

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
def test_forward_mode_ad_matches_reference(backend, device):
    """Dual tensors (torch.autograd.forward_ad) get the reference's tangent from every fused op,
    never None; torch.func.jvp, jacfwd and forward-over-reverse (Hessian-vector) agree too."""
    import torch.autograd.forward_ad as fwAD

    require_backend(backend, device)
    shape = (2, 3, 7, 5, 4)
    x, attn = make_x(shape, torch.float64, device), make_attn(shape, torch.float64, device)
    x_t, attn_t = make_x(shape, torch.float64, device, seed=2), make_attn(shape, torch.float64, device, seed=3)
    calls = {
        "pool_avg": lambda b, x, a: hanet_fast.height_pool(x, 4, "avg", backend=b),
        "pool_max": lambda b, x, a: hanet_fast.height_pool(x, 4, "max", backend=b),
        "gate": lambda b, x, a: hanet_fast.height_gate(x, a, backend=b),
    }
    for name, call in calls.items():
        for tangents in ((x_t, attn_t), (x_t, None), (None, attn_t)):
            if name != "gate" and tangents[0] is None:
                continue
            results = {}
            for b in (backend, "reference"):
                with fwAD.dual_level():
                    duals = [v if t is None else fwAD.make_dual(v, t) for v, t in zip((x, attn), tangents)]
                    results[b] = fwAD.unpack_dual(call(b, *duals)).tangent
            assert results[backend] is not None, (name, tangents)
            torch.testing.assert_close(results[backend], results["reference"], atol=1e-12, rtol=1e-12)
        # forward over reverse: the jvp of the backward ops
        def loss(b):
            return lambda x, a: calls[name](b, x, a).sin().sum()
        hvp = torch.func.jvp(torch.func.grad(loss(backend), argnums=(0, 1)), (x, attn), (x_t, attn_t))[1]
        hvp_ref = torch.func.jvp(torch.func.grad(loss("reference"), argnums=(0, 1)), (x, attn), (x_t, attn_t))[1]
        for got, want in zip(hvp, hvp_ref):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    jac = torch.func.jacfwd(lambda a: hanet_fast.height_gate(x, a, backend=backend))(attn)
    torch.testing.assert_close(jac, torch.func.jacfwd(lambda a: reference.height_gate(x, a))(attn), atol=1e-12, rtol=1e-12)


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


def test_unknown_backend_name_is_refused():
    # Unavailable backends say why: test_available_backends_report_what_runs_per_device.
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
    assert "ValueError" in bad.stderr


@pytest.mark.parametrize("value", ["bogus", "CPU", ""])
def test_bad_backend_env_var_fails_at_first_use_not_at_import(value, tmp_path):
    """Importing works (so every --help does); the first op, module or command asking for 'auto'
    raises a ValueError naming the variable; a backend named explicitly still runs."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HANET_FAST_BACKEND": value, "OMP_NUM_THREADS": "1"}
    code = (
        "import torch, hanet_fast, hanet_fast.infer, hanet_fast.evaluate, hanet_fast.export\n"
        "x = torch.randn(1, 2, 4, 3)\n"
        "print(hanet_fast.height_pool(x, 2, backend='reference').shape[2])\n"
        "for call in (lambda: hanet_fast.height_pool(x, 2), lambda: hanet_fast.height_gate(x, torch.rand(1, 2, 2)),\n"
        "             lambda: hanet_fast.nn.HANet(2, 2)):\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as e:\n"
        "        print('ValueError', e)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0] == "2" and len(lines) == 4
    assert all(line.startswith("ValueError") and f"HANET_FAST_BACKEND={value!r}" in line for line in lines[1:])
    helped = subprocess.run([sys.executable, "-m", "hanet_fast.infer", "--help"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert helped.returncode == 0 and "usage" in helped.stdout, helped.stderr[-2000:]


def test_bad_backend_env_var_is_one_line_from_a_command(tmp_path):
    import os
    import subprocess
    import sys

    from tiny_model import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "checkpoint.pt")
    env = {**os.environ, "HANET_FAST_BACKEND": "CPU", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "hanet_fast.export", "--checkpoint", checkpoint, "--format", "pt2",
                          "--size", "32x32", "--out", str(tmp_path / "m.pt2")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert "HANET_FAST_BACKEND='CPU'" in run.stderr and not (tmp_path / "m.pt2").exists()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_float8_and_sparse_inputs_raise_type_error_naming_the_argument(backend):
    require_backend(backend, "cpu")
    x, attn = torch.randn(1, 2, 4, 3), torch.rand(1, 2, 2)
    for name, bad_x, bad_attn in (("x", x.to(torch.float8_e4m3fn), attn), ("x", x.to_sparse(), attn),
                                  ("attn", x, attn.to(torch.float8_e5m2)), ("attn", x, attn.to_sparse())):
        with pytest.raises(TypeError, match=f"^hanet_fast: {name} must "):
            hanet_fast.height_gate(bad_x, bad_attn, backend=backend)
        if name == "x":
            with pytest.raises(TypeError, match="^hanet_fast: x must "):
                hanet_fast.height_pool(bad_x, 2, backend=backend)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_direct_cpp_ops_refuse_float8_and_sparse_with_the_public_apis_type_error(device):
    """torch.ops.hanet_fast.* called directly: float8 and sparse (COO and CSR) inputs are a
    TypeError naming the argument, as in the public API, not the dispatcher's NotImplementedError."""
    require_backend(device, device)
    ops = torch.ops.hanet_fast
    x, attn = torch.randn(1, 2, 4, 3, device=device), torch.rand(1, 2, 2, device=device)
    grad_out = torch.randn(1, 2, 2, device=device)
    calls = [
        ("x", lambda: ops.height_pool_avg(x.to(torch.float8_e4m3fn), 2)),
        ("x", lambda: ops.height_pool_max(x.to_sparse(), 2)),
        ("x", lambda: ops.height_gate(x.to(torch.float8_e5m2), attn.to(torch.float8_e5m2))),
        ("x", lambda: ops.height_gate(x.to_sparse(), attn)),
        ("attn", lambda: ops.height_gate(x, attn.to_sparse())),
        ("attn", lambda: ops.height_gate(x, attn.to_sparse_csr())),
        ("grad_y", lambda: ops.height_gate_backward(x.to_sparse(), x, attn)),
        ("grad_out", lambda: ops.height_pool_avg_backward(grad_out.to(torch.float8_e4m3fn), 4, 3, False)),
        ("grad_out", lambda: ops.height_pool_avg_backward(grad_out.to_sparse(), 4, 3, False)),
    ]
    for name, call in calls:
        with pytest.raises(TypeError, match=f"^hanet_fast: {name} must (be a dense|have a dtype among)"):
            call()


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


# ----------------------------------------------------------------------------- argmax checks (issue 13, item 4)
def _op_of(backend: str, name: str):
    return getattr(torch.ops.hanet_fast, name + ("_triton" if backend == "triton" else ""))


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_max_backward_refuses_indices_outside_their_bin(backend, device, memory_format):
    """height_pool_max_backward writes through the indices it is given: far out of range (it
    segfaulted), negative (heap corruption), one plane further (it wrote into the next plane)
    and inside the plane but outside the bin's rows are all refused, naming indices."""
    require_backend(backend, device)
    B, C, H, W, R = 2, 3, 8, 5, 4
    x = torch.randn(B, C, H, W, dtype=torch.float64, device=device).contiguous(memory_format=memory_format)
    _, indices = max_pool_op(backend)(x, R)
    grad = torch.randn(B, C, R, dtype=torch.float64, device=device)
    cl = memory_format == torch.channels_last
    backward = _op_of(backend, "height_pool_max_backward")
    expected = grads(reference.height_pool(x.requires_grad_(), R, "max"), x, grad)[0]
    torch.testing.assert_close(backward(grad, indices, H, W, cl), expected, atol=0, rtol=0)
    # bin 3 of [1, 2] covers rows [6, 8), i.e. flat indices [30, 40); bin 0 covers [0, 10).
    for at, bad in (((1, 2, 3), 10**6), ((1, 2, 3), -1), ((1, 2, 3), H * W), ((1, 2, 3), 29), ((0, 0, 0), 10)):
        wrong = indices.clone()
        wrong[at] = bad
        with pytest.raises(ValueError, match=rf"indices must hold.*got {bad} at \[{at[0]}, {at[1]}, {at[2]}\]"):
            backward(grad, wrong, H, W, cl)
    # The bins' edges are accepted: the first and last index of every bin.
    lo = torch.div(torch.arange(R) * H, R, rounding_mode="floor") * W
    hi = (torch.div((torch.arange(R) + 1) * H - 1, R, rounding_mode="floor") + 1) * W
    for edge in (lo, hi - 1):
        backward(grad, edge.to(device).expand(B, C, R).contiguous(), H, W, cl)


# ----------------------------------------------------------------------------- double backward (item 5)
# (B, C, H, W, rows): H % rows != 0; small, since the Triton interpreter runs these too.
SECOND_ORDER_SHAPE = (1, 2, 6, 3, 4)

@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_gradgradcheck(backend, device, memory_format):
    """Second derivatives through the backward ops (they had none: zeros and a warning)."""
    require_backend(backend, device)
    check = functools.partial(torch.autograd.gradgradcheck, fast_mode=backend == "triton" and TRITON_INTERPRETED)
    shape = SECOND_ORDER_SHAPE
    x = make_x(shape, torch.float64, device, memory_format).requires_grad_()
    attn = make_attn(shape, torch.float64, device).requires_grad_()
    assert check(lambda a, b: hanet_fast.height_gate(a, b, backend=backend), (x, attn))
    assert check(lambda a: hanet_fast.height_gate(a, attn.detach(), backend=backend), (x,))
    assert check(lambda b: hanet_fast.height_gate(x.detach(), b, backend=backend), (attn,))
    for mode in POOL_MODES:
        assert check(lambda a: hanet_fast.height_pool(a, 4, mode, backend=backend), (x,))


def _second_order_loss(x, attn, backend):
    """A loss whose Hessian mixes every op and every derivative of the backward ops."""
    pooled = hanet_fast.height_pool(x, 4, "avg", backend=backend)
    gated = hanet_fast.height_gate(x, torch.sigmoid(pooled) * attn, backend=backend)
    return (gated**2).sum() + (hanet_fast.height_pool(x, 4, "max", backend=backend) ** 3).sum()


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
def test_double_backward_matches_reference(backend, device):
    """The issue's cases: grad of a gradient (it gave zeros) and Hessian-vector products."""
    require_backend(backend, device)
    shape = SECOND_ORDER_SHAPE
    x = make_x(shape, torch.float64, device).requires_grad_()
    attn = make_attn(shape, torch.float64, device).requires_grad_()
    results = {}
    for be in (backend, "reference"):
        (g,) = torch.autograd.grad((hanet_fast.height_pool(x, 4, backend=be) ** 2).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), x)
        (ga,) = torch.autograd.grad((hanet_fast.height_gate(x, attn, backend=be) ** 2).sum(), attn, create_graph=True)
        (gaa,) = torch.autograd.grad(ga.sum(), attn)
        hvp = torch.autograd.functional.hvp(lambda a, b: _second_order_loss(a, b, be), (x, attn),
                                            (torch.ones_like(x), torch.ones_like(attn)))[1]
        results[be] = (gg, gaa, *hvp)
    assert results["reference"][0].abs().sum() > 0 and results["reference"][2].abs().sum() > 0
    for got, want in zip(results[backend], results["reference"]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
def test_torch_func_matches_reference(backend, device):
    """torch.func.grad, jacrev (also nested: a Hessian) and vmap run the fused ops (they raised
    "autograd.Function ... must override the setup_context staticmethod")."""
    require_backend(backend, device)
    shape = SECOND_ORDER_SHAPE
    x = make_x(shape, torch.float64, device)
    attn = make_attn(shape, torch.float64, device)

    def both(transform):
        return [transform(backend), transform("reference")]

    for got, want in (
        both(lambda be: torch.func.grad(_second_order_loss, argnums=(0, 1))(x, attn, be)),
        both(lambda be: torch.func.jacrev(_second_order_loss, argnums=(0, 1))(x, attn, be)),
        both(lambda be: (torch.func.jacrev(torch.func.jacrev(_second_order_loss, argnums=1), argnums=1)(x, attn, be),)),
    ):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    xs = make_x((3, 2, 6, 3, 4), torch.float64, device).unsqueeze(1)  # 3 samples shaped like x
    for mode in POOL_MODES:  # vmapped over a dimension that is not the first
        got = torch.func.vmap(lambda t: hanet_fast.height_pool(t, 4, mode, backend=backend), in_dims=2)(xs)
        want = torch.stack([reference.height_pool(xs[:, :, i], 4, mode) for i in range(2)])
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    got = torch.func.vmap(lambda t, a: hanet_fast.height_gate(t, a, backend=backend), in_dims=(0, None))(xs, attn)
    torch.testing.assert_close(got, torch.stack([reference.height_gate(t, attn) for t in xs]), atol=1e-12, rtol=1e-12)
    # Per-sample gradients: vmap over grad.
    per_sample = torch.func.vmap(torch.func.grad(lambda t, be: _second_order_loss(t, attn, be)), in_dims=(0, None))
    torch.testing.assert_close(per_sample(xs, backend), per_sample(xs, "reference"), atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- edge cases (item "crashes")
@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference"), *FUSED_BACKENDS])
def test_zero_size_inputs_give_empty_results(backend, device):
    """Every backend returns empty results (and zero gradients) for empty batches, channels,
    heights or widths where the ops allow them; the reference raised on empty channels."""
    require_backend(backend, device)
    for B, C in ((0, 3), (2, 0), (0, 0)):
        x = torch.randn(B, C, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
        for mode in POOL_MODES:
            z = hanet_fast.height_pool(x, 3, mode, backend=backend)
            assert z.shape == (B, C, 3) and z.dtype == x.dtype
            assert grads(z, x, torch.ones_like(z))[0].shape == x.shape
    for B, C, H, W in ((0, 3, 5, 4), (2, 0, 5, 4), (2, 3, 0, 4), (2, 3, 5, 0)):
        x = torch.randn(B, C, H, W, dtype=torch.float64, device=device, requires_grad=True)
        attn = torch.rand(B, C, 2, dtype=torch.float64, device=device, requires_grad=True)
        y = hanet_fast.height_gate(x, attn, backend=backend)
        assert y.shape == x.shape
        grad_x, grad_attn = grads(y, (x, attn), torch.ones_like(y))
        assert grad_x.shape == x.shape and torch.equal(grad_attn, torch.zeros_like(attn))


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference"), *FUSED_BACKENDS])
def test_rows_beyond_int64_name_rows(backend, device):
    require_backend(backend, device)
    x = torch.randn(1, 1, 2, 2, device=device)
    for rows in (2**63, 2**64 + 3):
        with pytest.raises(ValueError, match=r"rows must be at most 2\*\*63 - 1"):
            hanet_fast.height_pool(x, rows, backend=backend)


# ----------------------------------------------------------------------------- available_backends (issue 15)
def test_available_backends_report_what_runs_per_device():
    """Without a GPU, cuda and triton are not reported as available (they were), each with a
    reason; per device, a backend is available exactly when an op on that device's tensors runs."""
    report = hanet_fast.ops.available_backends()
    assert set(report) == set(hanet_fast.ops.BACKENDS) and report["reference"] is None
    if not torch.cuda.is_available():
        assert report["cuda"] is not None
        assert report["triton"] is not None or TRITON_INTERPRETED
        assert hanet_fast.ops.available_backends("cuda")["triton"] is not None
    for device in ("cpu", "meta"):
        per_device = hanet_fast.ops.available_backends(device)
        assert per_device["reference"] is None and per_device["cuda"] is not None
        x = torch.randn(1, 1, 4, 3, device=device)
        for name, why in per_device.items():
            if why is None:
                if device == "cpu":
                    hanet_fast.height_pool(x, 2, backend=name)
            else:
                with pytest.raises((RuntimeError, ValueError), match=re.escape(why)):
                    hanet_fast.height_pool(x, 2, backend=name)
    assert (hanet_fast.ops.available_backends("cpu")["triton"] is None) == TRITON_INTERPRETED
