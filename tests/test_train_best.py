"""best.pt (the best validation mIoU, as the official trainer keeps it), --val-every epoch, and
--run-checkpoint of evaluate / infer / export (issue 20)."""

import json
import os

import pytest
import torch

import hanet_fast.training.trainer as trainer_module
from hanet_fast._cli import run_checkpoint
from hanet_fast.inference import load_model
from hanet_fast.train import resolve_args
from hanet_fast.training import TrainConfig, Trainer
from test_train import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _stub_validation(monkeypatch, mious):
    """Validation that returns the next of ``mious`` and records the iterations it ran after."""
    seen = []

    def validate(model, dataset, device, cfg, process, on_batch=None):
        seen.append(trainer_module_iteration[0])
        miou = mious[len(seen) - 1]
        return [miou] * 19, miou, 0.5

    trainer_module_iteration = [0]
    original = Trainer.validate

    def tracking(self, final=False):
        trainer_module_iteration[0] = self.iteration
        return original(self, final)

    monkeypatch.setattr(trainer_module, "validate", validate)
    monkeypatch.setattr(Trainer, "validate", tracking)
    return seen


def _config(tmp_path, **overrides):
    cfg = resolve_args(TINY + ["--workers", "0", "--class-uniform-pct", "0", "--out", str(tmp_path / "run")])
    settings = {**cfg.to_dict(), **overrides}
    return TrainConfig(**settings)


def _iteration(path):
    return torch.load(path, map_location="cpu", weights_only=True)["iteration"]


def test_best_pt_holds_the_best_validation_and_a_resume_keeps_it(tmp_path, monkeypatch):
    run = tmp_path / "run"
    seen = _stub_validation(monkeypatch, [0.3, 0.5])
    Trainer(_config(tmp_path, iters=6, val_every=2, ckpt_every=2, stop_after=4), reporters=False).fit()
    assert seen == [2, 4] and _iteration(run / "best.pt") == 4 and _iteration(run / "checkpoint.pt") == 4
    # the resumed run validates worse (0.4 at 6, the final 0.2): best.pt stays the iteration-4 one
    seen = _stub_validation(monkeypatch, [0.4, 0.2])
    metrics = Trainer(_config(tmp_path, iters=8, val_every=2, ckpt_every=2, resume=str(run)), reporters=False).fit()
    assert seen == [6, 8] and _iteration(run / "best.pt") == 4 and _iteration(run / "checkpoint.pt") == 8
    assert metrics["best"] == {"iteration": 4, "mIoU": 0.5}
    assert json.load(open(run / "metrics.json"))["best"] == {"iteration": 4, "mIoU": 0.5}
    # a run folder gives checkpoint.pt; --run-checkpoint best gives best.pt
    assert run_checkpoint(str(run)) == str(run)  # load_model reads its checkpoint.pt
    assert run_checkpoint(str(run), "best") == str(run / "best.pt")
    assert load_model(run_checkpoint(str(run), "best"))[1]["iteration"] == 4
    with pytest.raises(ValueError, match="--run-checkpoint best"):
        run_checkpoint(str(run / "best.pt"), "best")
    from hanet_fast import evaluate
    for which, iteration in (("best", 4), ("last", 8)):
        out = tmp_path / f"{which}.json"
        assert evaluate.main(["--checkpoint", str(run), "--run-checkpoint", which, "--no-progress", "--workers", "0",
                              "--json", str(out)]) == 0
        assert json.load(open(out))["iteration"] == iteration


def test_val_every_epoch_validates_after_each_epoch(tmp_path, monkeypatch):
    # 16 images, no class-uniform part: an epoch is 8 iterations of 2 images
    seen = _stub_validation(monkeypatch, [0.1, 0.2, 0.3])
    Trainer(_config(tmp_path, iters=17, val_every="epoch", ckpt_every=0), reporters=False).fit()
    assert seen == [8, 16, 17]
    assert _iteration(tmp_path / "run" / "best.pt") == 17


def test_val_every_flag_and_presets():
    assert resolve_args(["--val-every", "epoch"]).val_every == "epoch"
    assert resolve_args(["--val-every", "7"]).val_every == 7
    for name in ("train_r101_os8_hanet", "train_resnext_pretrain", "train_resnext_fr_pretrain"):
        assert resolve_args(["--preset", name, "--data-root", "/d"]).val_every == "epoch"


def test_bad_val_every_is_one_line_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        resolve_args(["--val-every", "often"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "--val-every" in err and "\n" not in err
