"""Autograd of every op family that implements the schemas of csrc/hanet_ops.cpp: the C++ ops
(``hanet_fast::height_gate``, ...) and the Triton ops (``hanet_fast::height_gate_triton``, ...).
A family is named by the suffix of its op names.

Every op, forward and backward, has a formula, so gradients of any order are exact. The
backward ops are linear in the gradient they take, and their own derivatives are the ops again:

* ``height_pool_avg_backward`` is the transpose of average pooling: its derivative with
  respect to ``grad_out`` is ``height_pool_avg`` of the incoming gradient;
* ``height_pool_max_backward`` scatters ``grad_out`` to the saved argmax: its derivative is
  a gather at the same indices;
* ``height_gate_backward`` gives ``grad_x = grad_y * up(attn)`` (the forward op) and
  ``grad_attn = up^T(sum_w grad_y * x)`` (``height_gate_attn_backward``), bilinear in
  ``(grad_y, x)`` and ``(grad_y, attn)``: each derivative is one of those two ops.

Forward mode (``torch.autograd.forward_ad``, ``torch.func.jvp``/``jacfwd``) uses the same
linearity: the tangent of average pooling is the pooling of the tangent, that of max pooling
the tangent gathered at the argmax, and the gate, linear in ``x`` and in ``attn``, gives
``gate(dx, attn) + gate(x, dattn)``; the backward ops, bilinear, likewise (``jvp`` rules).

The formulas live in ``torch.autograd.Function`` classes (one per op, the family passed as an
argument) with ``setup_context``, ``jvp`` and ``vmap`` rules, so that torch.func (``grad``, ``jacrev``,
``vmap``, ``jvp``) can run them: the ``autograd.Function`` that ``torch.library.register_autograd``
generates has no ``setup_context``, and torch.func refuses it ("must override the
setup_context staticmethod"). :func:`register_autograd` registers the same formulas on the
ops themselves for plain autograd (direct ``torch.ops`` calls, torch.compile, export), and
:func:`apply` is what the public functions call; it takes the Function whenever a dual tensor
is among the inputs, since ``register_autograd`` has no forward mode (the op would return a
result with no tangent).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.autograd.forward_ad as forward_ad
from torch.autograd import Function

from hanet_fast.ops.layout import is_channels_last


def _op(name: str, suffix: str):
    return getattr(torch.ops.hanet_fast, name + suffix)


# ----------------------------------------------------------------------------- vmap
def _vmap_by_batch(info, in_dims, fn: Callable, *args) -> tuple[Any, Any]:
    """The vmap rule of every op: the ops take any batch size B, so the vmapped dimension (N) is
    folded into it, ``[N, B, ...] -> [N * B, ...]``, and unfolded from each tensor result."""
    size = info.batch_size
    folded = []
    for arg, dim in zip(args, in_dims):
        if isinstance(arg, torch.Tensor):
            arg = arg.movedim(dim, 0) if dim is not None else arg.expand(size, *arg.shape)
            arg = arg.reshape(size * arg.shape[1], *arg.shape[2:])
        folded.append(arg)
    out = fn(*folded)
    if isinstance(out, tuple):
        return tuple(o.reshape(size, -1, *o.shape[1:]) for o in out), tuple(0 for _ in out)
    return out.reshape(size, -1, *out.shape[1:]), 0


# ----------------------------------------------------------------------------- forward mode
def _linear_jvp(fn: Callable, suffix: str, pairs, *rest) -> torch.Tensor | None:
    """Tangent of an op ``name(a, b, *rest)`` linear in each of ``a`` and ``b``: the sum over
    ``pairs`` ``((a, b), ...)`` (one tangent in each pair, the other a primal) of ``fn(a, b, *rest)``,
    pairs holding a None tangent left out; None when every pair does."""
    terms = [fn(suffix, a, b, *rest) for a, b in pairs if a is not None and b is not None]
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _gate(suffix: str, x, attn):
    return apply("height_gate", suffix, x, attn)


def _gate_attn_backward(suffix: str, grad_y, x, rows):
    return apply("height_gate_attn_backward", suffix, grad_y, x, rows)


def _has_tangent(args) -> bool:
    """Whether an argument is a dual tensor of the current forward-AD level."""
    if forward_ad._current_level < 0:  # no dual_level open (the common case: one int compare)
        return False
    return any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args)


# ----------------------------------------------------------------------------- pooling
def _save_pool_input(ctx, x: torch.Tensor, rows: int, suffix: str) -> None:
    ctx.height, ctx.width, ctx.rows = x.shape[2], x.shape[3], rows
    ctx.channels_last = is_channels_last(x)
    ctx.suffix = suffix


class PoolAvg(Function):
    """``height_pool_avg<suffix>(x, rows)``."""

    @staticmethod
    def forward(x, rows, suffix):
        return _op("height_pool_avg", suffix)(x, rows)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, rows, suffix = inputs
        _save_pool_input(ctx, x, rows, suffix)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = apply("height_pool_avg_backward", ctx.suffix, grad_out, ctx.height, ctx.width, ctx.channels_last)
        return grad_x, None, None

    @staticmethod
    def jvp(ctx, x_t, _rows_t, _suffix_t):
        return apply("height_pool_avg", ctx.suffix, x_t, ctx.rows)

    @staticmethod
    def vmap(info, in_dims, x, rows, suffix):
        return _vmap_by_batch(info, in_dims, PoolAvg.apply, x, rows, suffix)


class PoolMax(Function):
    """``height_pool_max<suffix>(x, rows) -> (values, argmax)``."""

    @staticmethod
    def forward(x, rows, suffix):
        return _op("height_pool_max", suffix)(x, rows)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, rows, suffix = inputs
        _save_pool_input(ctx, x, rows, suffix)
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.save_for_forward(output[1])

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):
        (indices,) = ctx.saved_tensors
        grad_x = apply(
            "height_pool_max_backward", ctx.suffix, grad_values, indices, ctx.height, ctx.width, ctx.channels_last
        )
        return grad_x, None, None

    @staticmethod
    def jvp(ctx, x_t, _rows_t, _suffix_t):
        (indices,) = ctx.saved_tensors
        return x_t.flatten(2).gather(2, indices), None

    @staticmethod
    def vmap(info, in_dims, x, rows, suffix):
        return _vmap_by_batch(info, in_dims, PoolMax.apply, x, rows, suffix)


class PoolAvgBackward(Function):
    """``height_pool_avg_backward<suffix>(grad_out, height, width, channels_last)``."""

    @staticmethod
    def forward(grad_out, height, width, channels_last, suffix):
        return _op("height_pool_avg_backward", suffix)(grad_out, height, width, channels_last)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, height, width, channels_last, suffix = inputs
        ctx.rows, ctx.suffix = grad_out.shape[2], suffix
        ctx.shape = (height, width, channels_last)

    @staticmethod
    def backward(ctx, grad_grad_x):
        return apply("height_pool_avg", ctx.suffix, grad_grad_x, ctx.rows), None, None, None, None

    @staticmethod
    def jvp(ctx, grad_out_t, *_):
        return apply("height_pool_avg_backward", ctx.suffix, grad_out_t, *ctx.shape)

    @staticmethod
    def vmap(info, in_dims, grad_out, height, width, channels_last, suffix):
        return _vmap_by_batch(info, in_dims, PoolAvgBackward.apply, grad_out, height, width, channels_last, suffix)


class PoolMaxBackward(Function):
    """``height_pool_max_backward<suffix>(grad_out, indices, height, width, channels_last)``."""

    @staticmethod
    def forward(grad_out, indices, height, width, channels_last, suffix):
        return _op("height_pool_max_backward", suffix)(grad_out, indices, height, width, channels_last)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])
        ctx.shape, ctx.suffix = inputs[2:5], inputs[5]

    @staticmethod
    def backward(ctx, grad_grad_x):
        (indices,) = ctx.saved_tensors
        # The indices were checked by the op itself (flat h * W + w inside each bin's rows).
        grad_grad_out = grad_grad_x.flatten(2).gather(2, indices)
        return grad_grad_out, None, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_out_t, *_):
        (indices,) = ctx.saved_tensors
        return apply("height_pool_max_backward", ctx.suffix, grad_out_t, indices, *ctx.shape)

    @staticmethod
    def vmap(info, in_dims, grad_out, indices, height, width, channels_last, suffix):
        return _vmap_by_batch(
            info, in_dims, PoolMaxBackward.apply, grad_out, indices, height, width, channels_last, suffix
        )


# ----------------------------------------------------------------------------- gating
class Gate(Function):
    """``height_gate<suffix>(x, attn)``."""

    @staticmethod
    def forward(x, attn, suffix):
        return _op("height_gate", suffix)(x, attn)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, attn, suffix = inputs
        needs_x, needs_attn = ctx.needs_input_grad[:2]
        # grad_x needs attn; grad_attn needs x: keep only what the requested gradients read.
        ctx.save_for_backward(x if needs_attn else None, attn if needs_x else None)
        ctx.save_for_forward(x, attn)
        ctx.rows, ctx.suffix = attn.shape[2], suffix

    @staticmethod
    def backward(ctx, grad_y):
        x, attn = ctx.saved_tensors
        needs_x, needs_attn = ctx.needs_input_grad[:2]
        if needs_x and needs_attn:
            return (*apply("height_gate_backward", ctx.suffix, grad_y, x, attn), None)
        if needs_x:  # grad_x = grad_y * up(attn) is the forward op itself
            return apply("height_gate", ctx.suffix, grad_y, attn), None, None
        return None, apply("height_gate_attn_backward", ctx.suffix, grad_y, x, ctx.rows), None

    @staticmethod
    def jvp(ctx, x_t, attn_t, _suffix_t):
        x, attn = ctx.saved_tensors
        return _linear_jvp(_gate, ctx.suffix, ((x_t, attn), (x, attn_t)))

    @staticmethod
    def vmap(info, in_dims, x, attn, suffix):
        return _vmap_by_batch(info, in_dims, Gate.apply, x, attn, suffix)


class GateBackward(Function):
    """``height_gate_backward<suffix>(grad_y, x, attn) -> (grad_x, grad_attn)``."""

    @staticmethod
    def forward(grad_y, x, attn, suffix):
        return _op("height_gate_backward", suffix)(grad_y, x, attn)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_y, x, attn, suffix = inputs
        ctx.save_for_backward(grad_y, x, attn)
        ctx.save_for_forward(grad_y, x, attn)
        ctx.rows, ctx.suffix = attn.shape[2], suffix

    @staticmethod
    def backward(ctx, grad_grad_x, grad_grad_attn):
        grad_y, x, attn = ctx.saved_tensors
        needs_grad_y, needs_x, needs_attn = ctx.needs_input_grad[:3]
        s = ctx.suffix
        # grad_x = grad_y * up(attn);  grad_attn = up^T(sum_w grad_y * x).
        d_grad_y = None
        if needs_grad_y:
            d_grad_y = apply("height_gate", s, grad_grad_x, attn) + apply("height_gate", s, x, grad_grad_attn)
        d_x = apply("height_gate", s, grad_y, grad_grad_attn) if needs_x else None
        d_attn = apply("height_gate_attn_backward", s, grad_grad_x, grad_y, ctx.rows) if needs_attn else None
        return d_grad_y, d_x, d_attn, None

    @staticmethod
    def jvp(ctx, grad_y_t, x_t, attn_t, _suffix_t):
        grad_y, x, attn = ctx.saved_tensors
        s = ctx.suffix
        grad_x_t = _linear_jvp(_gate, s, ((grad_y_t, attn), (grad_y, attn_t)))
        grad_attn_t = _linear_jvp(_gate_attn_backward, s, ((grad_y_t, x), (grad_y, x_t)), ctx.rows)
        return grad_x_t, grad_attn_t

    @staticmethod
    def vmap(info, in_dims, grad_y, x, attn, suffix):
        return _vmap_by_batch(info, in_dims, GateBackward.apply, grad_y, x, attn, suffix)


class GateAttnBackward(Function):
    """``height_gate_attn_backward<suffix>(grad_y, x, rows) = up^T(sum_w grad_y * x)``."""

    @staticmethod
    def forward(grad_y, x, rows, suffix):
        return _op("height_gate_attn_backward", suffix)(grad_y, x, rows)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_y, x, rows, suffix = inputs
        ctx.save_for_backward(grad_y, x)
        ctx.save_for_forward(grad_y, x)
        ctx.rows, ctx.suffix = rows, suffix

    @staticmethod
    def backward(ctx, grad_grad_attn):
        grad_y, x = ctx.saved_tensors
        needs_grad_y, needs_x = ctx.needs_input_grad[:2]
        d_grad_y = apply("height_gate", ctx.suffix, x, grad_grad_attn) if needs_grad_y else None
        d_x = apply("height_gate", ctx.suffix, grad_y, grad_grad_attn) if needs_x else None
        return d_grad_y, d_x, None, None

    @staticmethod
    def jvp(ctx, grad_y_t, x_t, _rows_t, _suffix_t):
        grad_y, x = ctx.saved_tensors
        return _linear_jvp(_gate_attn_backward, ctx.suffix, ((grad_y_t, x), (grad_y, x_t)), ctx.rows)

    @staticmethod
    def vmap(info, in_dims, grad_y, x, rows, suffix):
        return _vmap_by_batch(info, in_dims, GateAttnBackward.apply, grad_y, x, rows, suffix)


# Each op by name (without the family suffix) and its Function.
FUNCTIONS: dict[str, type[Function]] = {
    "height_pool_avg": PoolAvg,
    "height_pool_max": PoolMax,
    "height_pool_avg_backward": PoolAvgBackward,
    "height_pool_max_backward": PoolMaxBackward,
    "height_gate": Gate,
    "height_gate_backward": GateBackward,
    "height_gate_attn_backward": GateAttnBackward,
}


def apply(name: str, suffix: str, *args):
    """Calls op ``name`` of family ``suffix`` with autograd: directly (the formulas registered on
    the op by :func:`register_autograd`), or through its Function when a torch.func transform is
    active, which refuses the op's own registration (see the module docstring)."""
    if not torch.compiler.is_compiling() and (torch._C._are_functorch_transforms_active() or _has_tangent(args)):
        return FUNCTIONS[name].apply(*args, suffix)
    return _op(name, suffix)(*args)


def register_autograd(suffix: str = "") -> None:
    """Registers the formulas of the :data:`FUNCTIONS` on the ops of family ``suffix``."""

    def register(name: str, fn: type[Function]) -> None:
        def setup_context(ctx, inputs, output):
            fn.setup_context(ctx, (*inputs, suffix), output)

        def backward(ctx, *grads):
            return fn.backward(ctx, *grads)[:-1]  # drop the family argument's None

        torch.library.register_autograd(f"hanet_fast::{name}{suffix}", backward, setup_context=setup_context)

    for name, fn in FUNCTIONS.items():
        register(name, fn)
