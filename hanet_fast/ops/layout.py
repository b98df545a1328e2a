"""The one rule for which memory format a kernel runs in and writes.

A tensor that is contiguous runs as NCHW (this also covers tensors that are both,
e.g. C == 1 or H == W == 1); otherwise one that is channels_last-contiguous runs as
NHWC; anything else is copied to NCHW first. csrc/layout.h implements the same rule.
"""

from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """True when a kernel reads ``x`` as NHWC without a copy."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format the kernels give outputs shaped like ``x``."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format
