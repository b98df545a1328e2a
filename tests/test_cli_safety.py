"""Issue 21, the commands' side: no command writes onto a file it reads or through a link (item 2),
user photos are read upright and NaN weights are reported (item 3), bad values, crafted checkpoints
and Ctrl-C end in one line (item 4), and what the README promises (item 7)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model import save_tiny_checkpoint

from hanet_fast import evaluate, export, infer
from hanet_fast._cli import check_outputs
from hanet_fast.data import generate_scene, read_image
from hanet_fast.inference import load_model
from hanet_fast.models import DeepLabV3PlusHANet
from hanet_fast.models.official import to_official_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    save_tiny_checkpoint(folder / "checkpoint.pt")
    return folder


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "in" / "scene.png"
    path.parent.mkdir()
    Image.fromarray(generate_scene(0, 0, 32, 64)[0]).save(path)
    return path


def _one_line(tool, argv, capsys, status=2, usage=False) -> str:
    """``tool.main(argv)`` exits with ``status`` and one line on stderr (no traceback), after
    argparse's usage lines where ``usage`` (a bad flag value); returns that line."""
    with pytest.raises(SystemExit) as exc:
        tool.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == status, err
    lines = err.splitlines()
    assert "Traceback" not in err and (usage or len(lines) == 1), err
    return lines[-1]


# --------------------------------------------------------------------------- item 2: data loss
def test_evaluate_json_never_replaces_the_checkpoint_it_reads(run_folder, capsys):
    checkpoint = run_folder / "checkpoint.pt"
    before = checkpoint.read_bytes()
    for given in (run_folder, checkpoint):  # the run folder, or its file
        line = _one_line(evaluate, ["--checkpoint", str(given), "--json", str(checkpoint), "--overwrite",
                                    "--no-progress", "--workers", "0"], capsys)
        assert "--json" in line and "would overwrite the input" in line
    assert checkpoint.read_bytes() == before


def test_evaluate_json_never_replaces_a_ground_truth_label(run_folder, tmp_path, capsys):
    images, labels = tmp_path / "bdd" / "images" / "10k" / "val", tmp_path / "bdd" / "labels" / "sem_seg" / "masks" / "val"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    Image.fromarray(generate_scene(0, 0, 32, 64)[0]).save(images / "a.jpg")
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(labels / "a.png")
    before = (labels / "a.png").read_bytes()
    line = _one_line(evaluate, ["--checkpoint", str(run_folder), "--dataset", "bdd100k", "--data-root",
                                str(tmp_path / "bdd"), "--json", str(labels / "a.png"), "--overwrite", "--no-progress",
                                "--workers", "0"], capsys)
    assert "--json" in line and "data set's folder" in line
    assert (labels / "a.png").read_bytes() == before


def test_infer_never_writes_through_an_output_link(run_folder, photo, tmp_path, capsys):
    out, elsewhere = tmp_path / "out", tmp_path / "v"
    out.mkdir()
    elsewhere.mkdir()
    (out / "scene_pred.png").symlink_to("../v/new.png")  # dangling
    argv = [str(photo), "--checkpoint", str(run_folder), "--out", str(out), "--no-progress"]
    line = _one_line(infer, argv, capsys)
    assert "--overwrite" in line and not (elsewhere / "new.png").exists()
    keep = elsewhere / "keep.txt"
    keep.write_text("mine")
    (out / "scene_overlay.png").symlink_to("../v/keep.txt")
    infer.main(argv + ["--overwrite"])
    assert keep.read_text() == "mine" and not (elsewhere / "new.png").exists()
    for name in ("scene_pred.png", "scene_overlay.png"):  # the links were replaced by the outputs
        assert not (out / name).is_symlink() and Image.open(out / name).size == (64, 32)


def test_evaluate_outputs_replace_links_instead_of_following_them(run_folder, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    (tmp_path / "m.json").symlink_to(keep)
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "synthetic_val_000000.png").symlink_to(tmp_path / "nowhere.png")  # dangling
    assert evaluate.main(["--checkpoint", str(run_folder), "--synthetic-val", "1", "--json", str(tmp_path / "m.json"),
                          "--save-labelids", str(preds), "--overwrite", "--no-progress", "--workers", "0"]) == 0
    assert keep.read_text() == "mine" and not (tmp_path / "nowhere.png").exists()
    assert not (tmp_path / "m.json").is_symlink() and '"mIoU"' in (tmp_path / "m.json").read_text()
    assert not (preds / "synthetic_val_000000.png").is_symlink()


def test_export_never_writes_through_its_out_link(run_folder, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    out.symlink_to(tmp_path / "elsewhere.pt2")  # dangling
    line = _one_line(export, ["--checkpoint", str(run_folder), "--format", "pt2", "--size", "32x32", "--out",
                              str(out)], capsys)
    assert "--overwrite" in line and not (tmp_path / "elsewhere.pt2").exists()
    line = _one_line(export, ["--checkpoint", str(run_folder), "--format", "pt2", "--size", "32x32", "--out",
                              str(run_folder / "checkpoint.pt"), "--overwrite"], capsys)
    assert "would overwrite the input" in line


def test_check_outputs_refuses_a_folder_even_with_overwrite(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        check_outputs([str(tmp_path / "d")], flag="--json", overwrite=True)


def test_a_symlink_loop_as_out_is_named(run_folder, photo, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    line = _one_line(infer, [str(photo), "--checkpoint", str(run_folder), "--out", str(loop)], capsys)
    assert "symbolic link loop" in line
    line = _one_line(evaluate, ["--checkpoint", str(run_folder), "--json", str(loop / "m.json"), "--no-progress"],
                     capsys)
    assert "--json" in line and "symbolic link loop" in line


# --------------------------------------------------------------------------- item 3: silent wrong results
def test_infer_applies_exif_orientation_and_data_sets_do_not(run_folder, tmp_path):
    stored = generate_scene(0, 1, 32, 64)[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo = tmp_path / "in" / "phone.jpg"
    photo.parent.mkdir()
    Image.fromarray(stored).save(photo, exif=exif, quality=95)
    upright = read_image(str(photo), oriented=True)
    assert upright.shape == (64, 32, 3)
    assert read_image(str(photo)).shape == (32, 64, 3)  # as stored: data set images and their labels stay aligned
    np.testing.assert_array_equal(upright, np.rot90(read_image(str(photo)), k=-1))
    Image.fromarray(generate_scene(0, 2, 64, 32)[0]).save(tmp_path / "in" / "flat.png")
    infer.main([str(tmp_path / "in"), "--checkpoint", str(run_folder), "--out", str(tmp_path / "out"),
                "--batch-size", "2", "--no-progress"])
    assert Image.open(tmp_path / "out" / "phone_pred.png").size == (32, 64)  # (W, H): upright


def test_nan_weights_are_reported_by_name(run_folder, photo, tmp_path, capsys):
    obj = torch.load(run_folder / "checkpoint.pt", weights_only=True)
    name = "aspp.project.0.weight" if "aspp.project.0.weight" in obj["model"] else next(
        k for k in obj["model"] if k.endswith("weight"))
    obj["model"][name] = torch.full_like(obj["model"][name], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(obj, bad)
    with pytest.warns(UserWarning, match=rf"NaN or Inf in 1 tensor\(s\) \({name}\)"):
        load_model(bad)
    with pytest.warns(UserWarning, match=rf"the checkpoint {bad} holds NaN or Inf .*{name}"):
        infer.main([str(photo), "--checkpoint", str(bad), "--out", str(tmp_path / "o"), "--no-progress"])
    with pytest.warns(UserWarning, match=rf"the checkpoint {bad} holds NaN or Inf .*{name}"):
        assert evaluate.main(["--checkpoint", str(bad), "--synthetic-val", "1", "--no-progress", "--workers", "0"]) == 0
    # The commands show a warning as one line, without the library's file and source line.
    done = subprocess.run([sys.executable, "-m", "hanet_fast.infer", str(photo), "--checkpoint", str(bad), "--out",
                           str(tmp_path / "o2"), "--no-progress", "--threads", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0 and f"warning: hanet_fast.inference: the checkpoint {bad} holds NaN" in done.stderr
    assert "warnings.warn" not in done.stderr


# --------------------------------------------------------------------------- item 4: one line, not a traceback
@pytest.mark.parametrize("tool", ["infer", "evaluate"])
def test_ctrl_c_is_one_line_and_status_130(tool, run_folder, photo, tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DeepLabV3PlusHANet, "forward", interrupt)
    if tool == "infer":
        line = _one_line(infer, [str(photo), "--checkpoint", str(run_folder), "--out", str(tmp_path / "o"),
                                 "--no-progress"], capsys, status=130)
    else:
        line = _one_line(evaluate, ["--checkpoint", str(run_folder), "--synthetic-val", "1", "--no-progress",
                                    "--workers", "0"], capsys, status=130)
    assert "interrupted" in line


@pytest.mark.parametrize("extra, match", [
    (["--scales", "1e300"], "--scales"),
    (["--scales", "100"], "--scales"),
    (["--scales", "16", "--size", "4096x4096"], "--scales: scale 16"),
    (["--device", "meta"], "--device 'meta'"),
    (["--threads", "100000"], "--threads must be in 0..1024"),
    (["--window", "1x1", "--overlap", "0", "--size", "256x256"], "into 65536 windows"),
    (["--window", "16x16", "--overlap", "0.9999999", "--size", "1024x1024"], "--window: 16x16 windows"),
])
def test_infer_bounds_its_values(extra, match, run_folder, photo, tmp_path, capsys):
    line = _one_line(infer, [str(photo), "--checkpoint", str(run_folder), "--out", str(tmp_path / "o"), *extra],
                     capsys, usage=True)
    assert match in line
    assert not (tmp_path / "o").exists()


def test_many_windows_are_announced_with_their_count(run_folder, photo, tmp_path):
    # 24-pixel windows at stride floor(24 * 0.1) = 2: 5 offsets over 32 rows, 21 over 64 columns
    with pytest.warns(UserWarning, match="cuts the 32x64 images into 105 windows"):
        infer.main([str(photo), "--checkpoint", str(run_folder), "--out", str(tmp_path / "o"), "--window", "24x24",
                    "--overlap", "0.9", "--no-progress"])


def _crafted(run_folder, tmp_path, **changes):
    obj = torch.load(run_folder / "checkpoint.pt", weights_only=True)
    config = changes.pop("model_config", {})
    obj["model_config"] = {**obj["model_config"], **config}
    obj.update(changes)
    path = tmp_path / "crafted.pt"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("changes, match", [
    ({"model_config": {"num_classes": 10 ** 12}}, "num_classes must be an int in [1, 256], got 1000000000000"),
    ({"iteration": -5}, "invalid iteration -5"),
])
def test_crafted_checkpoints_are_one_line(changes, match, run_folder, photo, tmp_path, capsys):
    path = _crafted(run_folder, tmp_path, **changes)
    for tool, argv in ((infer, [str(photo), "--out", str(tmp_path / "o")]),
                       (evaluate, ["--synthetic-val", "1", "--workers", "0"])):
        line = _one_line(tool, ["--checkpoint", str(path), "--no-progress", *argv], capsys)
        assert match in line and str(path) in line


@pytest.mark.parametrize("command, match", [
    ("--arch network.deepv3.DeepMobileNetV3PlusD_HANet --exp 'unbalanced", "No closing quotation"),
    ("--arch network.deepv3.DeepMobileNetV3PlusD_HANet --dropout nan", "--dropout 'nan' is not a finite number"),
    ("--arch network.deepv3.DeepMobileNetV3PlusD_HANet --pos_rfactor eight", "--pos_rfactor 'eight' is not an integer"),
])
def test_official_checkpoint_with_a_bad_command_names_file_and_value(command, match, run_folder, tmp_path, capsys):
    model, _ = load_model(run_folder / "checkpoint.pt")
    path = tmp_path / "official.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in to_official_state_dict(model).items()},
                "command": command}, path)
    line = _one_line(evaluate, ["--checkpoint", str(path), "--synthetic-val", "1", "--no-progress"], capsys)
    assert match in line and str(path) in line


def test_infer_follows_linked_folders_once(run_folder, tmp_path):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    Image.fromarray(generate_scene(0, 0, 32, 64)[0]).save(photos / "a.png")
    Image.fromarray(generate_scene(0, 1, 32, 64)[0]).save(elsewhere / "b.png")
    (photos / "trip").symlink_to(elsewhere)
    (photos / "again").symlink_to(photos)  # a loop: adds nothing
    found = infer.find_images([str(photos)])
    assert found == [str(photos / "a.png"), str(photos / "trip" / "b.png")]


# --------------------------------------------------------------------------- item 7: README promises
def test_a_folder_of_runs_names_the_runs_inside_it(run_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("20260101-120000", "20260102-120000"):
        (runs / name).mkdir(parents=True)
        (runs / name / "checkpoint.pt").symlink_to(run_folder / "checkpoint.pt")
    line = _one_line(evaluate, ["--checkpoint", str(runs), "--no-progress"], capsys)
    assert str(runs / "20260101-120000") in line and str(runs / "20260102-120000") in line


@pytest.mark.parametrize("argv, match", [
    (["--device", "bogus"], "--device"),
    (["--out", "FILE"], "--out"),
])
def test_benchmarks_run_bad_arguments_are_one_line(argv, match, tmp_path):
    (tmp_path / "FILE").write_text("x")
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--smoke", *argv],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    err = done.stderr.strip()
    assert done.returncode == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("run.py: error: " + match)


def test_readme_infer_example_runs_verbatim(tmp_path):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        block = re.search(r"^### Segment images\n\n```bash\n(.*?)^```", f.read(), re.S | re.M).group(1)
    run = tmp_path / "run"
    run.mkdir()
    save_tiny_checkpoint(run / "checkpoint.pt")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", "-e", "-c", block.replace("runs/<run>", str(run))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for k in range(4):
        for end in ("_pred.png", "_overlay.png", "_labelids.png", "_attention.npz"):
            assert (run / "predictions" / f"scene{k}{end}").is_file()


def test_analyze_replaces_output_links_instead_of_following_them(tmp_path, capsys):
    from hanet_fast import analyze

    out, elsewhere = tmp_path / "out", tmp_path / "v"
    out.mkdir()
    elsewhere.mkdir()
    keep = elsewhere / "keep.txt"
    keep.write_text("mine")
    (out / analyze.STATISTICS).symlink_to(keep)
    (out / analyze.TABLE1).symlink_to(elsewhere / "new.txt")  # dangling
    argv = ["--synthetic-count", "2", "--synthetic-size", "32x64", "--out", str(out), "--no-progress"]
    assert "--overwrite" in _one_line(analyze, argv, capsys)
    analyze.main(argv + ["--overwrite"])
    assert keep.read_text() == "mine" and not (elsewhere / "new.txt").exists()
    assert not (out / analyze.STATISTICS).is_symlink() and '"dataset"' in (out / analyze.STATISTICS).read_text()
