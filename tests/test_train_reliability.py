"""hanet_fast.train refuses what would lose data or crash: run folders, --resume, bad values, bad
labels, and checkpoint writes that fail (issue 13)."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hanet_fast import _io
from hanet_fast.data import BDD100K, DatasetError
from hanet_fast.data.sampling import default_cache_dir
from hanet_fast.train import main, resolve_args
from hanet_fast.training import checkpoint as ckpt_io

from test_train import TINY
from tiny_model import save_tiny_checkpoint


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _exit(capsys, argv, status=2) -> str:
    """Run the CLI in-process; its one-line error (after asserting the exit status)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == status
    return _error_line(capsys)


@pytest.mark.parametrize("argv, flag", [
    (["--log-every", "0"], "--log-every"),
    (["--val-every", "-1"], "--val-every"),
    (["--ckpt-every", "-2"], "--ckpt-every"),
    (["--val-limit", "-1"], "--val-limit"),
    (["--stop-after", "-1"], "--stop-after"),
    (["--class-uniform-pct", "1.5"], "--class-uniform-pct"),
    (["--class-uniform-pct", "-0.1"], "--class-uniform-pct"),
    (["--baseline", "--hanet-layers", "1,1,1,1,0"], "--baseline"),
    (["--scale-min", "2", "--scale-max", "1"], "--scale-min"),
    (["--scale-min", "0"], "--scale-min"),
    (["--threads", "-1"], "--threads"),
    (["--workers", "-1"], "--workers"),
    (["--batch-size", "1"], "--batch-size"),
    (["--device", "tpu"], "--device"),
    pytest.param(["--device", "cuda"], "--device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
])
def test_bad_values_are_one_line_errors(tmp_path, capsys, argv, flag):
    line = _exit(capsys, TINY + ["--iters", "1", "--out", str(tmp_path / "run")] + argv)
    assert flag in line
    assert not (tmp_path / "run").exists()


def test_batch_size_one_says_why(capsys):
    assert "BatchNorm" in _exit(capsys, ["--batch-size", "1"])


def _fake_checkpoint(path, iteration=1, **args):
    """What --resume reads first (the settings), without training for it."""
    saved = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(resolve_args(TINY + ["--iters", "4"])).items()}
    saved.update(args)
    torch.save({"iteration": iteration, "model": {}, "optimizer": {}, "scheduler": {}, "rng": {}, "args": saved}, path)
    return path


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path / "checkpoint.pt")
    before = ckpt.read_bytes()
    line = _exit(capsys, ["--resume", str(ckpt), "--iters", "8", "--lr", "0.5", "--batch-size", "4",
                          "--backbone", "resnet50", "--crop-size", "32,64", "--workers", "0", "--data-root", "/moved"])
    for flag in ("--lr 0.5", "--batch-size 4", "--backbone resnet50"):
        assert flag in line
    # --iters may grow, --workers and --data-root may change, and a flag equal to the run's
    # setting is no change.
    for flag in ("--iters", "--workers", "--data-root", "--crop-size"):
        assert flag not in line
    assert ckpt.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
    line = _exit(capsys, ["--resume", str(_fake_checkpoint(tmp_path / "checkpoint.pt", iteration=3)), "--iters", "2"])
    assert "--iters 2" in line and "3" in line


@pytest.mark.parametrize("kind", ["text", "official", "weights-only", "truncated", "missing"])
def test_resume_of_a_file_that_is_not_a_training_checkpoint(tmp_path, capsys, kind):
    path = tmp_path / "snapshot.pth"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "official":  # official HANet snapshots hold numpy scalars (and argparse objects)
        torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": np.int64(3), "mean_iu": np.float64(0.5)}, path)
    elif kind == "weights-only":
        torch.save({"model": {"w": torch.zeros(1)}}, path)
    elif kind == "truncated":
        _fake_checkpoint(path)
        path.write_bytes(path.read_bytes()[:200])
    line = _exit(capsys, ["--resume", str(path)])
    assert "--resume" in line and str(path) in line


def test_nonempty_run_folder_is_refused_and_overwrite_replaces_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "tb").mkdir(parents=True)
    (out / "checkpoint.pt").write_bytes(b"an earlier run's weights")
    (out / "tb" / "events.out.tfevents.1.host.1.0").write_bytes(b"old events")
    (out / "notes.txt").write_text("mine")
    argv = TINY + ["--iters", "1", "--workers", "0", "--out", str(out)]
    line = _exit(capsys, argv)
    assert "--out" in line and "--overwrite" in line and "--resume" in line
    assert (out / "checkpoint.pt").read_bytes() == b"an earlier run's weights"
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "notes.txt", "tb"]
    main(argv + ["--overwrite"])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 1
    assert (out / "notes.txt").read_text() == "mine"  # not the run's: kept
    assert "events.out.tfevents.1.host.1.0" not in os.listdir(out / "tb")  # the old run's events: gone


def test_default_run_folders_never_collide(tmp_path):
    from hanet_fast.training.run_folder import create_run_folder

    first = create_run_folder("20260101-120000", str(tmp_path))
    second = create_run_folder("20260101-120000", str(tmp_path))
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    assert os.listdir(first) == os.listdir(second) == []


def test_nothing_is_written_before_the_data_and_model_are_checked(tmp_path, capsys):
    out = tmp_path / "run"
    line = _exit(capsys, ["--dataset", "bdd100k", "--data-root", str(tmp_path / "missing"), "--out", str(out)])
    assert str(tmp_path / "missing") in line
    line = _exit(capsys, TINY + ["--backbone", "resnet51", "--out", str(out)])
    assert "resnet51" in line
    assert not out.exists()


def test_resume_applies_and_logs_the_mutable_flags(tmp_path, capsys):
    out = tmp_path / "run"
    main(TINY + ["--iters", "1", "--workers", "0", "--class-uniform-pct", "0", "--out", str(out)])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="2 threads where the run used 1"):
        main(["--resume", str(out), "--iters", "2", "--log-every", "5", "--threads", "2"])
    log = capsys.readouterr().out
    assert "--iters 2 (was 1)" in log and "--log-every 5 (was 10)" in log
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 2 and ckpt["args"]["iters"] == 2 and ckpt["threads"] == 2
    assert json.load(open(out / "args.json"))["iters"] == 2
    torch.set_num_threads(1)


def _bdd_tree(root, values):
    for split in ("train",):
        (root / "images" / "10k" / split).mkdir(parents=True)
        (root / "labels" / "sem_seg" / "masks" / split).mkdir(parents=True)
        for name, v in values.items():
            Image.fromarray(np.full((48, 96, 3), 90, np.uint8)).save(root / "images" / "10k" / split / f"{name}.jpg")
            mask = np.zeros((48, 96), np.uint8)
            mask[:, 48:] = 255
            mask[:8, :8] = v
            Image.fromarray(mask).save(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png")
    return root


def test_bdd100k_labels_outside_the_train_ids_name_the_file(tmp_path, capsys):
    root = _bdd_tree(tmp_path / "bdd", {"a": 18, "b": 100})
    ds = BDD100K(str(root), "train")
    assert ds[0]["mask"].max() == 255  # 0..18 and 255 are fine
    bad = str(root / "labels" / "sem_seg" / "masks" / "train" / "b.png")
    for load in (lambda: ds[1], lambda: ds.load_mask(1)):
        with pytest.raises(DatasetError, match="100") as exc:
            load()
        assert bad in str(exc.value)
    # train: the error reaches the command line from a DataLoader worker, in one line
    line = _exit(capsys, TINY + ["--dataset", "bdd100k", "--data-root", str(root), "--val-split", "train",
                                 "--class-uniform-pct", "0", "--iters", "2", "--workers", "1",
                                 "--out", str(tmp_path / "run")])
    assert bad in line
    # evaluate: the same check in the data set loader
    from hanet_fast.evaluate import main as evaluate_main
    try:
        evaluate_main(["--checkpoint", save_tiny_checkpoint(tmp_path / "model.pt"), "--dataset", "bdd100k", "--data-root", str(root),
                       "--split", "train", "--workers", "0", "--no-progress"])
    except DatasetError as e:
        message = str(e)
    except SystemExit as e:  # once evaluate reports data errors in one line itself
        assert e.code == 2
        message = _error_line(capsys)
    else:
        pytest.fail("evaluate accepted a label map with value 100")
    assert bad in message


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fill_disk(monkeypatch, room=2000):
    monkeypatch.setattr(_io, "open", lambda path, mode="r", **kw: _FullDisk(open(path, mode, **kw), room), raising=False)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    old = {"iteration": 1, "w": torch.arange(10000.0)}
    ckpt_io.save_atomic(old, str(path))
    _fill_disk(monkeypatch)
    with pytest.raises(ckpt_io.CheckpointError, match="no space left on device") as exc:
        ckpt_io.save_atomic({"iteration": 2, "w": torch.zeros(10000)}, str(path))
    assert str(path) in str(exc.value)
    kept = torch.load(path, weights_only=True)
    assert kept["iteration"] == 1 and torch.equal(kept["w"], old["w"])
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary left


def test_full_disk_during_training_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    _fill_disk(monkeypatch)
    out = tmp_path / "run"
    line = _exit(capsys, TINY + ["--iters", "1", "--workers", "0", "--class-uniform-pct", "0", "--out", str(out)],
                 status=1)
    assert "no space left on device" in line and str(out / "checkpoint.pt") in line


def test_stale_checkpoint_temporaries_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    path = tmp_path / "checkpoint.pt"
    for pid in (dead, os.getpid(), os.getppid()):  # killed; writing now; another live process
        (tmp_path / f".checkpoint.pt.tmp{pid}").write_bytes(b"partial")
    assert ckpt_io.remove_stale_temporaries(str(path)) == [str(tmp_path / f".checkpoint.pt.tmp{dead}")]
    assert sorted(os.listdir(tmp_path)) == sorted(f".checkpoint.pt.tmp{p}" for p in (os.getpid(), os.getppid()))


def test_tests_keep_the_class_centroid_cache_in_a_temporary_folder(tmp_path_factory):
    cache = os.path.realpath(default_cache_dir())
    assert cache.startswith(os.path.realpath(tmp_path_factory.getbasetemp()))
    assert os.environ["HANET_FAST_CACHE"] == default_cache_dir()
