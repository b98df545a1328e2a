"""HANet on timm backbones (``backbone="timm:NAME"``), random weights, nothing downloaded.

Budget (CI has 2 cores): every model gets the wiring check, a training step with HANet L1-L5
at every output stride it supports, an eval forward at a size that is not a multiple of 32,
and a channels_last + bf16 autocast training step; the expensive checks run on a subset:
``torch.compile`` (aot_eager) on convnext_atto, the ONNX round trip on convnext_atto and
pvt_v2_b0 (the convolutional and the attention family), and the command lines (train, resume,
evaluate, infer, export pt2, models.summary) on resnet10t, the fastest.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm backbones need the [timm] extra")

from hanet_fast.models import HANetConfig, backbone_spec, deeplabv3plus  # noqa: E402
from hanet_fast.models import timm_backbone  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: The strides timm 1.0 builds each test model at (pvt_v2 takes no output_stride argument).
STRIDES = {
    "convnext_atto": (8, 16, 32),
    "efficientnet_b0": (4, 8, 16, 32),
    "resnet10t": (8, 16, 32),
    "pvt_v2_b0": (32,),
}
ALL_L = (1, 1, 1, 1, 1)
ROWS = HANetConfig(rows=4)


def _model(name: str, output_stride: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return deeplabv3plus(f"timm:{name}", output_stride=output_stride, num_classes=19, hanet_layers=ALL_L, hanet=ROWS,
                         **kwargs)


def _row_pos(images: torch.Tensor) -> torch.Tensor:
    h = images.shape[2]
    return (torch.arange(h) / h).expand(images.shape[0], h)


@pytest.mark.parametrize("name", list(STRIDES))
def test_wiring_follows_feature_info(name):
    spec = backbone_spec(f"timm:{name}")
    info = timm.create_model(name, features_only=True).feature_info
    strides, channels = info.reduction(), info.channels()
    low, stage3, stage4 = spec.feature_indices
    assert strides[low] == 4 and strides.index(4) == low
    assert (stage3, stage4) == (len(strides) - 2, len(strides) - 1)
    assert (spec.low_channels, spec.aux_channels, spec.out_channels) == (channels[low], channels[stage3],
                                                                         channels[stage4])
    assert spec.output_strides == STRIDES[name] and spec.family == "timm"


@pytest.mark.parametrize("name", list(STRIDES))
def test_training_step_with_l1_to_l5_at_every_output_stride(name):
    spec = backbone_spec(f"timm:{name}")
    images = torch.randn(2, 3, 64, 64)
    for output_stride in spec.output_strides:
        model = _model(name, output_stride).train()
        features = model.trunk(images)
        assert [tuple(f.shape[1:]) for f in features] == [
            (spec.low_channels, 16, 16), (spec.aux_channels, *features[1].shape[2:]),
            (spec.out_channels, 64 // output_stride, 64 // output_stride)], output_stride
        out = model(images, _row_pos(images), return_attention=True)
        assert out.logits.shape == (2, 19, 64, 64) and out.aux_logits.shape[:2] == (2, 19)
        assert {k: v.shape[1] for k, v in out.attention.items()} == {
            "L1": spec.out_channels, "L2": 1280, "L3": 256, "L4": 256, "L5": 19}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        (out.logits.logsumexp(1).mean() + out.aux_logits.logsumexp(1).mean()).backward()
        optimizer.step()
        for layer in ("hanet0", "hanet4", "trunk"):
            assert any(not torch.equal(v, before[k]) for k, v in model.named_parameters() if k.startswith(layer)), \
                (output_stride, layer)
    # any input size, not only multiples of 32
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 72)).logits.shape == (1, 19, 40, 72)


@pytest.mark.parametrize("name", list(STRIDES))
def test_channels_last_and_bf16_autocast(name):
    output_stride = STRIDES[name][-1]
    model = _model(name, output_stride).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(images).logits
        model = model.to(memory_format=torch.channels_last)
        got = model(images.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images.contiguous(memory_format=torch.channels_last), _row_pos(images))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    out.logits.float().logsumexp(1).mean().backward()
    grads = [p.grad for p in model.hanet0.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_torch_compile_aot_eager_matches_eager():
    model = _model("convnext_atto", 16).eval()
    images = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images, _row_pos(images)).logits, model(images, _row_pos(images)).logits,
                                   rtol=1e-4, atol=1e-4)
    model.train()
    out = compiled(images, _row_pos(images))
    (out.logits.logsumexp(1).mean() + out.aux_logits.logsumexp(1).mean()).backward()
    assert all(p.grad is not None for p in model.hanet0.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["convnext_atto", "pvt_v2_b0"])
def test_onnx_round_trip(name, tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs the [export] extra")
    ort = pytest.importorskip("onnxruntime", reason="checking ONNX files needs the [export] extra")
    from hanet_fast.export import export_onnx

    model = _model(name, STRIDES[name][-1], aux=False).train()
    with torch.no_grad():  # BN statistics that are not the initial ones
        model(torch.randn(2, 3, 64, 64))
    model.eval()
    images = torch.randn(1, 3, 64, 64)
    path = export_onnx(model, tmp_path / f"{name}.onnx", (64, 64))
    (got,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = model(images, _row_pos(images)).logits
    assert float((torch.from_numpy(got) - want).abs().max() / want.abs().max()) <= 1e-4


def test_command_lines_rebuild_the_timm_network(tmp_path, capsys):
    """train -> resume -> evaluate / infer / export (pt2) / models.summary with --backbone timm:NAME."""
    from PIL import Image

    from hanet_fast import evaluate, export, infer, train
    from hanet_fast.inference import load_model
    from hanet_fast.models import summary

    run = tmp_path / "run"
    tiny = ["--synthetic-size", "48,96", "--crop-size", "32,64", "--synthetic-train", "4", "--synthetic-val", "1",
            "--batch-size", "2", "--hanet-rows", "4", "--val-every", "0", "--num-vis", "1", "--no-progress",
            "--threads", "1", "--workers", "0", "--ckpt-every", "1"]
    assert train.main([*tiny, "--iters", "1", "--backbone", "timm:resnet10t", "--output-stride", "16",
                       "--hanet-layers", "1,1,1,1,1", "--out", str(run)]) in (0, None)
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    assert saved["model_config"]["backbone"] == "timm:resnet10t" and saved["model_config"]["output_stride"] == 16
    assert train.main(["--resume", str(run), "--iters", "2", "--no-progress", "--threads", "1"]) in (0, None)
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    model, info = load_model(run)
    assert info["config"].backbone == "timm:resnet10t" and hasattr(model, "trunk")
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())

    assert evaluate.main(["--checkpoint", str(run), "--backbone", "timm:resnet10t", "--output-stride", "8",
                          "--no-progress", "--workers", "0", "--limit", "1",
                          "--json", str(tmp_path / "eval.json")]) in (0, None)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["backbone"] == "timm:resnet10t" and report["output_stride"] == 8 and "mIoU" in report
    Image.new("RGB", (64, 32), (90, 120, 200)).save(tmp_path / "street.png")
    infer.main(["--checkpoint", str(run), "--out", str(tmp_path / "pred"), str(tmp_path / "street.png")])
    assert (tmp_path / "pred" / "street_pred.png").is_file()
    path = export.main(["--checkpoint", str(run), "--format", "pt2", "--size", "32x64", "--out",
                        str(tmp_path / "net.pt2")])
    images = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        want = model(images).logits
    torch.testing.assert_close(torch.export.load(path).module()(images), want, rtol=1e-4, atol=1e-4)

    capsys.readouterr()
    summary.main(["--backbone", "timm:resnet10t", "--output-stride", "16", "--size", "64", "64"])
    assert "| timm:resnet10t | 16 | 32 |" in capsys.readouterr().out


def test_sync_batchnorm_keeps_the_activations_timm_fuses_into_batchnorm():
    from timm.layers import BatchNormAct2d

    from hanet_fast.models import convert_sync_batchnorm

    model = _model("efficientnet_b0", 16)
    acts = [type(m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
    plain = sum(isinstance(m, torch.nn.BatchNorm2d) and not isinstance(m, BatchNormAct2d) for m in model.modules())
    assert acts and any(a is not torch.nn.Identity for a in acts) and plain
    synced = convert_sync_batchnorm(model)
    assert [type(m.act) for m in synced.modules() if hasattr(m, "act") and isinstance(m, torch.nn.SyncBatchNorm)
            ] == acts
    assert not any(type(m) is torch.nn.BatchNorm2d or isinstance(m, BatchNormAct2d) for m in synced.modules())


def test_bad_backbones_are_refused_in_one_line(capsys):
    from hanet_fast.models import summary

    with pytest.raises(ValueError, match=r"output_stride of timm:pvt_v2_b0 must be one of \(32,\).*got 8"):
        deeplabv3plus("timm:pvt_v2_b0", output_stride=8)
    with pytest.raises(ValueError, match="fixed input size"):
        deeplabv3plus("timm:swin_tiny_patch4_window7_224")
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        deeplabv3plus("timm:no_such_net")
    from hanet_fast.models.backbones import imagenet_weights

    with pytest.raises(ValueError, match="timm backbone"):
        imagenet_weights("timm:resnet10t")  # torchvision's weights table has no timm names
    with pytest.raises(SystemExit) as exc:
        summary.main(["--backbone", "timm:pvt_v2_b0", "--output-stride", "8"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "(32,)" in err


def test_without_timm_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ValueError, match=r'pip install -e "\.\[timm\]"') as exc:
        deeplabv3plus("timm:resnet18")  # a name no other test put in timm_spec's cache
    assert isinstance(exc.value, ImportError) and len(str(exc.value).splitlines()) == 1


# ----------------------------------------------------------------------------- pretrained weights
def _classifier_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("resnet10t").state_dict()


def _assert_trunk_holds(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    trunk = model.trunk.state_dict()
    assert trunk and all(torch.equal(v, state[k]) for k, v in trunk.items())  # resnet10t keeps timm's names


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads_without_network(suffix, tmp_path, monkeypatch):
    monkeypatch.setattr(timm_backbone.socket, "create_connection", _no_network)
    state = _classifier_state()
    path = tmp_path / f"resnet10t{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    _assert_trunk_holds(deeplabv3plus("timm:resnet10t", output_stride=16, pretrained_backbone=path), state)


def test_a_file_that_does_not_fit_is_refused(tmp_path):
    state = _classifier_state()
    del state["layer4.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth.*missing from the file: layer4\.0\.conv1\.weight"):
        deeplabv3plus("timm:resnet10t", output_stride=16, pretrained_backbone=tmp_path / "partial.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        deeplabv3plus("timm:resnet10t", pretrained_backbone=tmp_path / "nope.pth")


def _no_network(*args, **kwargs):
    raise AssertionError("a network connection was attempted")


def _hub_cache(tmp_path, monkeypatch) -> str:
    from huggingface_hub import constants

    cache = str(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(timm_backbone.socket, "create_connection", _no_network)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _no_network)
    return cache


def test_imagenet_loads_timm_default_weights_from_the_hub_cache(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    cache = _hub_cache(tmp_path, monkeypatch)
    repo = timm.get_pretrained_cfg("resnet10t").hf_hub_id  # the default tag's weights
    folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(folder, "refs"))
    os.makedirs(os.path.join(folder, "snapshots", "0" * 40))
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write("0" * 40)
    state = _classifier_state()
    save_file(state, os.path.join(folder, "snapshots", "0" * 40, "model.safetensors"))
    _assert_trunk_holds(deeplabv3plus("timm:resnet10t", output_stride=16, pretrained_backbone="imagenet"), state)


def test_imagenet_offline_fails_at_once_naming_the_cache_and_the_path_alternative(tmp_path, monkeypatch):
    cache = _hub_cache(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # decided without any connection attempt
    with pytest.raises(RuntimeError) as exc:
        deeplabv3plus("timm:resnet10t", pretrained_backbone="imagenet")
    message = str(exc.value)
    assert "HF_HUB_OFFLINE" in message and cache in message and "pretrained_backbone=PATH" in message
    assert len(message.splitlines()) == 1

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(timm_backbone.socket, "create_connection", unreachable)
    with pytest.raises(RuntimeError, match="cannot be reached.*Name or service not known"):
        deeplabv3plus("timm:resnet10t", pretrained_backbone="imagenet")
