"""Tests of the official eval.py protocols (hanet_fast.official_eval; issue 12 item 9): window
geometry, eval.py's count array, row positions of windows and scaled images, flip handling,
the averaging order, and both protocols end to end on stub networks (by hand) and on a tiny
checkpoint through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hanet_fast.data import NUM_CLASSES, SyntheticUrbanScenes
from hanet_fast.data.transforms import EvalTransform
from hanet_fast.evaluate import main
from hanet_fast.inference import load_model
from hanet_fast.models import HANetConfig, deeplabv3plus
from hanet_fast.nn.positional import ROW_POS_TOLERANCE
from hanet_fast.official_eval import (ProtocolError, coarse_rows, count_array, official_scores, pooling_scores,
                                      sliding_scores, sliding_windows, window_row_pos, window_size, window_stride)
from hanet_fast.training.metrics import confusion
from tiny_model import save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class _Stub(nn.Module):
    """Logits of the input's size from ``fn(images) -> [B, C, h, w]``; records every call's
    input shape and row positions (and the input in ``images``)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.calls: list[tuple[tuple[int, ...], torch.Tensor]] = []
        self.images: list[torch.Tensor] = []

    def forward(self, images, row_pos=None):
        self.calls.append((tuple(images.shape), row_pos.clone()))
        self.images.append(images.clone())
        return self.fn(images)


def _class_constant(values):
    """A stub whose logits are ``values[c]`` at every pixel of every window."""
    k = torch.tensor(values, dtype=torch.float32)
    return _Stub(lambda x: k.view(1, -1, 1, 1).expand(x.shape[0], -1, x.shape[2], x.shape[3]).clone())


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- geometry
def test_window_size_and_stride_as_eval_py_computes_them():
    assert [window_size(1024, s) for s in (0.5, 1.0, 1.5, 2.0)] == [1024, 1024, 1536, 2048]
    # ceil(window * (1 - 1/3)) in float64: 1 - 1/3 rounds up, so multiples of 3 can gain a pixel.
    assert [window_stride(t, 1 / 3) for t in (1024, 2048, 864, 768, 9, 6, 4)] == [683, 1366, 577, 512, 7, 4, 3]
    assert window_stride(1024, 0.0) == 1024


def test_windows_of_a_cityscapes_image_at_the_official_scales():
    assert sliding_windows(1024, 2048, 1024, 1.0, 1 / 3) == [(0, 0, 1024, 1024), (683, 0, 1707, 1024),
                                                              (1024, 0, 2048, 1024)]
    assert sliding_windows(2048, 4096, 1024, 2.0, 1 / 3) == [(0, 0, 2048, 2048), (1366, 0, 3414, 2048),
                                                              (2048, 0, 4096, 2048)]
    # Scale 0.5: the 512x1024 image is smaller than the 1024 window: one window, the whole image.
    assert sliding_windows(512, 1024, 1024, 0.5, 1 / 3) == [(0, 0, 1024, 512)]


def test_windows_in_eval_py_order_columns_outer():
    # 8x8, window 4, stride 3: starts 0, 3, 6 -> 4 (moved back to end at the edge) on both axes.
    starts = [(0, 4), (3, 7), (4, 8)]
    expected = [(x1, y1, x2, y2) for x1, x2 in starts for y1, y2 in starts]
    assert sliding_windows(8, 8, 4, 1.0, 1 / 3) == expected


def test_image_smaller_than_window_is_run_whole_never_padded():
    # eval.py's own case: ceil((800 - 1024) / 683) + 1 = 1 window, clamped to the image.
    assert sliding_windows(600, 800, 1024, 1.0, 1 / 3) == [(0, 0, 800, 600)]
    # eval.py finds no window once size <= window - stride (here ceil(-724 / 683) + 1 = 0) and
    # fails; the image is run whole.
    assert sliding_windows(100, 300, 1024, 1.0, 1 / 3) == [(0, 0, 300, 100)]
    stub = _class_constant([0.0, 1.0])
    sliding_scores(stub, _image(30, 40), crop_size=1024, scales=(1.0,), flip=False)
    assert [shape for shape, _ in stub.calls] == [(1, 3, 30, 40)]


# --------------------------------------------------------------------------- count array
def _literal_count(classes, h, w, windows):
    """eval.py's count_predictions, as it builds it: [C, H, W] indexed [y1:y2, x1:x2]."""
    count = np.zeros((classes, h, w))
    for x1, y1, x2, y2 in windows:
        count[y1:y2, x1:x2] += 1
    return count


@pytest.mark.parametrize("h,w,crop,classes", [(4, 8, 4, 3), (8, 8, 4, 6), (40, 64, 32, 19), (24, 24, 6, 19)])
def test_count_array_equals_eval_py_literal_indexing(h, w, crop, classes):
    windows = sliding_windows(h, w, crop, 1.0, 1 / 3)
    literal = _literal_count(classes, h, w, windows)
    ours = count_array(classes, h, windows)
    assert np.array_equal(np.broadcast_to(ours.numpy()[:, :, None], literal.shape), literal)


def test_count_array_by_hand():
    # 4x8, window 4, stride 3: windows x 0-4, 3-7, 4-8 over all 4 rows. The true coverage of
    # columns is 1,1,1,2,2,2,2,1; eval.py counts by *row* (the window's columns index rows):
    # rows 0-2 are in window 1 only, row 3 in windows 1 and 2, window 3 (columns 4-8) no row.
    count = count_array(3, 4, sliding_windows(4, 8, 4, 1.0, 1 / 3))
    assert count.tolist() == [[1, 1, 1, 2]] * 3
    # 8x8: the windows' rows index the class axis, so classes 3, 4, 5 count twice.
    m = [1, 1, 1, 2, 2, 2, 2, 1]
    count = count_array(6, 8, sliding_windows(8, 8, 4, 1.0, 1 / 3))
    assert count.tolist() == [[m[c] * m[r] for r in range(8)] for c in range(6)]
    # Cityscapes at scale 1 (docs/fidelity/evaluation.md): 1 for rows 0-682, 2 for rows 683-1023,
    # every class alike, although columns 683-1706 are the ones covered twice.
    count = count_array(19, 1024, sliding_windows(1024, 2048, 1024, 1.0, 1 / 3))
    assert torch.equal(count, torch.cat([torch.ones(19, 683), torch.full((19, 341), 2.0)], 1).double())
    count = count_array(19, 2048, sliding_windows(2048, 4096, 1024, 2.0, 1 / 3))
    assert torch.equal(count, torch.cat([torch.ones(19, 1366), torch.full((19, 682), 2.0)], 1).double())


def test_sliding_divides_summed_logits_by_eval_py_count():
    # Class-constant logits k_c in 9 windows over 8x8: the summed logits are k_c * m(row) * m(col),
    # eval.py divides by m(c) * m(row): the score is k_c * m(col) / m(c). Classes 3-5 are halved,
    # so class 0 wins although the true window average (k_c) would pick class 3.
    k = [1.0, 0.5, 0.25, 1.5, 1.5, 1.5]
    m = torch.tensor([1.0, 1, 1, 2, 2, 2, 2, 1])
    stub = _class_constant(k)
    scores = sliding_scores(stub, _image(8, 8), crop_size=4, scales=(1.0,), flip=False)
    expected = torch.stack([kc * m.expand(8, 8) / m[c] for c, kc in enumerate(k)]).double()
    assert torch.equal(scores, expected)
    assert scores.argmax(0).eq(0).all()
    assert len(stub.calls) == 9


def test_averaging_over_flips_then_scales():
    # Scale 2: 16x16, window 8, stride 6 -> windows 0-8, 6-14, 8-16; classes 0-5 lie in one window
    # row, so the score is k_c * m2(col) with m2 = 1 x6, 2 x8, 1 x2, which the bilinear 2x
    # reduction (pairs averaged) turns into m(col). The windows are not symmetric: the flipped
    # image's map, flipped back, is k_c * m(7 - col) / m(c) (scale 1) and k_c * m(7 - col) (scale 2).
    k = [1.0, 0.5, 0.25, 1.5, 1.5, 1.5]
    m = torch.tensor([1.0, 1, 1, 2, 2, 2, 2, 1])
    stub = _class_constant(k)
    scores = sliding_scores(stub, _image(8, 8), crop_size=4, scales=(1.0, 2.0), flip=True)
    both = (m + m.flip(0)) / 2
    assert both.tolist() == [1, 1.5, 1.5, 2, 2, 1.5, 1.5, 1]
    expected = torch.stack([(kc * both / m[c] + kc * both) / 2 for c, kc in enumerate(k)]).double()
    assert torch.allclose(scores, expected[:, None, :].expand(6, 8, 8), rtol=0, atol=1e-15)
    # 9 windows at scale 1 and 9 at scale 2, each for the image and its flip.
    assert len(stub.calls) == 36


def test_sliding_rescales_the_image_with_pils_bilinear_filter():
    """eval.py resizes the uint8 image bilinearly before segmenting it: a stub whose logits are the
    pixels, at scale 0.75, sees exactly PIL's bilinear result (issue 21 item 5: bicubic must fail)."""
    from PIL import Image

    image = _image(24, 48, seed=5)
    stub = _Stub(lambda x: x[:, :2] * 3)  # two classes from the red and green channels
    scores = sliding_scores(stub, image, crop_size=64, scales=(0.75,), flip=False)
    seen = {}
    for name, resample in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)):
        scaled = np.asarray(Image.fromarray(image).resize((36, 18), resample))
        whole = sliding_scores(_Stub(lambda x: x[:, :2] * 3), scaled, crop_size=64, scales=(1.0,), flip=False)
        seen[name] = F.interpolate(whole[None], size=(24, 48), mode="bilinear", align_corners=False)[0]
    assert stub.calls[0][0] == (1, 3, 18, 36)
    assert torch.allclose(scores, seen["bilinear"], rtol=0, atol=1e-12)
    assert (scores - seen["bicubic"]).abs().max() > 1e-3


def test_sliding_refuses_images_where_eval_py_divides_by_zero():
    # A portrait image: rows >= its width are never counted.
    with pytest.raises(ProtocolError, match="count array is zero"):
        sliding_scores(_class_constant([0.0, 1.0]), _image(12, 8), crop_size=4, scales=(1.0,), flip=False)


# --------------------------------------------------------------------------- flips
def _column_ramp():
    """Class 0: the column inside the network's input; class 1: 0."""
    def fn(x):
        ramp = torch.arange(x.shape[3], dtype=torch.float32).expand(x.shape[0], 1, x.shape[2], -1)
        return torch.cat([ramp, torch.zeros_like(ramp)], 1)
    return _Stub(fn)


def test_flipped_predictions_are_flipped_back():
    w = 10
    ramp = torch.arange(w, dtype=torch.float64)
    no_flip = sliding_scores(_column_ramp(), _image(6, w), crop_size=16, scales=(1.0,), flip=False)
    assert torch.equal(no_flip[0], ramp.expand(6, w))
    # The flipped run gives column x the value w - 1 - x, flipped back; the mean is constant.
    flipped = sliding_scores(_column_ramp(), _image(6, w), crop_size=16, scales=(1.0,), flip=True)
    assert torch.equal(flipped[0], torch.full((6, w), (w - 1) / 2, dtype=torch.float64))
    pooled = pooling_scores(_column_ramp(), _image(6, w), scales=(1.0,), flip=True)
    p0 = (torch.sigmoid(ramp) + torch.sigmoid(ramp.flip(0))) / 2
    assert torch.allclose(pooled[0], p0.expand(6, w), atol=1e-7)


def test_flip_sees_the_mirrored_image():
    for run in (lambda m: sliding_scores(m, _image(6, 10), crop_size=16, scales=(1.0,), flip=True),
                lambda m: pooling_scores(m, _image(6, 10), scales=(1.0,), flip=True)):
        stub = _class_constant([0.0, 1.0])
        run(stub)
        plain, mirrored = stub.images
        assert torch.equal(mirrored, plain.flip(3)) and not torch.equal(mirrored, plain)


# --------------------------------------------------------------------------- pooling
def test_pooling_running_mean_of_softmax_over_flips_and_scales():
    # Logits (h / 8, 0) for an input of h rows: p0 = sigmoid(h / 8) at each scale, twice (flips).
    stub = _Stub(lambda x: torch.cat([torch.full_like(x[:, :1], x.shape[2] / 8), torch.zeros_like(x[:, :1])], 1))
    scores = pooling_scores(stub, _image(16, 24), scales=(0.5, 1.0, 2.0), flip=True)
    p0 = [1 / (1 + math.exp(-h / 8)) for h in (8, 16, 32)]
    assert torch.allclose(scores[0], torch.full((16, 24), sum(p0) / 3, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(scores.sum(0), torch.ones(16, 24, dtype=torch.float64), atol=1e-12)
    # Flip outer, scale inner; PIL's int(w * s) x int(h * s); the whole image, never windows.
    assert [shape[2:] for shape, _ in stub.calls] == [(8, 12), (16, 24), (32, 48)] * 2


def test_pooling_resizes_logits_bilinearly_before_the_softmax():
    # A 2x2 logit map upsampled to 4x4: softmax after the bilinear resize, not before.
    logits = torch.tensor([[0.0, 4.0], [2.0, -2.0]])
    stub = _Stub(lambda x: torch.stack([logits, torch.zeros_like(logits)])[None])
    scores = pooling_scores(stub, _image(4, 4), scales=(0.5,), flip=False)
    up = F.interpolate(logits[None, None], size=(4, 4), mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(scores[0], torch.sigmoid(up).double(), atol=1e-7)


# --------------------------------------------------------------------------- row positions
def test_window_row_pos_by_hand():
    # 16-row image at scale 2 (32 rows), window rows 11-27: eval.py slices original rows
    # int(11 * 0.5) = 5 .. int(27 * 0.5) = 13; without coarse rows each window row takes its
    # nearest original row.
    pos = window_row_pos(11, 27, 32, 16)
    assert (pos * 16).tolist() == [5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12]
    # 4 coarse rows over an 8-row window of rows 0-8: eval.py's coarse row j takes original row
    # 2 j; input rows 2 j, 2 j + 1 (the block the network picks row 2 j from) carry it.
    assert (window_row_pos(0, 8, 16, 16, rows=4) * 16).tolist() == [0, 0, 2, 2, 4, 4, 6, 6]
    # Pooling: the whole original map (720 rows) for a 360-row scaled image, 16 coarse rows:
    # coarse row j -> original row 45 j, over blocks [floor(22.5 j), floor(22.5 (j + 1))).
    pos = window_row_pos(0, 360, 360, 720, rows=16, pooling=True) * 720
    assert pos[[0, 21, 22, 44, 45, 359]].tolist() == [0, 0, 45, 45, 90, 675]


def _eval_py_coarse(pos_rows: int, full_h: int, start: int, stop: int, rows: int) -> list[int]:
    """eval.py + PosEncoding1D: the position map (row * rows // full_h; for 1024 rows that is
    row // 8 // pos_rfactor), sliced, nearest-resized to ``rows``."""
    pos_map = torch.arange(pos_rows) * rows // full_h
    sliced = pos_map[start:stop].float().view(1, 1, -1)
    return F.interpolate(sliced, size=rows, mode="nearest").view(-1).long().tolist()


@pytest.mark.parametrize("full_h,h,y1,y2,rows,pooling", [
    (1024, 512, 0, 512, 16, False),     # Cityscapes, scale 0.5: the whole image
    (1024, 2048, 0, 2048, 16, False),   # scale 2
    (1024, 1024, 0, 1024, 32, False),
    (1024, 1536, 512, 1536, 16, False),  # a lower window of a taller scaled image
    (1024, 1536, 683, 1536, 16, False),
    (720, 360, 0, 360, 16, True),       # BDD100K pooling at scale 0.5: 360 rows, not a multiple of 16
    (720, 1440, 0, 1440, 16, True),
    (1024, 3072, 0, 3072, 8, True),
])
def test_network_sees_eval_py_positions(full_h, h, y1, y2, rows, pooling):
    """The network takes input row floor(j * n / rows) for coarse row j and floors its position
    times rows: that is eval.py's coarse position for every coarse row."""
    pos = window_row_pos(y1, y2, h, full_h, rows=rows, pooling=pooling)
    n = y2 - y1
    picked = [int(math.floor(float(pos[(j * n) // rows]) * rows + ROW_POS_TOLERANCE)) for j in range(rows)]
    if pooling:
        start, stop = 0, full_h
    else:
        start, stop = int(y1 * (full_h / h)), int(y2 * (full_h / h))
    assert picked == _eval_py_coarse(full_h, full_h, start, stop, rows)


def test_networks_are_given_each_windows_positions():
    stub = _class_constant([0.0, 1.0])
    sliding_scores(stub, _image(20, 24), crop_size=8, scales=(1.0,), flip=False, rows=4)
    windows = sliding_windows(20, 24, 8, 1.0, 1 / 3)
    assert len(stub.calls) == len(windows)
    for (shape, pos), (x1, y1, x2, y2) in zip(stub.calls, windows):
        assert shape == (1, 3, y2 - y1, x2 - x1)
        assert torch.equal(pos, window_row_pos(y1, y2, 20, 20, rows=4).float()[None])


def test_coarse_rows_of_a_network():
    model = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=19, hanet_layers=(1, 0, 0, 1, 0),
                          hanet=HANetConfig(rows=4), aux=False)
    assert coarse_rows(model) == 4
    assert coarse_rows(_class_constant([0.0])) is None
    mixed = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=19, hanet_layers=(0, 0, 0, 0, 0), aux=False)
    mixed.extra = nn.ModuleList([model.hanet0, deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=19,
                                                              hanet_layers=(1, 0, 0, 0, 0), aux=False).hanet0])
    with pytest.raises(ValueError, match="different coarse rows"):
        coarse_rows(mixed)


def test_bad_settings_are_refused():
    stub = _class_constant([0.0, 1.0])
    with pytest.raises(ValueError, match="protocol"):
        official_scores(stub, _image(8, 8), "sliding")
    with pytest.raises(ValueError, match="uint8"):
        official_scores(stub, _image(8, 8).astype(np.float32), "official-pooling")
    with pytest.raises(ValueError, match="crop_size"):
        official_scores(stub, _image(8, 8), "official-sliding", crop_size=0)
    with pytest.raises(ValueError, match="scale 0.1"):
        official_scores(stub, _image(8, 8), "official-pooling", scales=(0.1,))


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("protocol,extra", [("official-sliding", ["--crop-size", "32"]), ("official-pooling", [])])
def test_cli_runs_the_official_protocols(tmp_path, capsys, protocol, extra):
    ck = save_tiny_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "m.json"
    status = main(["--checkpoint", ck, "--workers", "0", "--no-progress", "--synthetic-size", "40x64",
                   "--synthetic-val", "1", "--protocol", protocol, "--json", str(out), *extra])
    assert status == 0
    assert f"protocol {protocol}, scales 0.5,1,2, flip on" in capsys.readouterr().out
    res = json.load(open(out))
    assert res["protocol"] == protocol and res["scales"] == [0.5, 1.0, 2.0] and res["flip"] is True
    assert res["crop_size"] == (32 if protocol == "official-sliding" else None)
    # The CLI's counts are those of the protocol's argmax on the scene.
    model, _ = load_model(ck)
    scene = SyntheticUrbanScenes("val", 1, (40, 64), 0, EvalTransform(tensor=False))[0]
    pred = official_scores(model, scene["image"], protocol, crop_size=32).argmax(0)
    assert confusion(pred, torch.from_numpy(scene["mask"]).long(), NUM_CLASSES).tolist() == res["confusion"]


@pytest.mark.parametrize("extra,match", [
    (["--protocol", "official-sliding", "--sliding", "8x8"], "--sliding"),
    (["--crop-size", "64"], "--crop-size"),
    (["--protocol", "official-pooling", "--crop-size", "64"], "--crop-size"),
    (["--protocol", "official-sliding", "--crop-size", "0"], "--crop-size"),
    (["--protocol", "official-sliding", "--flip", "--no-flip"], "--no-flip"),
    (["--protocol", "eval.py"], "--protocol"),
    (["--protocol", "official-pooling", "--scales", "0.001"], "scale 0.001"),
])
def test_cli_rejects_bad_protocol_arguments(tmp_path, capsys, extra, match):
    ck = save_tiny_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(SystemExit) as err:
        main(["--checkpoint", ck, "--no-progress", *extra])
    assert err.value.code == 2 and match in capsys.readouterr().err
