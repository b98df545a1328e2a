"""The training presets: named sets of :class:`~hanet_fast.training.TrainConfig` settings, data
only (the ``--help`` table and ``--print-config`` are printed from here too).

- ``synthetic-mobilenet`` (the default): the built-in synthetic scenes, MobileNetV2 OS16, no
  download.
- one preset per training script of the official code (github.com/shachoi/HANet ``scripts/``),
  named after it, with every setting the script passes and the official ``train.py`` defaults for
  the rest; :data:`PRESET_PROCESSES` is the script's process count (its total batch).
- ``bdd100k-*``: BDD100K as the paper trains it (§4.3; no official script).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from hanet_fast.data.datasets import BDD100K_CLASS_UNIFORM_TILE

__all__ = ["PRESETS", "PRESET_PROCESSES", "DEFAULT_PRESET", "preset_table", "format_config"]

# What every official training script (scripts/train_*.sh of github.com/shachoi/HANet) passes
# alike, and the official train.py defaults none of them changes, in hanet_fast's terms.
_OFFICIAL_SCRIPT = dict(
    lr=0.01, poly_power=0.9,                   # --lr 0.01 --poly_exp 0.9
    hanet_lr=0.01, hanet_poly_power=0.9,       # --hanet_lr 0.01 --hanet_poly_exp 0.9
    class_uniform_pct=0.5, class_uniform_tile=1024,  # --class_uniform_pct 0.5 --class_uniform_tile 1024
    sync_bn=True,                              # --syncbn
    scale_min=0.5, scale_max=2.0,              # --scale_min 0.5 --scale_max 2.0 (--rrotate 0: no rotation)
    color_jitter=0.25,                         # --color_aug 0.25
    blur=1.0,                                  # --gblur: every training sample is blurred
    hanet_layers="1,1,1,1,0",                  # --hanet 1 1 1 1 0
    hanet_pos_injection=2,                     # --hanet_pos 2 1: injected after the first conv, sinusoidal
    hanet_rows=16,                             # --pos_rfactor 8: 128 // 8 coarse rows
    hanet_dropout=0.1,                         # --dropout 0.1
    aux_weight=0.4,                            # --aux_loss; train.py adds 0.4 x the auxiliary loss
    weight_decay=5e-4,                         # optimizer.py: the main network's decay is fixed at 5e-4
    hanet_weight_decay=1e-4,                   # --hanet_wd default
    momentum=0.9,                              # --momentum default
    img_wt_loss=False, cls_wt_loss=False,      # defaults unless the script passes them
    max_cu_epoch=10000,                        # --max_cu_epoch 10000 (the cut of coarse boosting)
    init_from=None, coarse_boost_classes="",   # no --snapshot, no --coarse_boost_classes unless passed
    no_aux=False,                              # --aux_loss (all but the Mapillary pretraining)
    dataset="cityscapes", train_split="train", ckpt_every=2000,
    val_every="epoch",                         # train.py validates after every epoch (and keeps the best)
    synthetic_size=(128, 256), synthetic_train=2000, synthetic_val=100,
)
# The official code loads its deep-stem ResNet-101 ImageNet weights from this file
# (network/Resnet.py); torchvision has no such weights.
_R101_IMAGENET = "pretrained/resnet101-imagenet.pth"

PRESETS: dict[str, dict] = {
    "synthetic-mobilenet": dict(
        dataset="synthetic", train_split="train", backbone="mobilenet_v2", output_stride=16, crop_size=(64, 128),
        batch_size=8, iters=300, pretrained_backbone="none", synthetic_size=(128, 256), synthetic_train=2000,
        synthetic_val=100, class_uniform_pct=0.5, class_uniform_tile=0, val_every=100, ckpt_every=100,
        hanet_layers="1,1,1,1,0", hanet_rows=16, hanet_reduction=32, hanet_pos_injection=2, hanet_pos_noise=0.5,
        hanet_dropout=0.1, lr=0.01, hanet_lr=0.01, poly_power=0.9, hanet_poly_power=0.9, weight_decay=5e-4,
        hanet_weight_decay=1e-4, momentum=0.9, aux_weight=0.4, scale_min=0.5, scale_max=2.0, color_jitter=0.25,
        blur=1.0, sync_bn=True, cls_wt_loss=False, img_wt_loss=False,  # official --gblur: every sample
        init_from=None, coarse_boost_classes="", max_cu_epoch=10000, no_aux=False,
    ),
    "train_r101_os8_hanet": dict(
        _OFFICIAL_SCRIPT, backbone="resnet101_deepstem", output_stride=8, pretrained_backbone=_R101_IMAGENET,
        crop_size=(768, 768), iters=40000, batch_size=4, hanet_reduction=64, hanet_pos_noise=0.5,
    ),
    "train_r101_os8_hanet_best": dict(
        _OFFICIAL_SCRIPT, train_split="trainval", backbone="resnet101_deepstem", output_stride=8,
        pretrained_backbone=_R101_IMAGENET, crop_size=(864, 864), iters=90000, batch_size=3, hanet_reduction=64,
        hanet_pos_noise=0.5, cls_wt_loss=True,
    ),
    "train_r101_os16_hanet": dict(
        _OFFICIAL_SCRIPT, backbone="resnet101_deepstem", output_stride=16, pretrained_backbone=_R101_IMAGENET,
        crop_size=(768, 768), iters=40000, batch_size=4, hanet_reduction=32, hanet_pos_noise=0.5,
    ),
    "train_m_os16_hanet": dict(
        _OFFICIAL_SCRIPT, backbone="mobilenet_v2", output_stride=16, pretrained_backbone="imagenet",
        crop_size=(768, 768), iters=40000, batch_size=8, hanet_reduction=16, hanet_pos_noise=0.3,
    ),
    # Mapillary Vistas pretraining of the network Table 6 fine-tunes: no HANet (--hanet 0 0 0 0 0),
    # no --aux_loss, --img_wt_loss, torchvision's ImageNet ResNeXt-101 trunk.
    "train_resnext_pretrain": dict(
        _OFFICIAL_SCRIPT, dataset="mapillary", backbone="resnext101_32x8d", output_stride=8,
        pretrained_backbone="imagenet", crop_size=(864, 864), iters=200000, batch_size=2, hanet_layers="0,0,0,0,0",
        hanet_reduction=64, hanet_pos_noise=0.5, no_aux=True, img_wt_loss=True,
    ),
    # The whole network from the Mapillary snapshot (--snapshot: --init-from, every tensor whose
    # name and shape match), with coarse boosting of 7 classes (--coarse_boost_classes).
    "train_resnext_fr_pretrain": dict(
        _OFFICIAL_SCRIPT, train_split="trainval", backbone="resnext101_32x8d", output_stride=8,
        pretrained_backbone="none", init_from="pretrained/resnext_mapillary_0.47475.pth", crop_size=(864, 864),
        iters=90000, batch_size=2, hanet_reduction=64, hanet_pos_noise=0.5, cls_wt_loss=True,
        coarse_boost_classes="14,15,16,3,12,17,4",
    ),
}
# BDD100K (paper §4.3): crop 608, total batch 16, 60k iterations; no official script.
# The official tile (1024) fits no 720-row BDD100K image: their tile is BDD100K_CLASS_UNIFORM_TILE.
PRESETS["bdd100k-r101-os16"] = dict(PRESETS["train_r101_os16_hanet"], dataset="bdd100k", crop_size=(608, 608),
                                    iters=60000, batch_size=8, class_uniform_tile=BDD100K_CLASS_UNIFORM_TILE)
PRESETS["bdd100k-mobilenet-os16"] = dict(PRESETS["train_m_os16_hanet"], dataset="bdd100k", crop_size=(608, 608),
                                         iters=60000, batch_size=16, class_uniform_tile=BDD100K_CLASS_UNIFORM_TILE)

#: Processes (GPUs, ``torchrun --nproc_per_node``) each preset's total batch assumes: the
#: official script's ``--nproc_per_node``.
PRESET_PROCESSES = {"synthetic-mobilenet": 1, "train_r101_os8_hanet": 2, "train_r101_os8_hanet_best": 4,
                    "train_r101_os16_hanet": 2, "train_m_os16_hanet": 1, "train_resnext_pretrain": 6,
                    "train_resnext_fr_pretrain": 6,
                    "bdd100k-r101-os16": 2, "bdd100k-mobilenet-os16": 1}

DEFAULT_PRESET = "synthetic-mobilenet"


def preset_table() -> str:
    """The presets as a plain-text table: name, backbone, output stride, crop, iterations, batch."""
    head = ("preset", "backbone", "OS", "crop", "iterations", "batch")
    rows = [head] + [
        (name, cfg["backbone"], str(cfg["output_stride"]), "x".join(map(str, cfg["crop_size"])), str(cfg["iters"]),
         f"{cfg['batch_size']}x{PRESET_PROCESSES[name]}={cfg['batch_size'] * PRESET_PROCESSES[name]}")
        for name, cfg in PRESETS.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    marked = [lines[0]] + [line + ("  (default)" if name == DEFAULT_PRESET else "")
                           for line, name in zip(lines[1:], PRESETS)]
    return "presets:\n" + "\n".join("  " + line for line in marked)


def format_config(args: argparse.Namespace) -> str:
    """Every setting of ``args`` (a preset with any explicit flags applied), one ``key = value``
    line each, values as JSON, after a header naming the preset and its processes."""
    n = PRESET_PROCESSES[args.preset]
    lines = [f"# preset {args.preset}: total batch {args.batch_size * n} = --batch-size {args.batch_size} x {n} "
             f"process{'es' if n > 1 else ''} (torchrun --nproc_per_node={n})"]
    for key, value in sorted(vars(args).items()):
        if key != "print_config":
            lines.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return "\n".join(lines)


def format_config(settings: Mapping) -> str:
    """Every setting of ``settings`` (a preset with any explicit flags applied, as a mapping), one
    ``key = value`` line each, values as JSON, after a header naming the preset and its processes."""
    n = PRESET_PROCESSES[settings["preset"]]
    batch = settings["batch_size"]
    lines = [f"# preset {settings['preset']}: total batch {batch * n} = --batch-size {batch} x {n} "
             f"process{'es' if n > 1 else ''} (torchrun --nproc_per_node={n})"]
    for key, value in sorted(settings.items()):
        lines.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return "\n".join(lines)
