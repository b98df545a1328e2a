"""The Triton backend: its kernels run in Triton's interpreter on CPU (CI has no GPU), its
registration, and its GPU-only paths (DESIGN §2).

The parity, gradient, special-value, determinism and bad-input tests of the Triton backend are
those of every fused backend, in tests/test_ops.py (the ``triton`` parametrisation). Triton
decides whether it interprets when the kernels are defined, so ``TRITON_INTERPRET=1`` must be in
the environment before triton (and hanet_fast) is imported: :func:`test_interpreter_suite` runs
``tests/test_ops.py -k triton`` in a subprocess with it, where tests/op_cases.py then puts the
``triton`` backend on CPU tensors and trims the shapes (the interpreter runs every program in
Python). On a machine with a GPU the same tests run on CUDA tensors with the compiled kernels.

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
from op_cases import MEMORY_FORMATS, TRITON_INTERPRETED, grads

# Whether triton imports and registers its ops (the interpreter driver and the ahead-of-time
# compile need no GPU), not whether it runs on this machine's tensors.
TRITON_REASON = hanet_fast.triton.unavailable_reason()
POOL_MODES = ["avg", "max"]
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the driver
@pytest.mark.slow
@pytest.mark.skipif(TRITON_INTERPRETED, reason="this is the interpreter run")
def test_interpreter_suite():
    """Runs the Triton cases of tests/test_ops.py under TRITON_INTERPRET=1 in a fresh process."""
    if TRITON_REASON is not None:
        pytest.skip(f"backend 'triton' unavailable: {TRITON_REASON}")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "tests/test_ops.py", "-k", "triton", "-m", "not gpu", "-q",
               "-p", "no:cacheprovider"]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    elapsed = time.perf_counter() - start
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"interpreter run failed ({elapsed:.0f} s): {' '.join(command)}\n{output[-20000:]}"
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and " failed" not in summary and "skipped" not in summary, output[-5000:]
    print(f"interpreter run: {elapsed:.0f} s\n{summary}")


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
    if TRITON_INTERPRETED:
        assert resolve("triton", torch.device("cpu")) == "triton"
    else:
        with pytest.raises(ValueError, match=r"backend 'triton' runs on cuda tensors"):
            resolve("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"backend 'triton' runs on cuda tensors"):
        resolve("triton", torch.device("meta"))
    if hanet_fast.ops.backends.DEFAULT_BACKEND == "auto" and hanet_fast.ops.available_backends()["cpu"] is None:
        assert resolve("auto", torch.device("cpu")) == "cpu"


# ----------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(TRITON_INTERPRETED, reason="torch.compile of a triton_op is a GPU path")
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS)
def test_torch_compile_fullgraph(memory_format):
    """torch.compile sees through the triton ops (no graph break), forward and backward."""
    if TRITON_REASON is not None or not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA device and the triton backend ({TRITON_REASON or 'no CUDA device'})")

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
    from hanet_fast.triton._common import compile_for_sm90

    return compile_for_sm90(kernel, pointers, constants, num_warps)


@pytest.mark.slow
@pytest.mark.skipif(TRITON_INTERPRETED, reason="the interpreter does not compile")
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

    # (C, H, W, R): a typical map, and sizes of 1 (Triton turns int arguments equal to 1 into constants).
    shapes = [(256, 97, 96, 16), (1, 1, 1, 1)]
    for dtype in ("fp32", "fp64", "bf16"):
        acc = "fp64" if dtype == "fp64" else "fp32"
        fp64 = dtype == "fp64"
        for channels_last in (False, True):
            unit_stride = {"sxc": 1} if channels_last else {"sxw": 1}
            for C, H, W, R in shapes:
                ones = {k: 1 for k, v in dict(C=C, H=H, W=W, R=R).items() if v == 1}
                for is_max, kernel in ((False, hp._rows_avg_kernel), (True, hp._rows_max_kernel)):
                    size = {"fp32": 4, "fp64": 8, "bf16": 2}[dtype]
                    rows_cfg, bins_cfg = hp._forward_config(2, C, H, W, R, channels_last, is_max, size)
                    S = triton.cdiv(W, rows_cfg["SEG_W"])
                    pointers = {"x_ptr": f"*{dtype}", "sums_ptr": f"*{acc}", "best_ptr": f"*{acc}", "col_ptr": "*i32"}
                    split = dict(ROWS=rows_cfg["ROWS"], SEG_W=rows_cfg["SEG_W"], S=S)
                    constants = dict(IS_FP64=fp64, BLOCK_C=rows_cfg["BLOCK_C"], BLOCK_W=rows_cfg["BLOCK_W"],
                                     **{k: 1 for k, v in split.items() if v == 1}, **unit_stride,
                                     **{k: v for k, v in ones.items() if k != "R"})
                    _compile_for_sm90(kernel, pointers, constants, rows_cfg["num_warps"])
                    pointers = {"sums_ptr": f"*{acc}", "col_ptr": "*i32", "out_ptr": f"*{dtype}", "idx_ptr": "*i64"}
                    blocks = {k: v for k, v in bins_cfg.items() if k != "num_warps"}
                    constants = dict(IS_MAX=is_max, IS_FP64=fp64, **blocks, **({"S": 1} if S == 1 else {}),
                                     **{k: 1 for k, v in dict(C=C, H=H, W=W, R=R).items() if v == 1})
                    _compile_for_sm90(hp._bins_kernel, pointers, constants, bins_cfg["num_warps"])
                for is_max in (False, True):
                    configs = hp._backward_autotuner(is_max, channels_last).configs
                    for config in (configs[0], configs[-1]):
                        index_type = "*i64" if is_max else f"*{dtype}"
                        pointers = {"gx_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "idx_ptr": index_type}
                        constants = dict(IS_MAX=is_max, IS_FP64=fp64, **config.kwargs, **ones)
                        _compile_for_sm90(hp._pool_backward_kernel, pointers, constants, config.num_warps)
                configs = (hg._gate_forward_nhwc if channels_last else hg._gate_forward_nchw).configs
                for config in (configs[0], configs[-1]):
                    pointers = {"y_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "attn_ptr": f"*{dtype}"}
                    constants = dict(IS_FP64=fp64, **config.kwargs, **unit_stride, **ones)
                    _compile_for_sm90(hg._gate_forward_kernel, pointers, constants, config.num_warps)
                cfg = hg._rows_config(2, C, H, W, channels_last)
                segments = {"S": 1} if triton.cdiv(W, cfg["SEG_W"]) == 1 else {}
                blocks = {k: v for k, v in cfg.items() if k not in ("num_warps", "SEG_W")}
                blocks.update(segments, **({"SEG_W": 1} if cfg["SEG_W"] == 1 else {}))
                for write_grad_x in (False, True):
                    pointers = {name: f"*{dtype}" for name in ("gx_ptr", "gy_ptr", "x_ptr", "attn_ptr")}
                    pointers["sums_ptr"] = f"*{acc}"
                    constants = dict(WRITE_GRAD_X=write_grad_x, IS_FP64=fp64, **blocks, **unit_stride, **ones)
                    _compile_for_sm90(hg._gate_backward_rows_kernel, pointers, constants, cfg["num_warps"])
                cfg = hg._attn_config(R)
                blocks = {k: v for k, v in cfg.items() if k != "num_warps"}
                ones_attn = {k: 1 for k, v in dict(C=C, H=H, R=R).items() if v == 1}
                pointers = {"gattn_ptr": f"*{dtype}", "sums_ptr": f"*{acc}"}
                constants = dict(IS_FP64=fp64, **blocks, **ones_attn, **segments)
                _compile_for_sm90(hg._gate_backward_attn_kernel, pointers, constants, cfg["num_warps"])
