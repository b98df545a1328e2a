"""Tests of evaluation and inference (hanet_fast.evaluate, hanet_fast.inference,
hanet_fast.training.metrics; DESIGN §5, paper Tables 4 and 5): equality with the official
Cityscapes evaluation, per-region mIoU, test-time augmentation, row positions, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from hanet_fast.data import CLASS_NAMES, NUM_CLASSES, SyntheticUrbanScenes, label_to_train_lut
from hanet_fast.data.labels import train_to_label_lut
from hanet_fast.evaluate import main, official_cityscapes_scores, prediction_filename
from hanet_fast.inference import load_model, predict, resample_row_pos, window_starts
from hanet_fast.models import deeplabv3plus, to_official_state_dict
from hanet_fast.training.metrics import confusion, iou_from_confusion, region_bounds, region_confusion

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("cityscapesscripts")


# --------------------------------------------------------------------------- helpers
def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=NUM_CLASSES, hanet_layers=(1, 0, 0, 1, 0),
                          aux=False)
    # Random BN statistics, so that eval-mode outputs are not nearly constant.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save_ours(model, path, **train_args) -> str:
    torch.save({"model": model.state_dict(), "iteration": 7, "args": train_args,
                "model_config": json.loads(json.dumps(dataclasses.asdict(model.config)))}, path)
    return str(path)


def _cityscapes_tree(root, split="val", cities=("aachen", "bonn"), per_city=2, size=(32, 64), seed=0) -> list[str]:
    """A Cityscapes-format tree with random images and random labelIds (every id 0..33); the GT files."""
    rng = np.random.default_rng(seed)
    gts = []
    for city in cities:
        for k in range(per_city):
            name = f"{city}_{k:06d}_{19 + k:06d}"
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(img_dir / f"{name}_leftImg8bit.png")
            gt = rng.integers(0, 34, size, dtype=np.uint8)
            gt[: size[0] // 4] = 23  # a sky band, so some classes are common
            Image.fromarray(gt).save(gt_dir / f"{name}_gtFine_labelIds.png")
            gts.append(str(gt_dir / f"{name}_gtFine_labelIds.png"))
    return gts


class _Pointwise(nn.Module):
    """Logits from a 1x1 convolution: flip- and window-equivariant."""

    def __init__(self, classes: int = 5):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, images, row_pos=None):
        return self.conv(images)


class _Asymmetric(nn.Module):
    """A 3x3 convolution with a random (left-right asymmetric) kernel."""

    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, images, row_pos=None):
        return self.conv(images)


class _RowPosRecorder(nn.Module):
    """Records the row positions it is given; outputs them as the logit of class 1 (class 0: zeros)."""

    def __init__(self):
        super().__init__()
        self.calls: list[torch.Tensor] = []

    def forward(self, images, row_pos):
        self.calls.append(row_pos.clone())
        b, _, h, w = images.shape
        one = row_pos[:, None, :, None].expand(b, 1, h, w)
        return torch.cat([torch.zeros_like(one), one], dim=1)


# --------------------------------------------------------------------------- official equality
def test_labels_round_trip_and_match_official_ignore():
    from cityscapesscripts.helpers.labels import labels
    t2l, l2t = train_to_label_lut(), label_to_train_lut()
    assert [int(l2t[t2l[t]]) for t in range(NUM_CLASSES)] == list(range(NUM_CLASSES))
    assert np.array_equal(train_to_label_lut("builtin"), t2l)
    # Our ignore set is exactly the official evaluation's ignoreInEval set.
    assert {l.id for l in labels if l.id >= 0 and l.ignoreInEval} == {i for i in range(34) if l2t[i] == 255}


def test_metrics_equal_cityscapesscripts_on_random_predictions(tmp_path):
    gts = _cityscapes_tree(tmp_path / "cs", per_city=3)
    rng = np.random.default_rng(1)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    preds = []
    l2t = label_to_train_lut()
    ours = torch.zeros(NUM_CLASSES, NUM_CLASSES + 1, dtype=torch.int64)
    for gt_path in gts:
        gt = np.asarray(Image.open(gt_path))
        # Mostly right, else any labelId 0..33 (ignored ones too); never labelId 31 (train) so that it is
        # absent from predictions, and removed from the ground truth too below: nan on both sides.
        pred = np.where(rng.random(gt.shape) < 0.5, gt, rng.integers(0, 34, gt.shape)).astype(np.uint8)
        pred[pred == 31] = 0
        gt = gt.copy()
        gt[gt == 31] = 0
        Image.fromarray(gt).save(gt_path)
        path = pred_dir / prediction_filename(gt_path.replace("gtFine_labelIds", "leftImg8bit"), "x")
        Image.fromarray(pred).save(path)
        preds.append(str(path))
        ours += confusion(torch.from_numpy(l2t[pred]), torch.from_numpy(l2t[gt]), NUM_CLASSES, void_column=True)
    assert int(ours[:, NUM_CLASSES].sum()) > 0  # predictions of ignored labelIds happened
    official = official_cityscapes_scores(preds, gts)
    ious, miou, _ = iou_from_confusion(ours)
    assert math.isnan(official["iou"]["train"]) and math.isnan(ious[CLASS_NAMES.index("train")])
    for name, v in zip(CLASS_NAMES, ious):
        if name != "train":
            assert abs(official["iou"][name] - v) < 1e-12, name
    assert abs(official["mIoU"] - miou) < 1e-12
    # Without the void column the misses on ignored labelIds would be lost: the numbers would differ.
    assert iou_from_confusion(ours[:, :NUM_CLASSES])[1] != pytest.approx(miou, abs=1e-6)


def test_cli_official_flag_agrees_on_cityscapes_tree(tmp_path):
    _cityscapes_tree(tmp_path / "cs", size=(32, 48))
    ck = _save_ours(_tiny_model(), tmp_path / "ck.pt", dataset="cityscapes")
    out = tmp_path / "preds"
    status = main(["--checkpoint", ck, "--data-root", str(tmp_path / "cs"), "--workers", "0", "--no-progress",
                   "--official", "--save-labelids", str(out), "--json", str(tmp_path / "m.json")])
    assert status == 0
    res = json.load(open(tmp_path / "m.json"))
    assert res["dataset"] == "cityscapes" and res["images"] == 4 and res["official"]["agree"]
    assert sorted(os.listdir(out)) == ["aachen_000000_000019_labelIds.png", "aachen_000001_000020_labelIds.png",
                                       "bonn_000000_000019_labelIds.png", "bonn_000001_000020_labelIds.png"]
    assert res["official"]["mIoU"] == pytest.approx(res["mIoU"], abs=1e-12)


# --------------------------------------------------------------------------- regions
def test_region_bounds_split_rows_evenly():
    assert region_bounds(10, 4) == [(0, 3), (3, 5), (5, 8), (8, 10)]
    assert region_bounds(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]


@pytest.mark.parametrize("height,regions,sizes", [(10, 4, [3, 2, 3, 2]), (1024, 3, [342, 341, 341])])
def test_region_bands_count_the_rows_region_bounds_reports(height, regions, sizes):
    # Band k holds rows r with floor(r * R / H) = k: it starts at ceil(k * H / R).
    bounds = region_bounds(height, regions)
    assert [end - start for start, end in bounds] == sizes
    assert [start for start, _ in bounds] == [math.ceil(k * height / regions) for k in range(regions)]
    width = 3
    target = torch.zeros(1, height, width, dtype=torch.int64)
    conf = region_confusion(target, target, NUM_CLASSES, regions=regions)
    assert [int(c.sum()) for c in conf] == [(end - start) * width for start, end in bounds]
    # Each row lies in the band region_bounds gives it: a class per band, no pixel elsewhere.
    for k, (start, end) in enumerate(bounds):
        target[0, start:end] = k
    conf = region_confusion(target, target, NUM_CLASSES, regions=regions)
    assert [int(conf[k, k, k]) for k in range(regions)] == [(end - start) * width for start, end in bounds]


def test_per_region_miou_on_hand_made_case():
    # 8 rows x 4 columns, four bands of two rows: sky / building / car / road.
    target = torch.tensor([10] * 8 + [2] * 8 + [13] * 8 + [0] * 8).view(1, 8, 4)
    pred = target.clone()
    pred[0, 2, :] = 10            # band 2: half of the building pixels predicted as sky
    pred[0, 7, :2] = 255          # band 4: two road pixels on the ignore label ... of the ground truth below
    target[0, 7, :2] = 255        # ... so they do not count at all
    conf = region_confusion(pred, target, NUM_CLASSES, regions=4)
    assert conf.shape == (4, NUM_CLASSES, NUM_CLASSES)
    per_region = [iou_from_confusion(c) for c in conf]
    assert per_region[0][1] == 1.0 and per_region[2][1] == 1.0 and per_region[3][1] == 1.0
    ious, miou, acc = per_region[1]
    assert ious[2] == 0.5 and ious[10] == 0.0 and miou == 0.25 and acc == 0.5
    assert int(conf[3].sum()) == 6
    all_ious, all_miou, _ = iou_from_confusion(conf.sum(0))
    assert all_ious[10] == 8 / 12 and all_ious[2] == 0.5 and all_miou == pytest.approx((8 / 12 + 0.5 + 1 + 1) / 4)


def test_confusion_rejects_out_of_range_predictions_without_void_column():
    with pytest.raises(ValueError, match="void_column"):
        confusion(torch.tensor([0, 25]), torch.tensor([0, 1]), NUM_CLASSES)


# --------------------------------------------------------------------------- test-time augmentation
def test_window_starts_cover_the_image():
    assert window_starts(40, 10, 1 / 3) == [0, 6, 12, 18, 24, 30]
    assert window_starts(40, 10, 0.0) == [0, 10, 20, 30]
    assert window_starts(23, 10, 0.5) == [0, 5, 10, 13]
    assert window_starts(7, 10, 0.5) == [0]


@pytest.mark.parametrize("kwargs", [
    dict(scales=(0.5, 1.0, 1.7)),
    dict(flip=True),
    dict(window=(8, 16)),
    dict(window=(64, 64)),  # larger than the image: padded
    dict(scales=(0.75, 1.25), flip=True, window=(9, 11), overlap=0.5),
])
def test_tta_shapes_and_probabilities(kwargs):
    images = torch.randn(2, 3, 13, 37)  # H and W not divisible by anything useful
    probs = predict(_Asymmetric(), images, **kwargs)
    assert probs.shape == (2, 4, 13, 37) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(2, 13, 37), atol=1e-5)


@pytest.mark.parametrize("window", [(8, 16), (5, 7), (64, 64)])
def test_sliding_window_of_pointwise_model_equals_whole_image(window):
    images = torch.randn(1, 3, 13, 37)
    model = _Pointwise()
    whole = predict(model, images)
    assert torch.allclose(predict(model, images, window=window), whole, atol=1e-6)


def test_sliding_window_averages_overlapping_windows():
    # A 3x3 convolution sees the window borders: overlapping windows disagree and are averaged.
    images = torch.randn(1, 3, 12, 20)
    model = _Asymmetric()
    got = predict(model, images, window=(12, 12), overlap=1 / 3)  # windows at columns 0 and 8
    left = model(images[..., :12]).softmax(1)
    right = model(images[..., 8:]).softmax(1)
    expected = torch.cat([left[..., :8], (left[..., 8:] + right[..., :4]) / 2, right[..., 4:]], dim=3)
    assert torch.allclose(got, expected, atol=1e-6)


def test_flip_invariance():
    images = torch.randn(2, 3, 16, 24)
    # A flip-equivariant model (3x3 kernels symmetric left-right): flipping changes nothing.
    symmetric = _Asymmetric()
    with torch.no_grad():
        symmetric.conv.weight.copy_((symmetric.conv.weight + symmetric.conv.weight.flip(-1)) / 2)
    assert torch.allclose(predict(symmetric, images, flip=True), predict(symmetric, images), atol=1e-6)
    # Any model: with flip on, the result of a flipped image is the flipped result.
    asym = _Asymmetric()
    with_flip = predict(asym, images, flip=True)
    assert torch.allclose(predict(asym, images.flip(3), flip=True), with_flip.flip(3), atol=1e-6)
    assert not torch.allclose(predict(asym, images.flip(3)), predict(asym, images).flip(3), atol=1e-3)
    # ... because it averages the view with the flipped-back flipped view.
    plain = asym(images).softmax(1)
    flipped = asym(images.flip(3)).softmax(1).flip(3)
    assert torch.allclose(with_flip, (plain + flipped) / 2, atol=1e-6)


def test_multi_scale_averages_rescaled_views():
    images = torch.randn(1, 3, 16, 24)
    model = _Asymmetric()
    half = torch.nn.functional.interpolate(images, size=(8, 12), mode="bilinear", align_corners=False)
    p_half = torch.nn.functional.interpolate(model(half).softmax(1), size=(16, 24), mode="bilinear",
                                             align_corners=False)
    expected = (p_half + model(images).softmax(1)) / 2
    assert torch.allclose(predict(model, images, scales=(0.5, 1.0)), expected, atol=1e-6)


# --------------------------------------------------------------------------- row positions
def test_row_positions_stay_fractions_of_the_full_image():
    rec = _RowPosRecorder()
    images = torch.zeros(1, 3, 20, 4)  # at scale 2 one window wide
    predict(rec, images, scales=(0.5, 2.0), window=(10, 8))
    assert torch.allclose(rec.calls[0], torch.arange(10.)[None] / 10)  # scale 0.5: one window, the full image
    windows = rec.calls[1:]
    assert [int(c.shape[1]) for c in windows] == [10] * 6
    for top, pos in zip(window_starts(40, 10, 1 / 3), windows):  # scale 2: 40 rows, window slices
        assert torch.allclose(pos, (top + torch.arange(10.))[None] / 40)
    # A crop (rows 5..24 of a 100-row image) keeps its fractions at half resolution.
    crop_pos = ((5 + torch.arange(20.)) / 100)[None]
    rec.calls.clear()
    predict(rec, images, crop_pos, scales=(0.5,))
    assert torch.allclose(rec.calls[0], ((5 + 2 * torch.arange(10.)) / 100)[None])
    # Images smaller than the window: padded rows repeat the last position, and are cut off again.
    rec.calls.clear()
    out = predict(rec, torch.zeros(1, 3, 6, 8), window=(10, 8))
    assert torch.allclose(rec.calls[0], torch.tensor([[0, 1, 2, 3, 4, 5, 5, 5, 5, 5]]) / 6)
    assert out.shape == (1, 2, 6, 8)


def test_resample_row_pos_is_exact_for_affine_positions():
    full = torch.arange(12.)[None] / 12
    assert torch.allclose(resample_row_pos(full, 30), torch.arange(30.)[None] / 30)
    assert torch.allclose(resample_row_pos(full, 5), torch.arange(5.)[None] / 5)


# --------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(scales=()), ValueError, "scales"),
    (dict(scales=(1.0, 0.0)), ValueError, "scales"),
    (dict(scales="1.0"), ValueError, "scales"),
    (dict(window=(0, 8)), ValueError, "window"),
    (dict(window=(8,)), ValueError, "window"),
    (dict(overlap=1.0), ValueError, "overlap"),
    (dict(overlap=-0.1), ValueError, "overlap"),
    (dict(amp="fp8"), ValueError, "amp"),
])
def test_predict_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        predict(_Pointwise(), torch.randn(1, 3, 8, 8), **kwargs)


def test_predict_rejects_bad_inputs():
    with pytest.raises(ValueError, match="images"):
        predict(_Pointwise(), torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="images"):
        predict(_Pointwise(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="row_pos"):
        predict(_Pointwise(), torch.randn(1, 3, 8, 8), torch.zeros(1, 7))


# --------------------------------------------------------------------------- loading and the CLI
def test_load_model_ours_and_official(tmp_path):
    model = _tiny_model()
    images = torch.randn(1, 3, 32, 64)
    expected = model(images).logits
    run = tmp_path / "run"
    run.mkdir()
    _save_ours(model, run / "checkpoint.pt", dataset="synthetic")
    loaded, info = load_model(run)  # the run folder
    assert info["source"] == "hanet_fast" and info["config"] == model.config and info["iteration"] == 7
    assert info["train_args"] == {"dataset": "synthetic"} and not loaded.training
    assert torch.allclose(loaded(images).logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match="backbone"):
        load_model(run, backbone="resnet50")
    torch.save({"state_dict": {f"module.{k}": v for k, v in to_official_state_dict(model).items()}},
               tmp_path / "official.pth")
    official, info = load_model(tmp_path / "official.pth", output_stride=16)
    assert info["source"] == "official" and info["train_args"] == {}
    assert torch.allclose(official(images).logits, expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_cli_end_to_end_on_synthetic_checkpoint(tmp_path, capsys):
    ck = _save_ours(_tiny_model(), tmp_path / "ck.pt", dataset="synthetic", synthetic_size=[32, 64],
                    synthetic_val=3, data_seed=4)
    out = tmp_path / "labelids"
    status = main(["--checkpoint", ck, "--workers", "0", "--no-progress", "--flip", "--scales", "0.75,1",
                   "--sliding", "24x48", "--json", str(tmp_path / "m.json"), "--save-labelids", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "mid-lower" in printed and "flip on" in printed
    res = json.load(open(tmp_path / "m.json"))
    # Data defaults come from the checkpoint: 3 scenes of 32x64 with data seed 4.
    assert res["images"] == 3 and res["scales"] == [0.75, 1.0] and res["sliding"] == [24, 48]
    assert [r["name"] for r in res["regions"]] == ["upper", "mid-upper", "mid-lower", "lower"]
    files = sorted(os.listdir(out))
    assert files == ["synthetic_val_000000.png", "synthetic_val_000001.png", "synthetic_val_000002.png"]
    # The saved labelIds, mapped back to trainIds, give exactly the reported confusion matrix.
    data = SyntheticUrbanScenes("val", 3, (32, 64), 4)
    conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for k, name in enumerate(files):
        labelids = np.asarray(Image.open(out / name))
        assert labelids.shape == (32, 64)
        conf += confusion(torch.from_numpy(label_to_train_lut()[labelids]), data[k]["mask"], NUM_CLASSES)
    assert conf.tolist() == res["confusion"]
    ious, miou, acc = iou_from_confusion(conf)
    assert res["mIoU"] == pytest.approx(miou) and res["pixel_acc"] == pytest.approx(acc)


@pytest.mark.parametrize("extra,match", [
    (["--overlap", "1.5"], "--overlap"),
    (["--scales", "0,1"], "--scales"),
    (["--sliding", "0x5"], "--sliding"),
    (["--regions", "0"], "--regions"),
    (["--official"], "--official"),
    (["--dataset", "cityscapes"], "--data-root"),
    (["--split", "training"], "--split"),
])
def test_cli_rejects_bad_arguments(tmp_path, capsys, extra, match):
    ck = _save_ours(_tiny_model(), tmp_path / "ck.pt", dataset="synthetic")
    with pytest.raises(SystemExit) as err:
        main(["--checkpoint", ck, "--no-progress", *extra])
    assert err.value.code == 2 and match in capsys.readouterr().err


def test_help_documents_every_flag():
    from hanet_fast.evaluate import build_parser
    for action in build_parser()._actions:
        assert action.help, action.option_strings


# --------------------------------------------------------------------------- files and errors (issue 13)
def _bdd_tree(root, sizes=((32, 64), (48, 64), (32, 64)), seed=0) -> list:
    """A BDD100K-format val split: random images, random trainId labels; the label paths."""
    rng = np.random.default_rng(seed)
    img_dir, lbl_dir = root / "images" / "10k" / "val", root / "labels" / "sem_seg" / "masks" / "val"
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    labels = []
    for k, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(img_dir / f"im{k}.jpg")
        Image.fromarray(rng.integers(0, NUM_CLASSES, size, dtype=np.uint8)).save(lbl_dir / f"im{k}.png")
        labels.append(lbl_dir / f"im{k}.png")
    return labels


def _exit_line(argv, capsys) -> str:
    """main(argv) must exit with status 2 and one line on stderr (no traceback); returns it."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert "\n" not in line and "Traceback" not in line, line
    return line


def test_save_labelids_never_replaces_ground_truth_or_earlier_files(tmp_path, capsys):
    labels = _bdd_tree(tmp_path / "bdd", sizes=((32, 64),) * 2)
    ground_truth = [p.read_bytes() for p in labels]
    ck = _save_ours(_tiny_model(), tmp_path / "ck.pt", dataset="synthetic")
    common = ["--checkpoint", ck, "--dataset", "bdd100k", "--data-root", str(tmp_path / "bdd"), "--workers", "0",
              "--no-progress"]
    for extra in ([], ["--overwrite"]):  # the label folder is refused even with --overwrite
        line = _exit_line(common + ["--save-labelids", str(labels[0].parent)] + extra, capsys)
        assert "--save-labelids" in line and "data set's folder" in line
    assert [p.read_bytes() for p in labels] == ground_truth
    out = tmp_path / "preds"
    assert main(common + ["--save-labelids", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["im0.png", "im1.png"]
    (out / "im1.png").write_bytes(b"mine")
    line = _exit_line(common + ["--save-labelids", str(out)], capsys)
    assert "--overwrite" in line and "im" in line
    assert (out / "im1.png").read_bytes() == b"mine"
    assert main(common + ["--save-labelids", str(out), "--overwrite"]) == 0
    assert (out / "im1.png").read_bytes() != b"mine"


@pytest.mark.parametrize("kind", ["missing", "truncated", "text", "tensor"])
def test_cli_bad_checkpoint_is_one_line_error(tmp_path, capsys, kind):
    ck = tmp_path / "ck.pt"
    if kind == "truncated":
        data = open(_save_ours(_tiny_model(), tmp_path / "good.pt", dataset="synthetic"), "rb").read()
        ck.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "text":
        ck.write_text("checkpoint = yes\n")
    elif kind == "tensor":
        torch.save(torch.zeros(3), ck)
    line = _exit_line(["--checkpoint", str(ck), "--no-progress"], capsys)
    assert str(ck) in line


def test_cli_missing_data_root_and_unwritable_json_fail_before_evaluating(tmp_path, capsys):
    ck = _save_ours(_tiny_model(), tmp_path / "ck.pt", dataset="synthetic", synthetic_size=[32, 64], synthetic_val=2)
    line = _exit_line(["--checkpoint", ck, "--dataset", "bdd100k", "--data-root", str(tmp_path / "nowhere"),
                       "--no-progress"], capsys)
    assert str(tmp_path / "nowhere") in line
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit) as err:
        main(["--checkpoint", ck, "--workers", "0", "--no-progress", "--json", str(tmp_path / "a_file" / "m.json")])
    assert err.value.code == 2
    captured = capsys.readouterr()
    assert "--json" in captured.err and "mIoU" not in captured.out  # refused before the evaluation ran
    (tmp_path / "m.json").write_text("{}")
    line = _exit_line(["--checkpoint", ck, "--workers", "0", "--no-progress", "--json", str(tmp_path / "m.json")],
                      capsys)
    assert "--json" in line and "--overwrite" in line and (tmp_path / "m.json").read_text() == "{}"


def test_cli_batches_images_of_different_sizes(tmp_path):
    _bdd_tree(tmp_path / "bdd")  # sizes 32x64, 48x64, 32x64
    ck = _save_ours(_tiny_model(), tmp_path / "ck.pt", dataset="synthetic")
    common = ["--checkpoint", ck, "--dataset", "bdd100k", "--data-root", str(tmp_path / "bdd"), "--workers", "0",
              "--no-progress", "--regions", "1"]
    assert main(common + ["--batch-size", "2", "--json", str(tmp_path / "two.json")]) == 0
    assert main(common + ["--batch-size", "1", "--json", str(tmp_path / "one.json")]) == 0
    two, one = (json.load(open(tmp_path / f"{n}.json")) for n in ("two", "one"))
    assert two["images"] == 3 and two["confusion"] == one["confusion"]
