"""hanet_fast.train refuses, in one line, what issue 21 found getting through: non-finite or
negative optimiser settings, diverging runs and NaN weights, Ctrl-C, a cache or TensorBoard
folder that is a file, crafted checkpoints, a resume whose data or settings changed, two runs in
one folder and a run folder that is a symbolic link loop."""

import os

import pytest
import torch

import hanet_fast.training.data as data_module
import hanet_fast.training.trainer as trainer_module
from hanet_fast import _io
from hanet_fast.train import main, resolve_args
from hanet_fast.training import Hook, RunError, TrainConfig, Trainer
from hanet_fast.training.resume import resumed_config

from test_train import TINY
from test_training_engine import TINY_CONFIG
from test_train_reliability import _bdd_tree, _exit, _fake_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
RUN = TINY + ["--iters", "2", "--workers", "0"]


@pytest.mark.parametrize("argv, flag", [
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--hanet-lr", "inf"], "--hanet-lr"),
    (["--momentum", "-1"], "--momentum"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--poly-power", "-1"], "--poly-power"), (["--hanet-poly-power", "inf"], "--hanet-poly-power"),
])
def test_non_finite_or_negative_optimiser_settings_are_refused(tmp_path, capsys, argv, flag):
    line = _exit(capsys, RUN + ["--out", str(tmp_path / "run")] + argv)
    assert flag in line and "finite" in line
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=flag[2:].replace("-", "_")):
        TrainConfig(**{flag[2:].replace("-", "_"): float(argv[1])})


def test_a_diverging_run_stops_with_one_line_naming_the_iteration_and_the_lr(tmp_path, capsys):
    out = tmp_path / "run"
    line = _exit(capsys, RUN + ["--iters", "3", "--class-uniform-pct", "0", "--lr", "1e12", "--hanet-lr", "1e12",
                                "--out", str(out)], status=1)
    assert "diverged" in line and "iteration" in line and "lower --lr" in line
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()


class _Poison(Hook):
    """NaN into one weight after the last step: the loss of that step is still finite."""

    def after_step(self, trainer, step):
        if step.iteration == trainer.config.iters:
            with torch.no_grad():
                next(trainer.net.parameters()).fill_(float("nan"))


def test_nan_weights_are_never_checkpointed_or_scored(tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(**TINY_CONFIG, iters=2, ckpt_every=1, class_uniform_pct=0, out=str(out))
    with pytest.raises(RunError, match="NaN or Inf after iteration 2") as info:
        Trainer(config, hooks=[_Poison()]).fit()
    assert "--lr" in str(info.value) and info.value.status == 1
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 1 and all(t.isfinite().all() for t in saved["model"].values() if t.is_floating_point())
    assert not (out / "metrics.json").exists()


def test_ctrl_c_names_the_checkpoint_to_resume_from(tmp_path, capsys, monkeypatch):
    real, calls = trainer_module.segmentation_loss, [0]

    def interrupted_at_3(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "segmentation_loss", interrupted_at_3)
    out = tmp_path / "run"
    line = _exit(capsys, RUN + ["--iters", "4", "--ckpt-every", "2", "--class-uniform-pct", "0", "--out", str(out)],
                 status=130)
    assert f"--resume {out / 'checkpoint.pt'}" in line and "iteration 2" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 2


@pytest.mark.parametrize("source", ["--cache-dir", "HANET_FAST_CACHE"])
def test_a_cache_folder_that_is_a_file_is_refused_before_the_statistics(tmp_path, capsys, monkeypatch, source):
    cache = tmp_path / "cache"
    cache.write_text("a file")
    monkeypatch.setattr(data_module, "class_centroids", lambda *a, **k: pytest.fail("statistics computed"))
    argv = RUN + ["--out", str(tmp_path / "run")]
    if source == "--cache-dir":
        argv += ["--cache-dir", str(cache)]
    else:
        monkeypatch.setenv("HANET_FAST_CACHE", str(cache))
    line = _exit(capsys, argv)
    assert source in line and str(cache) in line and "file" in line
    assert cache.read_text() == "a file" and not (tmp_path / "run").exists()


def test_overwrite_refuses_a_file_where_the_tensorboard_folder_goes(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tb").write_text("mine")
    line = _exit(capsys, RUN + ["--out", str(out), "--overwrite"])
    assert str(out / "tb") in line and "--out" in line
    assert (out / "tb").read_text() == "mine" and sorted(os.listdir(out)) == ["tb"]


@pytest.fixture(scope="module")
def one_iteration_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    main(RUN + ["--iters", "1", "--class-uniform-pct", "0", "--out", str(out)])
    return out


@pytest.mark.parametrize("craft, says", [
    (dict(iteration=-5), "iteration -5"),
    (dict(optimizer={}), "'optimizer'"),
    (dict(model={"conv.weight": torch.zeros(1)}), "'model'"),
    (dict(args_batch_size=0), "--batch-size"),
    (dict(args=[1, 2]), "'args'"),
])
def test_crafted_checkpoints_are_one_line_errors(tmp_path, capsys, one_iteration_run, craft, says):
    state = torch.load(one_iteration_run / "checkpoint.pt", weights_only=True)
    if "args_batch_size" in craft:
        state["args"]["batch_size"] = craft.pop("args_batch_size")
    state.update(craft)
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    line = _exit(capsys, ["--resume", str(path), "--iters", "2"])
    assert "--resume" in line and says in line
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_a_resume_after_the_training_set_changed_size_warns(tmp_path, capsys):
    root = _bdd_tree(tmp_path / "bdd", {"a": 1, "b": 2, "c": 3, "d": 4})
    out = tmp_path / "run"
    main(TINY + ["--dataset", "bdd100k", "--data-root", str(root), "--val-split", "train", "--class-uniform-pct", "0",
                 "--iters", "2", "--stop-after", "1", "--workers", "0", "--out", str(out)])
    for name in ("c", "d"):
        os.remove(root / "images" / "10k" / "train" / f"{name}.jpg")
        os.remove(root / "labels" / "sem_seg" / "masks" / "train" / f"{name}.png")
    with pytest.warns(UserWarning, match="has 2 images where the run had 4"):
        main(["--resume", str(out)])


def test_a_resume_takes_a_missing_setting_from_its_default_not_from_this_invocation(tmp_path, capsys):
    saved = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(resolve_args(TINY)).items()}
    saved.update(preset="train_m_os16_hanet", dataset="synthetic")  # hanet_pos_noise 0.3 there (0.5 here)
    del saved["hanet_pos_noise"], saved["hanet_lr"]  # as if the run's code had not had these flags yet
    cfg = TrainConfig(**dict(TINY_CONFIG, hanet_lr=0.5, hanet_pos_noise=0.5), resume="x")
    resumed, _ = resumed_config(cfg, saved, 1, given=set())
    assert (resumed.hanet_pos_noise, resumed.hanet_lr) == (0.3, 0.01)
    with pytest.raises(RunError, match="--hanet-lr 0.5"):
        resumed_config(cfg, saved, 1, given={"hanet_lr"})
    ckpt = _fake_checkpoint(tmp_path / "checkpoint.pt")
    state = torch.load(ckpt, weights_only=True)
    del state["args"]["hanet_lr"]
    torch.save(state, ckpt)
    assert "--hanet-lr 0.5 (the run's: 0.01)" in _exit(capsys, ["--resume", str(ckpt), "--hanet-lr", "0.5"])


def test_a_run_folder_held_by_another_run_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real, claims = data_module.class_centroids, []

    def other_run_claims_meanwhile(*args, **kwargs):  # both runs found the folder free; the other claims first
        claims.append(_io.claim_run_folder(str(out)))
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "class_centroids", other_run_claims_meanwhile)
    line = _exit(capsys, RUN + ["--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert "in use by another run" in line and str(out) in line
    assert os.listdir(out) == [_io.LOCK_NAME]  # the other run's lock: nothing of this run
    claims[0].release()


def test_a_symbolic_link_loop_as_out_is_named(tmp_path, capsys):
    out = tmp_path / "loop"
    os.symlink(out, out)
    line = _exit(capsys, RUN + ["--out", str(out)])
    assert "--out" in line and "symbolic link loop" in line
