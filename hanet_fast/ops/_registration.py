"""Python halves of the C++ operators: fake kernels and autograd (DESIGN §2).

The schemas live in csrc/hanet_ops.cpp. Every op gets a fake kernel so that
torch.compile and opcheck can trace it; every op, forward and backward, gets an autograd
formula (hanet_fast/ops/autograd.py), so gradients of any order are exact.
"""

from __future__ import annotations

import torch

from hanet_fast.ops import _validate
from hanet_fast.ops.autograd import register_autograd
from hanet_fast.ops.layout import memory_format_of

_lib = "hanet_fast::"


# ----------------------------------------------------------------------------- fake kernels
@torch.library.register_fake(_lib + "height_pool_avg")
def _height_pool_avg_fake(x: torch.Tensor, rows: int) -> torch.Tensor:
    _validate.check_height_pool(x, rows)
    return x.new_empty((x.shape[0], x.shape[1], rows))


@torch.library.register_fake(_lib + "height_pool_max")
def _height_pool_max_fake(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    _validate.check_height_pool(x, rows)
    shape = (x.shape[0], x.shape[1], rows)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


def _grad_input_like(grad_out: torch.Tensor, height, width, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], height, width)).contiguous(memory_format=fmt)


@torch.library.register_fake(_lib + "height_pool_avg_backward")
def _height_pool_avg_backward_fake(grad_out, height, width, channels_last):
    return _grad_input_like(grad_out, height, width, channels_last)


@torch.library.register_fake(_lib + "height_pool_max_backward")
def _height_pool_max_backward_fake(grad_out, indices, height, width, channels_last):
    return _grad_input_like(grad_out, height, width, channels_last)


@torch.library.register_fake(_lib + "height_gate")
def _height_gate_fake(x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    _validate.check_height_gate(x, attn)
    return torch.empty_like(x, memory_format=memory_format_of(x))


@torch.library.register_fake(_lib + "height_gate_backward")
def _height_gate_backward_fake(grad_y, x, attn):
    return torch.empty_like(x, memory_format=memory_format_of(x)), torch.empty_like(attn, memory_format=torch.contiguous_format)


@torch.library.register_fake(_lib + "height_gate_attn_backward")
def _height_gate_attn_backward_fake(grad_y, x, rows):
    return x.new_empty((x.shape[0], x.shape[1], rows))


# ----------------------------------------------------------------------------- autograd
register_autograd()
