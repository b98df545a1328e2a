"""A tiny trained-format checkpoint for the CLI tests (infer, analyze): MobileNetV2 + HANet with
4 attention rows, random weights, saved as ``python -m hanet_fast.train`` saves its runs."""

from __future__ import annotations

import dataclasses
import json

import torch

from hanet_fast.models import HANetConfig, deeplabv3plus


def save_tiny_checkpoint(path, hanet_layers=(1, 0, 0, 1, 1), seed: int = 0) -> str:
    """Write the checkpoint to ``path`` and return it as a string."""
    torch.manual_seed(seed)
    model = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=19, hanet_layers=hanet_layers,
                          hanet=HANetConfig(rows=4), aux=False)
    torch.save({"model": model.state_dict(), "model_config": json.loads(json.dumps(dataclasses.asdict(model.config))),
                "args": {"dataset": "synthetic"}, "iteration": 0}, path)
    return str(path)
