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


# --------------------------------------------------------------------------- never destroy a user's files (issue 13)
def _scene(i, h=32, w=64):
    return generate_scene(0, i, h, w)[0]


def _run_exit(argv, capsys):
    """main(argv) must exit with status 2 and one line on stderr; returns that line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_infer_never_writes_onto_an_input(tmp_path, tiny_checkpoint, capsys):
    d = tmp_path / "d"
    d.mkdir()
    Image.fromarray(_scene(0)).save(d / "street.png")
    Image.fromarray(_scene(1)).save(d / "street_pred.png")
    before = (d / "street_pred.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        err = _run_exit([str(d / "street.png"), str(d / "street_pred.png"), "--checkpoint", tiny_checkpoint,
                         "--out", str(d), "--no-progress"] + extra, capsys)
        assert "street.png" in err and "would overwrite the input" in err and str(d / "street_pred.png") in err
        assert (d / "street_pred.png").read_bytes() == before
    # The shell's photos/*.png after a first run over the folder: the same refusal.
    main([str(d / "street.png"), "--checkpoint", tiny_checkpoint, "--out", str(tmp_path / "o"), "--no-progress"])
    assert sorted(p.name for p in d.iterdir()) == ["street.png", "street_pred.png"]


def test_infer_gives_every_input_its_own_outputs(tmp_path, tiny_checkpoint, capsys):
    names = ["a.png", "a.PNG", "b.jpg", "b.png", "b_jpg.png"]
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(_scene(i)).save(d / name, format="JPEG" if name.endswith(".jpg") else "PNG")
    paths = [str(d / n) for n in names]
    out = tmp_path / "out"
    stems = main(paths + ["--checkpoint", tiny_checkpoint, "--out", str(out), "--save-trainids", "--alpha", "0.5",
                          "--no-progress"])
    assert "wrote 5 prediction(s) (15 files)" in capsys.readouterr().out
    assert len({s.casefold() for s in stems}) == 5
    assert stems == ["a_png", "a_png_2", "b_jpg", "b_png", "b_jpg_2"]  # deterministic: numbered in input order
    assert len(list(out.iterdir())) == 15
    for path, stem in zip(paths, stems):
        # Each output set belongs to its own input: its overlay is drawn over that image.
        original = np.asarray(Image.open(path).convert("RGB"))
        ids = _read(str(out / stem) + "_trainids.png")
        np.testing.assert_array_equal(_read(str(out / stem) + "_overlay.png"), overlay(original, ids, 0.5))


def test_infer_replaces_earlier_outputs_only_with_overwrite(image_tree, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    common = [str(image_tree), "--checkpoint", tiny_checkpoint, "--out", str(out), "--no-progress"]
    stems = main(common)
    first = (out / (stems[0] + "_pred.png")).stat().st_mtime_ns
    err = _run_exit(common, capsys)
    assert "--overwrite" in err and "already exist" in err
    assert (out / (stems[0] + "_pred.png")).stat().st_mtime_ns == first
    assert main(common + ["--overwrite"]) == stems
    assert "wrote 4 prediction(s)" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["same", "above"])
def test_infer_out_at_or_above_the_input_folder_finds_the_images_not_its_outputs(image_tree, tiny_checkpoint, capsys,
                                                                                  where):
    out = image_tree if where == "same" else image_tree.parent
    common = [str(image_tree), "--checkpoint", tiny_checkpoint, "--out", str(out), "--no-progress"]
    stems = main(common)
    assert "wrote 4 prediction(s)" in capsys.readouterr().out
    # Second run over the same folder: the same four images, not the first run's outputs.
    assert main(common + ["--overwrite"]) == stems
    captured = capsys.readouterr()
    assert "wrote 4 prediction(s)" in captured.out
    if where == "same":
        assert "skipped 8 file(s) under --out" in captured.err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", "half"])
def test_infer_bad_checkpoint_file_is_one_line_error(tmp_path, tiny_checkpoint, capsys, content):
    Image.fromarray(_scene(0)).save(tmp_path / "x.png")
    bad = tmp_path / "bad.pt"
    data = open(tiny_checkpoint, "rb").read()
    bad.write_bytes(data[: len(data) // 2] if content == "half" else content)
    err = _run_exit([str(tmp_path / "x.png"), "--checkpoint", str(bad), "--out", str(tmp_path / "o"), "--no-progress"],
                    capsys)
    assert str(bad) in err and ("truncated" in err if content == "half" else "not a PyTorch checkpoint" in err)


def test_16_bit_and_float_images_read_as_the_8_bit_image(tmp_path, tiny_checkpoint):
    from hanet_fast.data import DatasetError, read_image
    grey = np.asarray(Image.fromarray(_scene(3)).convert("L"))
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "gf.tif")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    eight = read_image(str(tmp_path / "g8.png"))
    np.testing.assert_array_equal(read_image(str(tmp_path / "g16.png")), eight)
    np.testing.assert_array_equal(read_image(str(tmp_path / "gf.tif")), eight)
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "f255.tif")  # 0-255 floats: ambiguous, refused
    with pytest.raises(DatasetError, match=r"f255.tif is a float image with values outside \[0, 1\]"):
        read_image(str(tmp_path / "f255.tif"))
    # The network sees the same tensors, so the predictions are the same.
    out = tmp_path / "out"
    stems = main([str(tmp_path / "g8.png"), str(tmp_path / "g16.png"), "--checkpoint", tiny_checkpoint, "--out",
                  str(out), "--save-trainids", "--no-progress"])
    np.testing.assert_array_equal(_read(str(out / stems[0]) + "_trainids.png"),
                                  _read(str(out / stems[1]) + "_trainids.png"))


def test_check_outputs_and_error_exit_helpers(tmp_path, capsys):
    import argparse

    from hanet_fast._cli import check_outputs, error_exit
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.png").write_bytes(b"x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out: .*data set's folder"):
        check_outputs([str(tmp_path / "data" / "sub" / "y.png")], flag="--out", overwrite=True,
                      protected=[str(tmp_path / "data")])
    with pytest.raises(ValueError, match="A and B would both be written"):
        check_outputs([str(tmp_path / "o" / "y.png"), str(tmp_path / "o" / "Y.png")], flag="--out", overwrite=True,
                      owners=["A", "B"])
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_outputs([str(tmp_path / "file" / "m.json")], flag="--json", overwrite=True)
    with pytest.raises(ValueError, match="--overwrite"):
        check_outputs([str(tmp_path / "file")], flag="--json", overwrite=False)
    check_outputs([str(tmp_path / "file"), str(tmp_path / "new" / "z.png")], flag="--json", overwrite=True)
    with pytest.raises(ValueError, match="would overwrite the input"):  # a link to an input is the input
        (tmp_path / "link.png").symlink_to(tmp_path / "data" / "x.png")
        check_outputs([str(tmp_path / "link.png")], flag="--out", overwrite=True,
                      inputs=[str(tmp_path / "data" / "x.png")])
    # A DataLoader worker's error: only the original message is shown, on one line.
    parser = argparse.ArgumentParser(prog="tool")
    with pytest.raises(SystemExit):
        error_exit(parser, RuntimeError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback "
                                        "(most recent call last):\n  File ...\nhanet_fast.data.datasets.DatasetError: "
                                        "hanet_fast.data: cannot read image x.png"))
    assert capsys.readouterr().err == "tool: error: hanet_fast.data: cannot read image x.png\n"
