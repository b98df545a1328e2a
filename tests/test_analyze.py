"""hanet_fast.analysis / python -m hanet_fast.analyze: Table 1 statistics on a hand-made label
set (answers worked out by hand below), the figures, and the CLI on tiny synthetic data with a
tiny checkpoint."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image
from tiny_model import save_tiny_checkpoint

from hanet_fast.analysis import ClassDistribution, entropy, format_table1, region_of_rows
from hanet_fast.analysis.figures import attention_distribution_figure, class_distribution_figure, height_width_figure
from hanet_fast.analyze import build_parser, main
from hanet_fast.training.visualize import seriate_channels

pytestmark = pytest.mark.usefixtures("one_thread")

ROAD, SIDEWALK, BUILDING, VEG, SKY, CAR, X = 0, 1, 2, 8, 10, 13, 255

# Three label maps; the 6-row maps have thirds of two rows each, the 3-row map one row each.
M1 = [[SKY, SKY, SKY, SKY],
      [SKY, SKY, SKY, X],
      [BUILDING, BUILDING, CAR, CAR],
      [BUILDING, BUILDING, CAR, CAR],
      [ROAD, ROAD, ROAD, ROAD],
      [ROAD, ROAD, ROAD, ROAD]]
M2 = [[SKY, SKY, BUILDING, BUILDING],
      [SKY, SKY, BUILDING, BUILDING],
      [ROAD, ROAD, ROAD, ROAD],
      [ROAD, ROAD, ROAD, ROAD],
      [ROAD, ROAD, ROAD, SIDEWALK],
      [ROAD, ROAD, ROAD, SIDEWALK]]
M3 = [[VEG, VEG],
      [X, X],
      [ROAD, SIDEWALK]]
MASKS = [np.array(m, dtype=np.uint8) for m in (M1, M2, M3)]

# By hand: upper = sky 7+4, building 4, vegetation 2 (1 ignore); middle = building 4, car 4,
# road 8 (2 ignore); lower = road 8+6+1, sidewalk 2+1.
UPPER = {SKY: 11, BUILDING: 4, VEG: 2}
MIDDLE = {ROAD: 8, BUILDING: 4, CAR: 4}
LOWER = {ROAD: 15, SIDEWALK: 3}
IMAGE = {ROAD: 23, SKY: 11, BUILDING: 8, CAR: 4, SIDEWALK: 3, VEG: 2}


def _h(counts: dict) -> float:
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def _dist(bins: int = 3) -> ClassDistribution:
    return ClassDistribution(19, bins).update(iter(MASKS))


def test_entropy_is_eq1_in_nats():
    assert entropy([0.5, 0.5, 0.0]) == pytest.approx(math.log(2))
    assert entropy([1.0, 0.0]) == 0.0
    assert entropy(np.full(19, 1 / 19)) == pytest.approx(math.log(19))


def test_regions_split_rows_in_thirds():
    assert region_of_rows(6).tolist() == [0, 0, 1, 1, 2, 2]
    assert region_of_rows(3).tolist() == [0, 1, 2]
    assert region_of_rows(4).tolist() == [0, 0, 1, 2]


def test_table1_on_hand_made_labels():
    d = _dist()
    t = d.table1()
    for region, counts in (("image", IMAGE), ("upper", UPPER), ("middle", MIDDLE), ("lower", LOWER)):
        n = sum(counts.values())
        expected = np.zeros(19)
        for c, k in counts.items():
            expected[c] = k / n
        np.testing.assert_allclose(t.probabilities[region], expected, err_msg=region)
        assert t.entropies[region] == pytest.approx(_h(counts)), region
        assert t.labelled_pixels[region] == n
    assert t.entropies["middle"] == pytest.approx(1.5 * math.log(2))
    assert t.mean_region_entropy == pytest.approx((_h(UPPER) + _h(MIDDLE) + _h(LOWER)) / 3)
    assert t.region_conditional_entropy == pytest.approx((17 * _h(UPPER) + 16 * _h(MIDDLE) + 18 * _h(LOWER)) / 51)
    # Top-5 by probability; ties (building = car in the middle) in trainId order; the 6th class
    # of the image (vegetation) is left out, and absent classes never appear.
    assert [c for c, _ in t.top5["image"]] == [ROAD, SKY, BUILDING, CAR, SIDEWALK]
    assert [c for c, _ in t.top5["middle"]] == [ROAD, BUILDING, CAR]
    assert [c for c, _ in t.top5["upper"]] == [SKY, BUILDING, VEG]
    assert t.top5["lower"] == [(ROAD, pytest.approx(15 / 18)), (SIDEWALK, pytest.approx(3 / 18))]
    # Ignore pixels are counted apart: 1 in the upper third, 2 in the middle.
    assert d.counts("upper")[-1] == 1 and d.counts("middle")[-1] == 2 and d.counts("lower")[-1] == 0
    np.testing.assert_allclose(d.pixels_per_image("image")[ROAD], 23 / 3)


def test_position_grids_and_streaming():
    d = _dist(bins=3)
    # With 3 height bins every map's rows fall into its thirds.
    np.testing.assert_array_equal(d.row_counts, d.region_counts)
    w = ClassDistribution(19, 2).update(iter(MASKS))
    # Width bins of M1/M2 are columns 0-1 and 2-3, of M3 column 0 and 1.
    assert w.col_counts[1, CAR] == 4 and w.col_counts[0, CAR] == 0
    assert w.col_counts[0, VEG] == 1 and w.col_counts[1, VEG] == 1
    assert w.col_counts[:, -1].tolist() == [1, 2]
    np.testing.assert_allclose(d.height_distribution().sum(1), 1.0)
    np.testing.assert_allclose(d.class_profiles("height")[:, ROAD], [0, 8 / 23, 15 / 23])
    # Height tells the class more than width does here.
    assert d.positional_information("height") > w.positional_information("width") >= 0
    # Accumulating in parts and merging gives the same counts.
    parts = ClassDistribution(19, 3).update(MASKS[:1]).merge(ClassDistribution(19, 3).update(MASKS[1:]))
    np.testing.assert_array_equal(parts.row_counts, d.row_counts)
    assert parts.images == 3
    with pytest.raises(ValueError, match="label map"):
        d.add(np.zeros((2, 2, 2)))
    # Negative and out-of-range values count as ignore pixels.
    e = ClassDistribution(19, 3)
    e.add(np.array([[-1, 0], [19, 1], [255, 1]], dtype=np.int16))
    assert e.counts("image")[-1] == 3 and e.counts("image")[:19].sum() == 3


def test_format_table1_prints_probabilities_entropies_and_top5():
    text = format_table1(_dist(), paper=True)
    lines = text.splitlines()
    middle = next(line for line in lines if line.startswith("Middle"))
    assert "50.0" in middle and "25.0" in middle and f"{1.5 * math.log(2):.2f}" in middle
    assert "(paper)" in text and "1.84" in text
    assert f"{(_h(UPPER) + _h(MIDDLE) + _h(LOWER)) / 3:.2f} nats" in text
    assert "Lower   road 83.3, sidewalk 16.7" in text


def test_seriation_orders_channels_by_height():
    rows = 8
    a = np.zeros((4, rows))
    a[0, 6:] = 1  # bottom
    a[1, :2] = 1  # top
    a[2, 3:5] = 1  # middle
    a[3, 0] = 0.5  # top too, but a weaker peak than channel 1's
    assert seriate_channels(a).tolist() == [1, 3, 2, 0]


def _png_ok(path):
    assert os.path.getsize(path) > 0, path
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"


def test_figures_are_written(tmp_path):
    d = _dist()
    class_distribution_figure(d, str(tmp_path / "f1.png"))
    height_width_figure(d, str(tmp_path / "f10.png"))
    attention_distribution_figure(d, {"L5": np.random.rand(19, 4), "L4": np.random.rand(7, 4)}, str(tmp_path / "f7.png"))
    for name in ("f1.png", "f10.png", "f7.png"):
        _png_ok(tmp_path / name)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")


TINY = ["--synthetic-count", "4", "--synthetic-size", "32x64", "--bins", "8", "--no-progress"]


def test_cli_on_tiny_synthetic_data_with_checkpoint(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "an"
    report = main(TINY + ["--out", str(out), "--checkpoint", tiny_checkpoint, "--attention-images", "2", "--sample", "1"])
    printed = capsys.readouterr().out
    assert "Given" in printed and "Upper" in printed and "Top-5 classes per region" in printed
    for name in ("fig1_class_distribution.png", "fig10_height_vs_width.png", "fig5_attention.png",
                 "fig7_attention_vs_distribution.png"):
        _png_ok(out / name)
    assert (out / "table1.txt").read_text().strip() in printed
    saved = json.loads((out / "statistics.json").read_text())
    assert saved["images"] == 4 and saved["bins"] == 8 and saved == json.loads(json.dumps(report))
    # The JSON's numbers are those of the label maps themselves.
    from hanet_fast.data import SyntheticUrbanScenes
    ds = SyntheticUrbanScenes("train", 4, (32, 64))
    d = ClassDistribution(19, 8).update(ds.load_mask(i) for i in range(4))
    assert saved["table1"]["entropy"]["image"] == pytest.approx(d.table1().entropies["image"])
    assert saved["row_counts"] == d.row_counts.tolist()
    arrays = np.load(out / "attention_maps.npz")
    assert sorted(arrays.files) == sorted(f"{k}_{n}" for k in ("sample", "mean") for n in ("L1", "L4", "L5"))
    assert arrays["mean_L5"].shape == (19, 4) and ((arrays["mean_L5"] > 0) & (arrays["mean_L5"] < 1)).all()
    assert saved["attention"]["sample"] == 1 and saved["attention"]["mean_over_images"] == 2


def test_cli_on_label_folder(tmp_path, capsys):
    root = tmp_path / "labels" / "sub"
    root.mkdir(parents=True)
    for i, m in enumerate(MASKS):
        Image.fromarray(m).save(root / f"m{i}.png")
    report = main(["--dataset", "folder", "--data-root", str(tmp_path / "labels"), "--bins", "3", "--no-progress",
                   "--out", str(tmp_path / "out")])
    assert report["images"] == 3
    assert report["table1"]["entropy"]["middle"] == pytest.approx(1.5 * math.log(2))
    assert report["table1"]["mean_region_entropy"] == pytest.approx((_h(UPPER) + _h(MIDDLE) + _h(LOWER)) / 3)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "cityscapes"], "needs --data-root"),
    (["--bins", "0"], "--bins must be >= 1"),
    (["--dataset", "folder", "--data-root", "/nonexistent/labels"], "label folder not found: /nonexistent/labels"),
    (["--dataset", "cityscapes", "--data-root", "/nonexistent/cs"], "not found"),
    (["--synthetic-size", "0x5"], "expected HxW"),
])
def test_cli_errors_name_the_problem(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path), "--no-progress"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_sample_out_of_range_and_bad_checkpoint(tmp_path, tiny_checkpoint, capsys):
    with pytest.raises(SystemExit):
        main(TINY + ["--out", str(tmp_path), "--checkpoint", tiny_checkpoint, "--sample", "9"])
    assert "--sample 9 is out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(TINY + ["--out", str(tmp_path), "--checkpoint", str(tmp_path / "missing.pt")])
    assert "missing.pt" in capsys.readouterr().err


def test_every_flag_has_help():
    for action in build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings


# --------------------------------------------------------------------------- files and errors (issue 13)
def _label_folder(root, masks=MASKS):
    root.mkdir(parents=True)
    for i, m in enumerate(masks):
        Image.fromarray(m).save(root / f"m{i}.png")
    return root


def _exit_line(argv, capsys):
    """main(argv) must exit with status 2 and one line on stderr; returns (that line, stdout)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert "\n" not in line and "Traceback" not in line, line
    return line, captured.out


def test_cli_out_in_the_label_folder_is_refused_and_files_are_kept(tmp_path, capsys):
    labels = _label_folder(tmp_path / "labels")
    common = ["--dataset", "folder", "--data-root", str(labels), "--bins", "3", "--no-progress"]
    for out in (labels, labels / "figures"):
        line, _ = _exit_line(common + ["--out", str(out), "--overwrite"], capsys)
        assert "--out" in line and "data set's folder" in line
    assert sorted(os.listdir(labels)) == ["m0.png", "m1.png", "m2.png"]
    out = tmp_path / "out"
    main(common + ["--out", str(out)])
    (out / "table1.txt").write_text("my notes")
    line, _ = _exit_line(common + ["--out", str(out)], capsys)
    assert "--overwrite" in line and (out / "table1.txt").read_text() == "my notes"
    main(common + ["--out", str(out), "--overwrite"])
    assert (out / "table1.txt").read_text().startswith("Table 1")


def test_cli_label_id_maps_without_label_ids_are_refused(tmp_path, capsys):
    from hanet_fast.data import label_to_train_lut
    # Cityscapes labelIds of the hand-made maps (road 7, sky 23, building 11, car 26, ...).
    to_label = {t: i for i, t in enumerate(label_to_train_lut()) if t != 255}
    to_label[255] = 0
    labels = _label_folder(tmp_path / "ids", [np.vectorize(to_label.get)(m).astype(np.uint8) for m in MASKS])
    common = ["--dataset", "folder", "--data-root", str(labels), "--bins", "3", "--no-progress"]
    line, out = _exit_line(common + ["--out", str(tmp_path / "a")], capsys)
    assert "--label-ids" in line and "m0.png" in line and "Table 1" not in out
    report = main(common + ["--out", str(tmp_path / "b"), "--label-ids"])
    assert report["table1"]["mean_region_entropy"] == pytest.approx((_h(UPPER) + _h(MIDDLE) + _h(LOWER)) / 3)
    # Like real Cityscapes maps, M2's labelIds are mostly road (7) and building (11): 4 of 24 pixels >= 19.
    m2 = _label_folder(tmp_path / "m2", [np.vectorize(to_label.get)(MASKS[1]).astype(np.uint8)])
    line, _ = _exit_line(["--dataset", "folder", "--data-root", str(m2), "--no-progress", "--out",
                          str(tmp_path / "c")], capsys)
    assert "17% of its labelled pixels" in line and "--label-ids" in line
    # A stray value in a trainId map is counted as ignored, and said so.
    stray = MASKS[1].copy()
    stray[0, 0] = 200
    folder = _label_folder(tmp_path / "stray", [stray])
    report = main(["--dataset", "folder", "--data-root", str(folder), "--no-progress", "--out", str(tmp_path / "d")])
    assert report["images"] == 1 and "1 pixels in 1 map(s) hold values 19-254" in capsys.readouterr().err


def test_cli_bad_checkpoint_is_reported_before_the_statistics(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "bad.pt"
    data = open(tiny_checkpoint, "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    for ck in (tmp_path / "missing.pt", bad):
        line, out = _exit_line(TINY + ["--out", str(tmp_path / "an"), "--checkpoint", str(ck)], capsys)
        assert str(ck) in line and "Table 1" not in out
        assert not (tmp_path / "an").exists()
