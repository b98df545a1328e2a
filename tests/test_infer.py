"""python -m hanet_fast.infer: output naming (mirrored folders, same stems), batching by size,
the files written on tiny images with a tiny checkpoint, and errors naming the problem."""

import numpy as np
import pytest
from PIL import Image
from tiny_model import save_tiny_checkpoint

from hanet_fast.data import PALETTE, generate_scene
from hanet_fast.data.labels import train_to_label_lut
from hanet_fast.infer import _batches, build_parser, find_images, main, output_stems
from hanet_fast.training.visualize import overlay

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")


@pytest.fixture
def image_tree(tmp_path):
    """in/a/x.png (32x64), in/b/x.png (48x64), in/a/y.png and in/a/y.jpg (32x64)."""
    files = {"a/x.png": 32, "b/x.png": 48, "a/y.png": 32, "a/y.jpg": 32}
    for i, (rel, h) in enumerate(files.items()):
        path = tmp_path / "in" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(generate_scene(0, i, h, 64)[0]).save(path)
    return tmp_path / "in"


def test_output_stems_mirror_folders_and_keep_same_stems_apart(image_tree):
    paths = find_images([str(image_tree), str(image_tree / "a" / "x.png")])  # the duplicate is dropped
    assert len(paths) == 4
    stems = output_stems(paths)
    assert sorted(stems) == sorted(["a/x", "b/x", "a/y_png", "a/y_jpg"])
    # Under the output folder, files named like outputs are skipped (earlier runs' outputs), images are not.
    Image.new("RGB", (8, 8)).save(image_tree / "a" / "x_pred.png")
    skipped = []
    assert find_images([str(image_tree)], exclude=str(image_tree / "a"), skipped=skipped) == paths
    assert skipped == [str(image_tree / "a" / "x_pred.png")]
    assert len(find_images([str(image_tree)], exclude=str(image_tree / "b"))) == 5
    # One file alone: just its stem.
    assert output_stems([str(image_tree / "b" / "x.png")]) == ["x"]


def test_batches_hold_same_size_images_only(image_tree):
    paths = find_images([str(image_tree)])
    sizes = [Image.open(p).size for p in paths]
    batches = _batches(paths, None, 2)
    assert sorted(i for b in batches for i in b) == list(range(len(paths)))
    for b in batches:
        assert len(b) <= 2 and len({sizes[i] for i in b}) == 1
    assert [len(b) for b in _batches(paths, (16, 32), 3)] == [3, 1]  # one size after --size


def _read(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def test_cli_writes_every_output(image_tree, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    stems = main([str(image_tree), "--checkpoint", tiny_checkpoint, "--out", str(out), "--batch-size", "2",
                  "--save-trainids", "--save-labelids", "--attention", "--alpha", "0.4", "--no-progress"])
    assert "wrote 4 prediction(s)" in capsys.readouterr().out
    to_label = train_to_label_lut()
    paths = find_images([str(image_tree)])
    assert stems == output_stems(paths)
    for src, stem in zip(paths, stems):
        original = np.asarray(Image.open(src).convert("RGB"))
        base = str(out / stem)
        pred = _read(base + "_pred.png")
        ids = _read(base + "_trainids.png")
        assert ids.shape == original.shape[:2] and ids.max() < 19
        np.testing.assert_array_equal(pred, PALETTE[ids])
        np.testing.assert_array_equal(_read(base + "_labelids.png"), to_label[ids])
        np.testing.assert_array_equal(_read(base + "_overlay.png"), overlay(original, ids, 0.4))
        maps = np.load(base + "_attention.npz")
        assert sorted(maps.files) == ["L1", "L4", "L5"] and maps["L5"].shape == (19, 4)
        _read(base + "_attention.png")


def test_batching_and_resizing_do_not_change_predictions(image_tree, tmp_path, tiny_checkpoint):
    one, two = tmp_path / "one", tmp_path / "two"
    common = [str(image_tree), "--checkpoint", tiny_checkpoint, "--save-trainids", "--no-progress"]
    stems = main(common + ["--out", str(one)])
    main(common + ["--out", str(two), "--batch-size", "3"])
    for stem in stems:
        np.testing.assert_array_equal(_read(str(one / stem) + "_trainids.png"), _read(str(two / stem) + "_trainids.png"))
    resized = tmp_path / "resized"
    main(common + ["--out", str(resized), "--size", "16x32", "--scales", "1,1.5", "--flip"])
    assert _read(str(resized / "b/x") + "_trainids.png").shape == (48, 64)  # back at the image's own size


@pytest.mark.parametrize("make, extra, message", [
    (lambda d: (d / "empty").mkdir(), [], "no images"),
    (lambda d: None, [], "input not found"),
    (lambda d: (d / "bad.png").write_bytes(b"not a png"), [], "bad.png"),
    (lambda d: (d / "notes.txt").write_text("x"), [], "is not an image file"),
    (lambda d: Image.new("RGB", (8, 8)).save(d / "ok.png"), ["--alpha", "2"], "--alpha must be in [0, 1]"),
    (lambda d: Image.new("RGB", (8, 8)).save(d / "ok.png"), ["--batch-size", "0"], "--batch-size must be >= 1"),
    (lambda d: Image.new("RGB", (8, 8)).save(d / "ok.png"), ["--scales", "1,-2"], "positive numbers"),
])
def test_cli_errors_name_the_problem(tmp_path, tiny_checkpoint, capsys, make, extra, message):
    make(tmp_path)
    target = next((str(p) for p in sorted(tmp_path.iterdir())), str(tmp_path / "missing.png"))
    with pytest.raises(SystemExit) as e:
        main([target, "--checkpoint", tiny_checkpoint, "--out", str(tmp_path / "out"), "--no-progress"] + extra)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_needs_a_checkpoint_that_exists(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "ok.png"), "--out", str(tmp_path / "out")])
    assert "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "ok.png"), "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")])
    assert "nope.pt" in capsys.readouterr().err


def test_every_flag_has_help():
    for action in build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
