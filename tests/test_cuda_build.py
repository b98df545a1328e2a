"""The CUDA backend: that it was built where it can be, and what only a GPU can check.

Without a GPU the GPU tests skip; `test_every_op_has_a_cuda_kernel` still runs and fails
when nvcc and a CUDA build of torch are present but the installed library has no CUDA
kernels (so CI proves that csrc/cuda/*.cu compiled), unless HANET_FAST_CUDA=0.
Parity, gradcheck, opcheck, bad input, NaN and determinism of the `cuda` backend are the
`[cuda]` cases of tests/test_ops.py; scripts/sanitize_cuda.sh runs them under compute-sanitizer.
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest
import torch

import hanet_fast
from hanet_fast import _extension
from hanet_fast.ops import reference
from op_cases import require_backend

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _schema_ops() -> list[str]:
    """Every operator defined in csrc/hanet_ops.cpp."""
    source = (ROOT / "csrc" / "hanet_ops.cpp").read_text()
    return re.findall(r'm\.def\(\s*"(\w+)\(', source)


def _why_cuda_is_not_buildable() -> str | None:
    """None when setup.py would build the CUDA kernels here (its rules), else why not."""
    if os.environ.get("HANET_FAST_CUDA") == "0":
        return "HANET_FAST_CUDA=0"
    if torch.version.cuda is None:
        return "torch was built without CUDA"
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not cuda_home and os.path.isdir("/usr/local/cuda"):
        cuda_home = "/usr/local/cuda"
    if not cuda_home or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return "nvcc not found"
    if not list((ROOT / "csrc" / "cuda").glob("*.cu")):
        return "no csrc/cuda/*.cu sources"
    return None


# ----------------------------------------------------------------------------- build (no GPU needed)
def test_schema_ops_are_known():
    assert set(_schema_ops()) == {
        "height_pool_avg",
        "height_pool_avg_backward",
        "height_pool_max",
        "height_pool_max_backward",
        "height_gate",
        "height_gate_backward",
        "height_gate_attn_backward",
    }


def test_every_op_has_a_cuda_kernel():
    if not _extension.is_loaded():
        pytest.skip(_extension.LOAD_ERROR)
    ops = _schema_ops()
    if _extension.built_with_cuda():
        missing = [op for op in ops if not _extension.has_kernel(op, "CUDA")]
        assert not missing, f"hanet_fast._C has no CUDA kernel for {missing}"
        assert hanet_fast.ops.available_backends("cuda")["cuda"] in (None, hanet_fast.ops.backends.NO_CUDA_DEVICE)
        return
    why_not = _why_cuda_is_not_buildable()
    if why_not is not None:
        pytest.skip(f"the CUDA kernels cannot be built here ({why_not})")
    pytest.fail(
        "nvcc and a CUDA build of torch are present, but the installed hanet_fast._C has no CUDA kernels: "
        "rebuild it (`pip install --no-build-isolation -e .`), or set HANET_FAST_CUDA=0 to build and test without CUDA"
    )


def test_every_op_has_a_cpu_kernel():
    if not _extension.is_loaded():
        pytest.skip(_extension.LOAD_ERROR)
    assert all(_extension.has_kernel(op, "CPU") for op in _schema_ops())


def test_every_op_refuses_sparse_inputs_at_dispatch():
    """csrc/dense_only.cpp names the ops again: each one has its TypeError kernel for every
    sparse layout (the error itself: test_ops.py::test_direct_cpp_ops_refuse_float8_and_sparse_...)."""
    if not _extension.is_loaded():
        pytest.skip(_extension.LOAD_ERROR)
    for key in ("SparseCPU", "SparseCUDA", "SparseCsrCPU", "SparseCsrCUDA"):
        missing = [op for op in _schema_ops() if not _extension.has_kernel(op, key)]
        assert not missing, f"csrc/dense_only.cpp registers no {key} kernel for {missing}"


# ----------------------------------------------------------------------------- GPU
def _require_cuda():
    require_backend("cuda", "cuda")


def _close(actual, expected, atol=0.0, rtol=0.0):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True)


# Shapes beyond tests/test_ops.py's: 16-byte vector paths, rows split in segments (long W, few
# rows), many rows, and the memory formats; the CPU backend is the oracle.
CROSS_SHAPES = [
    pytest.param((2, 64, 48, 96, 16), id="L1_like"),
    pytest.param((1, 3, 5, 6000, 4), id="long_rows"),
    pytest.param((1, 2, 700, 8, 16), id="tall"),
    pytest.param((3, 40, 17, 33, 5), id="odd"),
    pytest.param((2, 256, 9, 12, 16), id="many_channels"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", CROSS_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_cuda_matches_cpu_backend(shape, dtype, memory_format, offset):
    _require_cuda()
    B, C, H, W, R = shape
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(B * C * H * W + offset, generator=gen, dtype=torch.float64).to(dtype)
    if memory_format == torch.channels_last:  # a channels_last view at a storage offset
        x_cpu = base[offset:].view(B, H, W, C).permute(0, 3, 1, 2)
    else:
        x_cpu = base[offset:].view(B, C, H, W)
    attn_cpu = torch.rand(B, C, R, generator=gen, dtype=torch.float64).to(dtype)
    grad_y_cpu = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    grad_z_cpu = torch.randn(B, C, R, generator=gen, dtype=torch.float64).to(dtype)
    x_gpu = torch.empty_like(base, device="cuda").copy_(base)[offset:].as_strided(x_cpu.shape, x_cpu.stride())
    attn, grad_y, grad_z = (t.cuda() for t in (attn_cpu, grad_y_cpu, grad_z_cpu))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    ops = torch.ops.hanet_fast
    cl = memory_format == torch.channels_last

    _close(ops.height_pool_avg(x_gpu, R).cpu(), ops.height_pool_avg(x_cpu, R), tol, tol)
    values, indices = ops.height_pool_max(x_gpu, R)
    values_cpu, indices_cpu = ops.height_pool_max(x_cpu, R)
    assert torch.equal(indices.cpu(), indices_cpu)
    assert torch.equal(values.cpu(), values_cpu)
    _close(ops.height_pool_avg_backward(grad_z, H, W, cl).cpu(), ops.height_pool_avg_backward(grad_z_cpu, H, W, cl), tol, tol)
    grad_max = ops.height_pool_max_backward(grad_z, indices, H, W, cl)
    assert grad_max.is_contiguous(memory_format=memory_format)
    assert torch.equal(grad_max.cpu(), ops.height_pool_max_backward(grad_z_cpu, indices_cpu, H, W, cl))

    y = ops.height_gate(x_gpu, attn)
    assert y.is_contiguous(memory_format=memory_format)
    _close(y.cpu(), ops.height_gate(x_cpu, attn_cpu), tol, tol)
    grad_x, grad_attn = ops.height_gate_backward(grad_y, x_gpu, attn)
    grad_x_cpu, grad_attn_cpu = ops.height_gate_backward(grad_y_cpu, x_cpu, attn_cpu)
    assert grad_x.is_contiguous(memory_format=memory_format)
    _close(grad_x.cpu(), grad_x_cpu, tol, tol)
    scale = (W * max(1, H // R)) ** 0.5
    _close(grad_attn.cpu(), grad_attn_cpu, tol * scale, tol)
    assert torch.equal(ops.height_gate_attn_backward(grad_y, x_gpu, R), grad_attn)


def _capture(step):
    """Warms ``step`` up on a side stream (as CUDA graph capture requires), then captures one
    call; returns the graph and the outputs its replays overwrite."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    return graph, captured


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_cuda_graph_capture_of_ops_forward_backward(memory_format, backend):
    """Both GPU backends capture. Triton autotunes its element-wise kernels on their first call
    at a shape (timed runs and a synchronisation, which capture forbids): the warm-up calls
    that capture needs anyway (_capture) run it, so the captured call only launches."""
    require_backend(backend, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x_low = torch.randn(2, 24, 20, 36, device="cuda", generator=gen).contiguous(memory_format=memory_format)
    x_high = torch.randn(2, 16, 31, 18, device="cuda", generator=gen).contiguous(memory_format=memory_format)
    weight = torch.randn(16, 24, device="cuda", generator=gen)
    seed = torch.randn(2, 16, 31, 18, device="cuda", generator=gen)
    x_low.requires_grad_()
    x_high.requires_grad_()
    weight.requires_grad_()

    def step():
        z = hanet_fast.height_pool(x_low, 6, "avg", backend=backend) + hanet_fast.height_pool(x_low, 6, "max", backend=backend)
        attn = torch.sigmoid(torch.einsum("oc,bcr->bor", weight, z))
        y = hanet_fast.height_gate(x_high, attn, backend=backend)
        return (y, *torch.autograd.grad((y * seed).sum(), (x_low, x_high, weight)))

    graph, captured = _capture(step)

    with torch.no_grad():
        x_low.copy_(torch.randn(x_low.shape, device="cuda", generator=gen))
        x_high.copy_(torch.randn(x_high.shape, device="cuda", generator=gen))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, step()):
        _close(got, want, 1e-5, 1e-5)


@pytest.mark.gpu
def test_cuda_graph_capture_of_hanet_forward_backward():
    _require_cuda()
    from hanet_fast.nn import HANet

    torch.manual_seed(0)
    module = HANet(32, 16, rows=8, dropout=0.0, pos_noise=0.0, backend="cuda").cuda().train()
    x_low = torch.randn(2, 32, 24, 40, device="cuda", requires_grad=True)
    x_high = torch.randn(2, 16, 48, 40, device="cuda", requires_grad=True)
    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        out = module(x_low, x_high)
        return (out, *torch.autograd.grad(out.square().mean(), (x_low, x_high, *params)))

    graph, captured = _capture(step)

    with torch.no_grad():
        x_low.copy_(torch.randn_like(x_low))
        x_high.copy_(torch.randn_like(x_high))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, step()):
        _close(got, want, 1e-4, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_on_cuda(compile_backend):
    _require_cuda()
    if compile_backend == "inductor":
        pytest.importorskip("triton")
    torch._dynamo.reset()

    def f(x_low, x_high, weight):
        z = hanet_fast.height_pool(x_low, 5, "avg") * hanet_fast.height_pool(x_low, 5, "max")
        attn = torch.sigmoid(torch.einsum("oc,bcr->bor", weight, z))
        return hanet_fast.height_gate(x_high, attn)

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        inputs = [
            torch.randn(2, 12, 19, 23, device="cuda").contiguous(memory_format=memory_format).requires_grad_(),
            torch.randn(2, 8, 26, 14, device="cuda").contiguous(memory_format=memory_format).requires_grad_(),
            torch.randn(8, 12, device="cuda", requires_grad=True),
        ]
        out = compiled(*inputs)
        want = f(*inputs)
        _close(out, want, 1e-5, 1e-5)
        grads = torch.autograd.grad(out.sum(), inputs)
        want_grads = torch.autograd.grad(want.sum(), inputs)
        for got, expected in zip(grads, want_grads):
            _close(got, expected, 1e-5, 1e-5)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_64bit_indexing(memory_format):
    """A bfloat16 tensor of more than 2^31 elements (about 4.3 GB per copy), every column equal,
    so the expected results follow from one column."""
    _require_cuda()
    B, C, H, W, R = 1, 2, 2**15, 2**15 + 64, 16
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs about 24 GB of GPU memory")
    torch.cuda.empty_cache()
    rows = (torch.arange(B * C * H, device="cuda") % 7 - 3).to(torch.bfloat16).view(B, C, H, 1)
    x = rows.expand(B, C, H, W).contiguous(memory_format=memory_format)
    assert x.numel() >= 2**31
    column = rows.double()
    ops = torch.ops.hanet_fast

    _close(ops.height_pool_avg(x, R).double(), reference.height_pool(column, R, "avg"), 1e-2, 1e-2)
    values, indices = ops.height_pool_max(x, R)
    want_values, want_indices = torch.nn.functional.adaptive_max_pool2d(column, (R, 1), return_indices=True)
    _close(values.double(), want_values.squeeze(-1))
    assert torch.equal(indices, want_indices.squeeze(-1) * W)  # the first column of the argmax row
    del values, indices

    attn = torch.rand(B, C, R, device="cuda").to(torch.bfloat16)
    y = ops.height_gate(x, attn)
    want = reference.height_gate(column, attn.double())
    for w in (0, W // 2, W - 1):
        _close(y[..., w : w + 1].double(), want, 1e-2, 1e-2)
    del y
    grad_attn = ops.height_gate_attn_backward(x, x, R)  # grad_y = x: sum_w x * x = W * row^2
    _close(grad_attn.double(), _attn_grad_of_columns(column, R, W), 2e-2, 2e-2)


def _attn_grad_of_columns(column: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """grad_attn of height_gate(x, attn) with grad_y = x, x constant along the width."""
    attn = torch.zeros(column.shape[0], column.shape[1], rows, dtype=torch.float64, device=column.device, requires_grad=True)
    y = reference.height_gate(column, attn)
    (grad,) = torch.autograd.grad(y, attn, column * width)
    return grad
