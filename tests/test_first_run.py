"""What a new user meets first: help texts, where infer / analyze write, the figures of a run
(predictions.png titles and legend), and ``--compile`` runs whose checkpoints load eagerly."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hanet_fast._cli import compile_model, default_out
from hanet_fast.data.labels import PALETTE
from hanet_fast.inference import load_model
from hanet_fast.training.visualize import class_legend, prediction_grid
from tiny_model import save_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIS = ("train", "evaluate", "infer", "analyze", "export")


@pytest.mark.parametrize("name", CLIS)
def test_help_uses_one_size_form_and_one_default_per_flag(name):
    parser = importlib.import_module(f"hanet_fast.{name}").build_parser()
    text = parser.format_help()
    assert "H,W" not in text
    parser.epilog = None  # train's preset table marks its default preset; only the flags count here
    flat = " ".join(parser.format_help().split())
    for entry in flat.split(" --")[1:]:
        assert entry.count("(default") <= 1, entry


@pytest.mark.parametrize("name", ("train", "evaluate", "infer"))
def test_compile_flag_in_the_three_clis(name, capsys):
    parser = importlib.import_module(f"hanet_fast.{name}").build_parser()
    assert "--compile [BACKEND]" in parser.format_help()
    required = {"train": [], "evaluate": ["--checkpoint", "x"], "infer": ["x.png", "--checkpoint", "x"]}[name]
    assert parser.parse_args(required).compile is None
    assert parser.parse_args(required + ["--compile"]).compile == "inductor"
    assert parser.parse_args(required + ["--compile", "aot_eager"]).compile == "aot_eager"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(required + ["--compile", "no_such_backend"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--compile" in err and "no_such_backend" in err


def test_default_out_is_a_subfolder_of_a_run_folder(tmp_path):
    assert default_out(None, str(tmp_path), "predictions") == os.path.join(str(tmp_path), "predictions")
    assert default_out(None, str(tmp_path / "model.pth"), "analysis") == "analysis"
    assert default_out("mine", str(tmp_path), "analysis") == "mine"


def test_infer_writes_into_the_run_folder_by_default(tmp_path, monkeypatch):
    from hanet_fast import infer

    run = tmp_path / "run"
    run.mkdir()
    save_tiny_checkpoint(run / "checkpoint.pt")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "street.png")
    monkeypatch.chdir(tmp_path)
    infer.main([str(tmp_path / "street.png"), "--checkpoint", str(run), "--no-progress", "--device", "cpu"])
    assert (run / "predictions" / "street_pred.png").is_file()
    assert not (tmp_path / "predictions").exists()


def test_prediction_grid_has_column_titles_and_a_class_legend():
    images = [torch.zeros(3, 40, 60)] * 2
    masks = [torch.zeros(40, 60, dtype=torch.long)] * 2
    grid = prediction_grid(images, masks, masks)
    legend = class_legend(grid.shape[1])
    assert grid.shape[1] == 180
    assert grid.shape[0] > 2 * 40 + legend.shape[0]  # a title strip above the rows
    np.testing.assert_array_equal(grid[-legend.shape[0]:], legend)
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert all(tuple(int(v) for v in c) in colours for c in PALETTE)
    title = grid[:grid.shape[0] - 2 * 40 - legend.shape[0]]
    assert (title < 128).any()  # text drawn in black on white


def test_compiled_model_keeps_plain_state_dict_keys(tmp_path):
    model, _ = load_model(save_tiny_checkpoint(tmp_path / "checkpoint.pt"))
    keys = list(model.state_dict())
    compile_model(model)
    assert list(model.state_dict()) == keys
    assert not any("_orig_mod" in k for k in keys)


@pytest.mark.slow
def test_train_compile_checkpoint_loads_into_an_eager_network(tmp_path):
    """A ``train --compile`` run, traced by aot_eager: the CLI path is what is tested here, and
    inductor's C++ code generation for a whole network would take minutes of CI (inductor on the
    fused ops is covered by the module tests)."""
    out = tmp_path / "run"
    tiny = ["--synthetic-size", "48x96", "--crop-size", "32x64", "--synthetic-train", "8", "--synthetic-val", "2",
            "--batch-size", "2", "--hanet-rows", "4", "--val-every", "0", "--num-vis", "1", "--no-progress",
            "--threads", "2", "--iters", "1", "--workers", "0", "--device", "cpu", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "hanet_fast.train", *tiny, "--compile", "aot_eager"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "torch.compile (aot_eager)" in run.stdout and "run folder" in run.stdout.splitlines()[2]
    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("_orig_mod") for k in saved["model"])
    model, _ = load_model(out)  # eager
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 96)).logits.shape == (1, 19, 48, 96)
