"""The network of a training run and what trains it: SGD with the HANet parameters in their own
group (own learning rate, weight decay and poly power, as the official optimizer.py), the poly
schedule, and the AMP gradient scaler."""

from __future__ import annotations

import torch

from hanet_fast.models import DeepLabV3PlusHANet, HANetConfig, deeplabv3plus
from hanet_fast.training.config import TrainConfig
from hanet_fast.training.schedule import poly_scheduler

__all__ = ["build_model", "build_optimization"]


def build_model(cfg: TrainConfig, num_classes: int) -> DeepLabV3PlusHANet:
    """DeepLabv3+ with ``num_classes`` outputs and the HANet layers, backbone and pretrained
    weights ``cfg`` names.

    Raises:
        ValueError: an unknown backbone. FileNotFoundError: a missing weights file.
    """
    layers = tuple(int(v) for v in str(cfg.hanet_layers).split(","))
    hanet = HANetConfig(rows=cfg.hanet_rows, reduction=cfg.hanet_reduction, dropout=cfg.hanet_dropout,
                        pos_encoding=None if cfg.no_pos_encoding else "sinusoidal",
                        pos_injection=cfg.hanet_pos_injection, pos_noise=cfg.hanet_pos_noise)
    pretrained = None if str(cfg.pretrained_backbone).lower() in ("none", "") else cfg.pretrained_backbone
    return deeplabv3plus(backbone=cfg.backbone, output_stride=cfg.output_stride, num_classes=num_classes,
                         hanet_layers=layers, hanet=hanet, aux=not cfg.no_aux, pretrained_backbone=pretrained)


def build_optimization(cfg: TrainConfig, net: DeepLabV3PlusHANet, device: torch.device):
    """``(optimizer, scheduler, scaler)``: SGD over the network's ``main`` and ``hanet`` parameter
    groups, a poly schedule stepped once per iteration over ``cfg.iters``, and a GradScaler that
    is on for ``--amp fp16`` only."""
    groups = net.param_groups(cfg.weight_decay, cfg.hanet_weight_decay)
    for group in groups:
        group["lr"] = cfg.hanet_lr if group["name"] == "hanet" else cfg.lr
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    powers = [cfg.hanet_poly_power if g["name"] == "hanet" else cfg.poly_power for g in groups]
    scheduler = poly_scheduler(optimizer, cfg.iters, powers)
    scaler = torch.amp.GradScaler(device.type, enabled=(cfg.amp == "fp16"))
    return optimizer, scheduler, scaler
