"""hanet_fast.train presets = the official training scripts (github.com/shachoi/HANet scripts/*.sh).

The expected values are written out from the scripts (each comment names the script's line),
and, for what a script leaves unset, from the official train.py's defaults; the tests do not
read the official code (it is absent in CI).
"""

import json
import subprocess
import sys

import pytest
import torch

from hanet_fast.data.datasets import BDD100K_CLASS_UNIFORM_TILE
from hanet_fast.train import main, resolve_args
from hanet_fast.training.model import build_model
from hanet_fast.training.presets import DEFAULT_PRESET, PRESET_PROCESSES, PRESETS
from test_train import ROOT, _env

pytestmark = pytest.mark.usefixtures("one_thread")

# Settings every official training script passes alike (the line numbers are those of each of
# scripts/train_{r101_os8_hanet,r101_os8_hanet_best,r101_os16_hanet,m_os16_hanet}.sh; the
# resnext script's are one or three lines lower, see below).
COMMON = {
    "dataset": "cityscapes",        # l.4 --dataset cityscapes
    "lr": 0.01,                     # l.8 --lr 0.01
    "poly_power": 0.9,              # l.9 --poly_exp 0.9
    "hanet_lr": 0.01,               # l.10 --hanet_lr 0.01
    "hanet_poly_power": 0.9,        # l.11 --hanet_poly_exp 0.9
    "class_uniform_pct": 0.5,       # l.13 --class_uniform_pct 0.5
    "class_uniform_tile": 1024,     # l.14 --class_uniform_tile 1024
    "sync_bn": True,                # l.15 --syncbn
    "scale_min": 0.5,               # l.18 --scale_min 0.5
    "scale_max": 2.0,               # l.19 --scale_max 2.0
    "color_jitter": 0.25,           # l.21 --color_aug 0.25
    "blur": 1.0,                    # l.22 --gblur (every sample blurred)
    "hanet_layers": "1,1,1,1,0",    # l.25 --hanet 1 1 1 1 0
    "hanet_pos_injection": 2,       # l.27 --hanet_pos 2 1 (after conv 1, sinusoidal: checked on the model)
    "hanet_rows": 16,               # l.28 --pos_rfactor 8 -> 128 // 8 rows
    "hanet_dropout": 0.1,           # l.29 --dropout 0.1
    "aux_weight": 0.4,              # l.31 --aux_loss (train.py: main + 0.4 * aux)
    # official defaults the scripts keep
    "weight_decay": 5e-4,           # optimizer.py: SGD(weight_decay=5e-4) for the main network
    "hanet_weight_decay": 1e-4,     # train.py --hanet_wd default 0.0001
    "momentum": 0.9,                # train.py --momentum default 0.9
    "img_wt_loss": False,           # train.py --img_wt_loss default False
}

EXPECTED = {
    "train_r101_os8_hanet": dict(
        COMMON, train_split="train",                      # l.6 --city_mode 'train'
        backbone="resnet101_deepstem", output_stride=8,   # l.5 --arch network.deepv3.DeepR101V3PlusD_HANet_OS8
        crop_size=(768, 768),                             # l.17 --crop_size 768
        iters=40000,                                      # l.23 --max_iter 40000
        batch_size=4,                                     # l.24 --bs_mult 4 (x l.3 --nproc_per_node=2)
        hanet_reduction=64,                               # l.26 --hanet_set 3 64 3
        hanet_pos_noise=0.5,                              # l.30 --pos_noise 0.5
        cls_wt_loss=False,                                # (no --cls_wt_loss)
        pretrained_backbone="pretrained/resnet101-imagenet.pth",  # network/Resnet.py resnet101(pretrained=True)
    ),
    "train_r101_os8_hanet_best": dict(
        COMMON, train_split="trainval",                   # l.6 --city_mode 'trainval'
        backbone="resnet101_deepstem", output_stride=8,   # l.5 --arch network.deepv3.DeepR101V3PlusD_HANet_OS8
        crop_size=(864, 864),                             # l.17 --crop_size 864
        iters=90000,                                      # l.23 --max_iter 90000
        batch_size=3,                                     # l.24 --bs_mult 3 (x l.3 --nproc_per_node=4 = 12)
        hanet_reduction=64,                               # l.26 --hanet_set 3 64 3
        hanet_pos_noise=0.5,                              # l.30 --pos_noise 0.5
        cls_wt_loss=True,                                 # l.32 --cls_wt_loss
        pretrained_backbone="pretrained/resnet101-imagenet.pth",
    ),
    "train_r101_os16_hanet": dict(
        COMMON, train_split="train",                      # l.6 --city_mode 'train'
        backbone="resnet101_deepstem", output_stride=16,  # l.5 --arch network.deepv3.DeepR101V3PlusD_HANet
        crop_size=(768, 768),                             # l.17 --crop_size 768
        iters=40000,                                      # l.23 --max_iter 40000
        batch_size=4,                                     # l.24 --bs_mult 4 (x l.3 --nproc_per_node=2)
        hanet_reduction=32,                               # l.26 --hanet_set 3 32 3
        hanet_pos_noise=0.5,                              # l.30 --pos_noise 0.5
        cls_wt_loss=False,
        pretrained_backbone="pretrained/resnet101-imagenet.pth",
    ),
    "train_m_os16_hanet": dict(
        COMMON, train_split="train",                      # l.6 --city_mode 'train'
        backbone="mobilenet_v2", output_stride=16,        # l.5 --arch network.deepv3.DeepMobileNetV3PlusD_HANet
        crop_size=(768, 768),                             # l.17 --crop_size 768
        iters=40000,                                      # l.23 --max_iter 40000
        batch_size=8,                                     # l.24 --bs_mult 8 (x l.3 --nproc_per_node=1)
        hanet_reduction=16,                               # l.26 --hanet_set 3 16 3
        hanet_pos_noise=0.3,                              # l.30 --pos_noise 0.3
        cls_wt_loss=False,
        pretrained_backbone="imagenet",                   # deepv3.py models.mobilenet_v2(pretrained=True)
    ),
    # scripts/train_resnext_fr_pretrain.sh: the same flags as above one line lower from l.7
    # (l.6 is --snapshot) and three lines lower after l.16 --coarse_boost_classes
    "train_resnext_fr_pretrain": dict(
        COMMON, train_split="trainval",                   # l.7 --city_mode 'trainval'
        backbone="resnext101_32x8d", output_stride=8,     # l.5 --arch network.deepv3.DeepResNext101V3PlusD_HANet_OS8
        init_from="pretrained/resnext_mapillary_0.47475.pth",  # l.6 --snapshot: the whole network
        pretrained_backbone="none",                       # (every trunk tensor comes from the snapshot)
        coarse_boost_classes="14,15,16,3,12,17,4",        # l.16 --coarse_boost_classes 14,15,16,3,12,17,4
        max_cu_epoch=10000,                               # l.13 --max_cu_epoch 10000
        crop_size=(864, 864),                             # l.19 --crop_size 864
        iters=90000,                                      # l.25 --max_iter 90000
        batch_size=2,                                     # l.26 --bs_mult 2 (x l.3 --nproc_per_node=6 = 12)
        hanet_reduction=64,                               # l.28 --hanet_set 3 64 3
        hanet_pos_noise=0.5,                              # l.32 --pos_noise 0.5
        cls_wt_loss=True,                                 # l.34 --cls_wt_loss
    ),
}

PROCESSES = {  # l.3 of each script: torch.distributed.launch --nproc_per_node=N
    "train_r101_os8_hanet": 2, "train_r101_os8_hanet_best": 4, "train_r101_os16_hanet": 2,
    "train_m_os16_hanet": 1, "train_resnext_fr_pretrain": 6, "train_resnext_pretrain": 6,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_is_the_official_script(name):
    args = resolve_args(["--preset", name, "--data-root", "/data"])
    for key, value in EXPECTED[name].items():
        assert getattr(args, key) == value, key
    assert PRESET_PROCESSES[name] == PROCESSES[name]
    # the network the preset builds: the script's HANet layers (--hanet_set KERNEL R LAYERS,
    # --hanet_pos 2 1, --pos_rfactor 8, --dropout, --pos_noise, default --pooling mean)
    args.pretrained_backbone = "none"
    with torch.device("meta"):
        model = build_model(args, 19)
    expected_layer = dict(rows=16, reduction=EXPECTED[name]["hanet_reduction"], kernel_size=3, num_convs=3,
                          pooling="avg", dropout=0.1, pos_encoding="sinusoidal", pos_injection=2,
                          pos_noise=EXPECTED[name]["hanet_pos_noise"])
    assert model.config.hanet_layers == (1, 1, 1, 1, 0)
    for cfg in model.config.hanet[:4]:
        assert {k: getattr(cfg, k) for k in expected_layer} == expected_layer
    assert (model.config.backbone, model.config.output_stride, model.config.aux) == (
        EXPECTED[name]["backbone"], EXPECTED[name]["output_stride"], True)


def test_bdd100k_presets_follow_the_paper():
    """Paper §4.3: crop 608x608, 60k iterations, total batch 16; the rest from the OS 16 scripts."""
    for name, base, per_process in (("bdd100k-r101-os16", "train_r101_os16_hanet", 8),
                                    ("bdd100k-mobilenet-os16", "train_m_os16_hanet", 16)):
        args = resolve_args(["--preset", name, "--data-root", "/data"])
        assert (args.dataset, args.crop_size, args.iters) == ("bdd100k", (608, 608), 60000)
        assert args.batch_size == per_process and per_process * PRESET_PROCESSES[name] == 16
        # the official tile 1024 fits no 720-row image: BDD100K_CLASS_UNIFORM_TILE
        assert args.class_uniform_tile == BDD100K_CLASS_UNIFORM_TILE < 720
        rest = {k: v for k, v in EXPECTED[base].items()
                if k not in ("dataset", "crop_size", "iters", "batch_size", "class_uniform_tile")}
        assert {k: getattr(args, k) for k in rest} == rest


def test_default_preset_is_the_synthetic_one():
    args = resolve_args([])
    assert args.preset == DEFAULT_PRESET == "synthetic-mobilenet"
    assert (args.dataset, args.backbone, args.output_stride, args.crop_size, args.iters, args.batch_size) == (
        "synthetic", "mobilenet_v2", 16, (64, 128), 300, 8)
    assert (args.hanet_reduction, args.hanet_pos_noise, args.blur, args.pretrained_backbone) == (32, 0.5, 1.0, "none")
    # every preset sets the same keys, so switching presets leaves nothing of another behind
    keys = set(PRESETS[DEFAULT_PRESET])
    assert all(set(cfg) == keys for cfg in PRESETS.values())


def test_help_shows_a_preset_table_not_every_key():
    res = subprocess.run([sys.executable, "-m", "hanet_fast.train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    table = res.stdout[res.stdout.index("presets:"):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip() and line.startswith("  ")}
    for name, cfg in PRESETS.items():
        n = PRESET_PROCESSES[name]
        assert rows[name][1:6] == [cfg["backbone"], str(cfg["output_stride"]), "x".join(map(str, cfg["crop_size"])),
                                   str(cfg["iters"]), f"{cfg['batch_size']}x{n}={cfg['batch_size'] * n}"], name
    assert "hanet_weight_decay=" not in res.stdout and "--print-config" in table


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_print_config_prints_every_setting(name, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--preset", name, "--print-config"])  # no --data-root needed just to look
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"# preset {name}: total batch")
    printed = dict(line.split(" = ", 1) for line in lines[1:])
    for key, value in PRESETS[name].items():
        assert json.loads(printed[key]) == (list(value) if isinstance(value, tuple) else value), key
    # explicit flags are applied to what is printed
    with pytest.raises(SystemExit):
        main(["--preset", name, "--print-config", "--lr", "0.5"])
    assert "lr = 0.5" in capsys.readouterr().out.splitlines()


def test_preset_values_are_overridable_including_the_loss_flags():
    args = resolve_args(["--preset", "train_r101_os8_hanet_best", "--data-root", "/d", "--no-cls-wt-loss",
                         "--train-split", "train", "--hanet-reduction", "32"])
    assert (args.cls_wt_loss, args.train_split, args.hanet_reduction) == (False, "train", 32)
    args = resolve_args(["--img-wt-loss", "--batch-weighting", "--wt-bound", "2"])
    assert (args.img_wt_loss, args.batch_weighting, args.wt_bound) == (True, True, 2.0)
