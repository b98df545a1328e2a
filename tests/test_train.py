"""hanet_fast.train: loss goes down, exact resume, CLI help and smoke run, 2-process gloo DDP via torchrun."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from hanet_fast.data import SyntheticUrbanScenes, TrainTransform
from hanet_fast.models import deeplabv3plus
from hanet_fast.train import build_parser, main, resolve_args
from hanet_fast.training.presets import PRESETS
from hanet_fast.training.losses import downsample_labels, segmentation_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny settings: 32x64 crops of 48x96 scenes, one thread.
TINY = ["--synthetic-size", "48,96", "--crop-size", "32,64", "--synthetic-train", "16", "--synthetic-val", "2",
        "--batch-size", "2", "--hanet-rows", "4", "--val-every", "0", "--num-vis", "1", "--no-progress", "--threads", "1"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_help_documents_every_flag():
    res = subprocess.run([sys.executable, "-m", "hanet_fast.train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    for action in build_parser()._actions:
        for opt in action.option_strings:
            assert opt in res.stdout
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
    for name in PRESETS:
        assert name in res.stdout


def test_presets_and_baseline_flag():
    args = resolve_args(["--preset", "train_r101_os8_hanet", "--data-root", "/x"])
    assert (args.crop_size, args.batch_size, args.iters, args.lr, args.output_stride) == ((768, 768), 4, 40000, 0.01, 8)
    assert (args.weight_decay, args.hanet_weight_decay, args.aux_weight, args.class_uniform_pct) == (5e-4, 1e-4, 0.4, 0.5)
    args = resolve_args(["--baseline", "--lr", "0.05"])
    assert args.hanet_layers == "0,0,0,0,0" and args.lr == 0.05 and args.dataset == "synthetic"


def test_aux_loss_downsamples_labels_by_nearest():
    mask = torch.arange(16).view(1, 4, 4) % 3
    assert downsample_labels(mask, (2, 2)).tolist() == [[[0, 2], [2, 1]]]
    logits = torch.randn(1, 3, 4, 4)
    total, parts = segmentation_loss(logits, mask, torch.randn(1, 3, 2, 2), 0.4)
    assert torch.allclose(total, parts["main"] + 0.4 * parts["aux"])


def test_few_cpu_iterations_lower_the_loss():
    torch.manual_seed(0)
    ds = SyntheticUrbanScenes("train", 4, (48, 96), transform=TrainTransform((32, 64), color_jitter=0, blur=0))
    batch = torch.utils.data.default_collate([ds[(i, (0, i), None)] for i in range(4)])
    model = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=19)
    opt = torch.optim.SGD(model.param_groups(5e-4, 1e-4), lr=0.01, momentum=0.9)
    losses = []
    model.train()
    for _ in range(6):
        out = model(batch["image"], batch["row_pos"])
        loss, _ = segmentation_loss(out.logits, batch["mask"], out.aux_logits, 0.4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def _weights(path):
    return torch.load(os.path.join(path, "checkpoint.pt"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 4-iteration run (checkpoint every iteration, validation at 2): the
    reference of the resume tests."""
    out = tmp_path_factory.mktemp("full") / "run"
    main(FULL + ["--out", str(out)])
    return out


# The settings of full_run, but for --out.
FULL = TINY + ["--iters", "4", "--workers", "0", "--ckpt-every", "1", "--val-every", "2", "--log-every", "1"]


def _assert_same_run(full, resumed):
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for (k, a), b in zip(full["optimizer"]["state"].items(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"]), k
    assert full["scheduler"] == resumed["scheduler"]


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, full_run, monkeypatch):
    common = FULL + ["--cache-dir", str(tmp_path / "cache")]
    main(common + ["--out", str(tmp_path / "part"), "--stop-after", "2"])
    part = _weights(tmp_path / "part")
    assert part["iteration"] == 2 and part["threads"] == 1 and 0 < part["train_seconds"] < 1000
    # As if the first session had trained for 1000 s: the resumed run's total counts them.
    torch.save(dict(part, train_seconds=1000.0), tmp_path / "part" / "checkpoint.pt")
    # The resume takes the run's cache folder (and every other setting) from the checkpoint.
    monkeypatch.setenv("HANET_FAST_CACHE", str(tmp_path / "default_cache"))
    torch.set_num_threads(2)  # restored to the run's one thread
    t0 = time.time()
    main(["--resume", str(tmp_path / "part" / "checkpoint.pt"), "--no-progress", "--workers", "1"])
    session = time.time() - t0
    assert torch.get_num_threads() == 1
    assert not (tmp_path / "default_cache").exists()
    full, resumed = _weights(full_run), _weights(tmp_path / "part")
    _assert_same_run(full, resumed)
    metrics = json.load(open(tmp_path / "part" / "metrics.json"))
    assert 1000 < metrics["train_seconds"] < 1000 + session  # the total over both sessions
    assert 1000 < resumed["train_seconds"] < 1000 + session
    assert resumed["iteration"] == full["iteration"] == 4
    assert json.load(open(full_run / "metrics.json"))["mIoU"] == metrics["mIoU"]


# Runs hanet_fast.train with a SIGKILL at the N-th checkpoint write (half of the file written) or
# at the start of the N-th validation; TensorBoard events are flushed as they are logged, as they
# would be on disk after the writer's periodic flushes in a long run.
_KILLER = """
import io, os, signal, sys
import torch
import hanet_fast.evaluation as E
import hanet_fast.train as T
import hanet_fast.training.reporters as R
what, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def kill_at_n():
    calls[0] += 1
    return calls[0] == n
if what == "save":
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if kill_at_n():
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
else:
    real_validate = E.accumulate_confusion
    def validate(*args, **kwargs):
        if kill_at_n():
            os.kill(os.getpid(), signal.SIGKILL)
        return real_validate(*args, **kwargs)
    E.accumulate_confusion = validate
real_writer = R.tensorboard_writer
def writer(*args, **kwargs):
    w = real_writer(*args, **kwargs)
    add = w.add_scalar
    def add_scalar(*a, **k):
        add(*a, **k)
        w.flush()
    w.add_scalar = add_scalar
    return w
R.tensorboard_writer = writer
T.main(sys.argv[3:])
"""


def _killed(what, n, argv):
    res = subprocess.run([sys.executable, "-c", _KILLER, what, str(n), *argv], capture_output=True, text=True,
                         cwd=ROOT, env=_env(), timeout=300)
    assert res.returncode == -9, res.stdout[-2000:] + res.stderr[-2000:]


def test_sigkill_during_validation_and_checkpoint_write_then_resume_is_exact(tmp_path, full_run):
    run = tmp_path / "run"
    # Killed in the validation at iteration 2 (its checkpoint at 2 is written).
    _killed("validate", 1, FULL + ["--out", str(run), "--cache-dir", str(tmp_path / "cache")])
    assert _weights(run)["iteration"] == 2
    # Resumed, then killed writing the checkpoint of iteration 4 (the one of 3 is written).
    _killed("save", 2, ["--resume", str(run)])
    assert _weights(run)["iteration"] == 3
    stale = [f for f in os.listdir(run) if f.startswith(".checkpoint.pt.tmp")]
    assert stale, os.listdir(run)
    main(["--resume", str(run)])
    assert not [f for f in os.listdir(run) if f.startswith(".checkpoint.pt.tmp")]
    full, resumed = _weights(full_run), _weights(run)
    assert resumed["iteration"] == 4
    _assert_same_run(full, resumed)
    assert json.load(open(full_run / "metrics.json"))["mIoU"] == json.load(open(run / "metrics.json"))["mIoU"]
    if importlib.util.find_spec("tensorboard"):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        events = EventAccumulator(str(run / "tb"))
        events.Reload()
        # The interrupted sessions' events after their checkpoints are purged, not repeated.
        assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
        assert [e.step for e in events.Scalars("val/mIoU")] == [4]


def test_cli_smoke_run(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "hanet_fast.train", *TINY, "--iters", "3", "--val-every", "2", "--ckpt-every", "2",
         "--workers", "1", "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "mIoU" in res.stdout and "traffic sign" in res.stdout
    for name in ("checkpoint.pt", "metrics.json", "args.json", "predictions.png"):
        assert (out / name).is_file(), name
    if importlib.util.find_spec("matplotlib"):
        assert (out / "attention.png").is_file()
    if importlib.util.find_spec("tensorboard"):
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tb"))
    ckpt = _weights(out)
    assert ckpt["iteration"] == 3 and ckpt["model_config"]["backbone"] == "mobilenet_v2"
    assert len(ckpt["optimizer"]["param_groups"]) == 2  # main + HANet (own weight decay)
    assert [g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]] == [5e-4, 1e-4]


def test_torchrun_two_process_gloo(tmp_path):
    out = tmp_path / "ddp"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hanet_fast.train",
         *TINY, "--threads", "1", "--iters", "2", "--workers", "0", "--device", "cpu", "--out", str(out),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["world_size"] == 2 and metrics["iteration"] == 2
    assert _weights(out)["iteration"] == 2


def test_iou_metrics():
    from hanet_fast.training.metrics import confusion, format_table, iou_from_confusion
    target = torch.tensor([0, 0, 1, 1, 255, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 0])
    conf = confusion(pred, target, 4)
    ious, miou, acc = iou_from_confusion(conf)
    assert ious[:3] == [1 / 3, 2 / 3, 0.0] and ious[3] != ious[3]  # class 3 absent: nan, left out of the mean
    assert abs(miou - 1 / 3) < 1e-12 and abs(acc - 3 / 5) < 1e-12
    assert "mIoU" in format_table(ious, miou, acc, names=["a", "b", "c", "d"])


def test_poly_schedule_per_group_powers():
    """Each group's learning rate after k steps is base * (1 - k / T) ** power, with its own power."""
    from hanet_fast.training.schedule import poly_scheduler
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.02}], lr=0.1)
    total, powers = 10, (2.0, 0.5)
    scheduler = poly_scheduler(opt, total, list(powers))
    for k in range(total + 1):
        for group, base, power in zip(opt.param_groups, (0.1, 0.02), powers):
            assert group["lr"] == pytest.approx(base * (1 - k / total) ** power, rel=1e-12, abs=1e-15), (k, power)
        opt.step()
        scheduler.step()


@pytest.fixture(scope="module")
def optimizer_run(tmp_path_factory):
    """A run stopped half way (iteration 2 of 4) with distinct powers, learning rates and decays."""
    tmp = tmp_path_factory.mktemp("optim")
    main(TINY + ["--iters", "4", "--stop-after", "2", "--workers", "0", "--ckpt-every", "0", "--out", str(tmp / "run"),
                 "--cache-dir", str(tmp / "cache"), "--poly-power", "2", "--hanet-poly-power", "0.5", "--lr", "0.02",
                 "--hanet-lr", "0.005", "--weight-decay", "3e-4", "--hanet-weight-decay", "2e-5"])
    ckpt = _weights(tmp / "run")
    assert ckpt["iteration"] == 2
    return {g["name"]: g for g in ckpt["optimizer"]["param_groups"]}


def test_cli_poly_powers_in_saved_optimizer_state(optimizer_run):
    # --poly-power 2 --hanet-poly-power 0.5, 2 of 4 iterations done: (1 - 2/4) ** p
    assert optimizer_run["main"]["lr"] == pytest.approx(0.02 * 0.5 ** 2, rel=1e-12)
    assert optimizer_run["hanet"]["lr"] == pytest.approx(0.005 * 0.5 ** 0.5, rel=1e-12)


def test_cli_hanet_lr_and_weight_decay_in_saved_optimizer_state(optimizer_run):
    assert optimizer_run["main"]["initial_lr"] == 0.02 and optimizer_run["hanet"]["initial_lr"] == 0.005
    assert optimizer_run["main"]["weight_decay"] == 3e-4 and optimizer_run["hanet"]["weight_decay"] == 2e-5
    assert optimizer_run["main"]["momentum"] == optimizer_run["hanet"]["momentum"] == 0.9
