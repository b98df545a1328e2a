"""Deployment export (``python -m hanet_fast.export``): the matrix forms of the fused ops, ONNX
files checked against PyTorch in onnxruntime, and portable ``torch.export`` programs loaded
where hanet_fast cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hanet_fast.export import dynamic_size_range, export_onnx, export_program, export_pt2, main
from hanet_fast.models import HANetConfig, deeplabv3plus
from hanet_fast.ops import decompose, reference
from tiny_model import save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# The ONNX exporter needs onnx + onnxscript; checking the file needs onnxruntime.
onnx = pytest.importorskip("onnx", reason="ONNX export needs the [export] extra")
pytest.importorskip("onnxscript", reason="ONNX export needs the [export] extra")
ort = pytest.importorskip("onnxruntime", reason="checking ONNX files needs the [export] extra")

REL_TOL = 1e-4  # logits, relative to their largest magnitude
ARGMAX_AGREEMENT = 0.9999
SIZES = ((64, 96), (72, 56))  # one not a multiple of the output stride


@pytest.mark.parametrize("height,rows,width", [(3, 16, 5), (17, 16, 4), (7, 4, 3), (64, 16, 2), (1, 1, 1), (5, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_forms_equal_the_reference(height, rows, width, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, height, width, dtype=dtype)
    attn = torch.rand(2, 3, rows, dtype=dtype)
    torch.testing.assert_close(decompose.height_pool_avg(x, rows), reference.height_pool(x, rows, "avg"))
    values, indices = decompose.height_pool_max(x, rows)
    ref_values, ref_indices = torch.nn.functional.adaptive_max_pool2d(x, (rows, 1), return_indices=True)
    assert torch.equal(values, ref_values.squeeze(-1)) and torch.equal(indices, ref_indices.squeeze(-1))
    torch.testing.assert_close(decompose.height_gate(x, attn), reference.height_gate(x, attn))


def _model(backbone: str) -> torch.nn.Module:
    # All five HANet layers, so both poolings (L5 pools with max) are exported; random weights.
    torch.manual_seed(0)
    model = deeplabv3plus(backbone, output_stride=16, num_classes=19, hanet_layers=(1, 1, 1, 1, 1),
                          hanet=HANetConfig(rows=8), aux=False)
    # Non-trivial BN statistics, so that eval mode differs from training mode.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    return model.eval()


def _torch_logits(model, images: torch.Tensor) -> torch.Tensor:
    h = images.shape[2]
    with torch.no_grad():
        return model(images, (torch.arange(h) / h).expand(images.shape[0], h)).logits


def _check_onnx(path: str, model, images: torch.Tensor) -> None:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    got = torch.from_numpy(got)
    want = _torch_logits(model, images)
    assert got.shape == want.shape
    rel = float((got - want).abs().max() / want.abs().max())
    agree = float((got.argmax(1) == want.argmax(1)).double().mean())
    print(f"{os.path.basename(path)} {tuple(images.shape)}: max relative error {rel:.2e}, argmax agreement {agree:.6f}")
    assert rel <= REL_TOL
    assert agree >= ARGMAX_AGREEMENT


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_onnx_fixed_size_matches_pytorch(backbone, tmp_path):
    model = _model(backbone)
    for size in SIZES:
        path = export_onnx(model, tmp_path / f"{backbone}-{size[0]}x{size[1]}.onnx", size)
        onnx.checker.check_model(path)
        ops = {node.op_type for node in onnx.load(path).graph.node}
        assert not any(node.domain not in ("", "ai.onnx") for node in onnx.load(path).graph.node), ops
        _check_onnx(path, model, torch.randn(1, 3, *size))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_onnx_dynamic_matches_pytorch_at_other_sizes(backbone, tmp_path):
    model = _model(backbone)
    path = export_onnx(model, tmp_path / f"{backbone}-dynamic.onnx", SIZES[0], dynamic=True)
    onnx.checker.check_model(path)
    for batch, size in ((1, SIZES[0]), (2, SIZES[1])):
        _check_onnx(path, model, torch.randn(batch, 3, *size))


def _rows16_model() -> torch.nn.Module:
    """16 attention rows (the default): heights such as 216 or 723 are not multiples of them."""
    torch.manual_seed(0)
    model = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=19, hanet_layers=(1, 1, 1, 1, 1), aux=False)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    return model.eval()


def _assert_matches_default_path(got: torch.Tensor, model, images: torch.Tensor, rel_tol: float) -> None:
    """``got`` equals ``model(images)``, the default (no row_pos) path, to ``rel_tol`` of its largest logit."""
    with torch.no_grad():
        want = model(images).logits
    assert got.shape == want.shape
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel <= rel_tol, (tuple(images.shape), rel)


@pytest.mark.slow
def test_exported_graphs_equal_the_default_path_below_and_above_the_traced_size(tmp_path):
    """--dynamic graphs serve the range they state (H, W >= 17 for MobileNetV2 OS 16), below and
    above the traced 64x96, at heights that are not multiples of the 16 rows, and equal model(x);
    pt2 refuses a size below the range; a fixed-size export equals model(x) too."""
    model = _rows16_model()
    program = export_program(model, (64, 96), dynamic=True)
    assert dynamic_size_range(program) == {"height": (17, None), "width": (17, None)}
    onnx_path = export_onnx(model, tmp_path / "dynamic.onnx", (64, 96), dynamic=True)
    props = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert props["hanet_fast.min_height"] == "17" and props["hanet_fast.min_width"] == "17"
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for batch, size in ((1, (17, 17)), (2, (216, 40)), (1, (250, 33)), (1, (723, 24))):
        images = torch.randn(batch, 3, *size)
        (got,) = session.run(None, {"images": images.numpy()})
        _assert_matches_default_path(torch.from_numpy(got), model, images, REL_TOL)
        _assert_matches_default_path(program.module()(images), model, images, 1e-5)
    with pytest.raises(Exception, match="images.size"):  # torch.export's guard names the input dimension
        program.module()(torch.randn(1, 3, 16, 40))
    fixed = export_onnx(model, tmp_path / "fixed.onnx", (216, 40))
    images = torch.randn(1, 3, 216, 40)
    (got,) = ort.InferenceSession(fixed, providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})
    _assert_matches_default_path(torch.from_numpy(got), model, images, REL_TOL)


def test_dynamic_export_refuses_a_size_too_small_to_trace_and_sizes_are_bounded():
    model = _rows16_model()
    # traced at 16x16 the graph would serve 9..16 rows only (one-row feature maps at stride 16)
    with pytest.raises(ValueError, match=r"--size 16x16 is too small .* H in \[9, 16\].* --size 17x17"):
        export_program(model, (16, 16), dynamic=True)
    with pytest.raises(ValueError, match="at most 8192 per side"):
        export_program(model, (99999, 99999))


# Loads pt2 files where ``import hanet_fast`` fails: runs the first and compares with saved
# logits; the second (holding hanet_fast:: ops) must fail to load (torch's warnings name the op).
_LOAD_WITHOUT_HANET_FAST = textwrap.dedent("""
    import sys
    sys.modules["hanet_fast"] = None  # any import of hanet_fast now raises ImportError
    import torch
    program = torch.export.load(sys.argv[1])
    images, want = torch.load(sys.argv[2])
    got = program.module()(images)
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= 1e-5, err
    print("ok", err)
    try:
        torch.export.load(sys.argv[3])
    except Exception as error:
        print("fused refused:", type(error).__name__)  # torch warns which operator it misses
    else:
        print("fused loaded")
""")


@pytest.mark.slow
def test_pt2_portable_loads_without_hanet_fast_and_fused_needs_it(tmp_path):
    model = _model("mobilenet_v2")
    images = torch.randn(2, 3, 48, 80)
    want = _torch_logits(model, images)
    torch.save((images, want), tmp_path / "io.pt")
    portable = export_pt2(model, tmp_path / "portable.pt2", (48, 80), dynamic=True)
    fused = export_pt2(model, tmp_path / "fused.pt2", (48, 80), batch=2, decompose=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = tmp_path / "load.py"
    script.write_text(_LOAD_WITHOUT_HANET_FAST)
    run = subprocess.run([sys.executable, str(script), portable, str(tmp_path / "io.pt"), fused], capture_output=True,
                         text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("ok")
    # The fused program holds hanet_fast:: ops: without hanet_fast it does not load ...
    assert lines[1].startswith("fused refused") and "hanet_fast" in run.stderr, run.stdout + run.stderr[-2000:]
    # ... and with hanet_fast imported (here) it runs the fused kernels.
    program = torch.export.load(fused)
    assert any("hanet_fast" in str(n.target) for n in program.graph.nodes if n.op == "call_function")
    torch.testing.assert_close(program.module()(images), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_cli_exports_a_run_and_refuses_to_overwrite(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "checkpoint.pt")
    main(["--checkpoint", str(tmp_path), "--format", "onnx", "--size", "64x64"])
    path = tmp_path / "model-64x64.onnx"
    assert path.is_file() and "wrote" in capsys.readouterr().err
    from hanet_fast.inference import load_model

    model, _ = load_model(checkpoint)
    _check_onnx(str(path), model, torch.randn(1, 3, 64, 64))
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(tmp_path), "--format", "onnx", "--size", "64x64"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_dynamic_states_its_range_and_refuses_too_small_a_trace(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "small.pt2"
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(tmp_path), "--format", "pt2", "--size", "16x16", "--dynamic", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--size 17x17" in err and not out.exists(), err
    main(["--checkpoint", str(tmp_path), "--format", "pt2", "--size", "17x17", "--dynamic", "--out", str(out)])
    err = capsys.readouterr().err
    assert "H >= 17, W >= 17 (the program refuses other sizes)" in err and "(any)" not in err, err


@pytest.mark.parametrize("argv,needle", [
    (["--format", "onnx", "--size", "0x4"], "--size"),
    (["--format", "tflite", "--size", "64x64"], "--format"),
    (["--format", "onnx", "--size", "64x64", "--pt2-ops", "fused"], "--pt2-ops"),
    (["--format", "pt2", "--size", "64x64", "--dynamic", "--batch", "2"], "--batch"),
    (["--format", "onnx", "--size", "99999x99999"], "--size 99999x99999: at most 8192"),
    (["--format", "pt2", "--size", "99999x99999", "--dynamic"], "--size 99999x99999: at most 8192"),
])
def test_cli_bad_arguments_exit_2_naming_the_flag(tmp_path, argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_cli_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(tmp_path / "nope.pt"), "--format", "pt2", "--size", "32x32",
              "--out", str(tmp_path / "x.pt2")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and len(err.splitlines()) == 1
