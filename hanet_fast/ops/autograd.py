"""Autograd of the forward ops, for every op family that implements the schemas of
csrc/hanet_ops.cpp: the C++ ops (``hanet_fast::height_gate``, ...) and the Triton ops
(``hanet_fast::height_gate_triton``, ...). A family is named by the suffix of its op names.
"""

from __future__ import annotations

import torch

from hanet_fast.ops.layout import is_channels_last


def _op(name: str, suffix: str):
    return getattr(torch.ops.hanet_fast, name + suffix)


def _pool_setup_context(ctx, inputs, output) -> None:
    x, _rows = inputs
    ctx.height, ctx.width = x.shape[2], x.shape[3]
    ctx.channels_last = is_channels_last(x)
    if isinstance(output, tuple):  # max pooling saves its argmax
        ctx.save_for_backward(output[1])


def _gate_setup_context(ctx, inputs, output) -> None:
    x, attn = inputs
    needs_x, needs_attn = ctx.needs_input_grad[:2]
    # grad_x needs attn; grad_attn needs x: keep only what the requested gradients read.
    ctx.save_for_backward(x if needs_attn else None, attn if needs_x else None)
    ctx.rows = attn.shape[2]


def register_autograd(suffix: str = "") -> None:
    """Registers the backward formulas of ``height_pool_{avg,max}<suffix>`` and
    ``height_gate<suffix>``, which call that family's fused backward ops."""

    def pool_avg_backward(ctx, grad_out):
        op = _op("height_pool_avg_backward", suffix)
        return op(grad_out, ctx.height, ctx.width, ctx.channels_last), None

    def pool_max_backward(ctx, grad_values, _grad_indices):
        (indices,) = ctx.saved_tensors
        op = _op("height_pool_max_backward", suffix)
        return op(grad_values, indices, ctx.height, ctx.width, ctx.channels_last), None

    def gate_backward(ctx, grad_y):
        x, attn = ctx.saved_tensors
        needs_x, needs_attn = ctx.needs_input_grad[:2]
        if needs_x and needs_attn:
            return _op("height_gate_backward", suffix)(grad_y, x, attn)
        if needs_x:  # grad_x = grad_y * up(attn) is the forward op itself
            return _op("height_gate", suffix)(grad_y, attn), None
        return None, _op("height_gate_attn_backward", suffix)(grad_y, x, ctx.rows)

    lib = "hanet_fast::"
    torch.library.register_autograd(lib + "height_pool_avg" + suffix, pool_avg_backward, setup_context=_pool_setup_context)
    torch.library.register_autograd(lib + "height_pool_max" + suffix, pool_max_backward, setup_context=_pool_setup_context)
    torch.library.register_autograd(lib + "height_gate" + suffix, gate_backward, setup_context=_gate_setup_context)
