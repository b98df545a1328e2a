"""hanet_fast.train: loss goes down, exact resume, CLI help and smoke run, 2-process gloo DDP via torchrun."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from hanet_fast.data import SyntheticUrbanScenes, TrainTransform
from hanet_fast.models import deeplabv3plus
from hanet_fast.train import PRESETS, build_parser, main, resolve_args
from hanet_fast.training.losses import downsample_labels, segmentation_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny settings: 32x64 crops of 48x96 scenes, 2 threads.
TINY = ["--synthetic-size", "48,96", "--crop-size", "32,64", "--synthetic-train", "16", "--synthetic-val", "2",
        "--batch-size", "2", "--hanet-rows", "4", "--val-every", "0", "--num-vis", "1", "--no-progress", "--threads", "2"]


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


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    common = TINY + ["--iters", "4", "--workers", "0", "--cache-dir", str(tmp_path / "cache"), "--ckpt-every", "0"]
    main(common + ["--out", str(tmp_path / "full")])
    main(common + ["--out", str(tmp_path / "part"), "--stop-after", "2"])
    part = _weights(tmp_path / "part")
    assert part["iteration"] == 2
    main(["--resume", str(tmp_path / "part" / "checkpoint.pt"), "--no-progress", "--workers", "1"])
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert resumed["iteration"] == full["iteration"] == 4
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for (k, a), b in zip(full["optimizer"]["state"].items(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"]), k
    assert full["scheduler"] == resumed["scheduler"]
    assert json.load(open(tmp_path / "full" / "metrics.json"))["mIoU"] == json.load(open(tmp_path / "part" / "metrics.json"))["mIoU"]


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
