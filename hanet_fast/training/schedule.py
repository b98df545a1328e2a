"""Poly learning-rate schedule (paper §4.1): ``lr = base_lr * (1 - it / max_iter) ** power``,
with its own power per parameter group (HANet has its own lr and power in the official code)."""

from __future__ import annotations

import torch


def poly_scheduler(optimizer: torch.optim.Optimizer, max_iter: int, powers: list[float]) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per iteration; ``powers[i]`` for ``optimizer.param_groups[i]``."""
    def make(power: float):
        return lambda it: max(1.0 - it / max_iter, 0.0) ** power
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [make(p) for p in powers])
