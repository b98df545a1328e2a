"""Small helpers shared by the command-line tools (``train``, ``evaluate``, ``infer``, ``analyze``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch

__all__ = ["HelpFormatter", "size_arg", "resolve_device", "scales_arg", "parse_args", "add_compile_arg", "compile_model",
           "default_out"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only for defaults worth reading (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def size_arg(text: str) -> tuple[int, int]:
    """argparse type: ``HxW``, ``H,W`` or one number for a square -> ``(H, W)`` positive ints."""
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW, H,W or one size (positive integers), got {text!r}")
    return parts[0], parts[1]


def scales_arg(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated positive scales, e.g. ``0.5,1,2``."""
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or any(not s > 0 or s == float("inf") for s in scales):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers such as 0.5,1,2, got {text!r}")
    return scales


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None,
               check: Callable[[argparse.ArgumentParser, argparse.Namespace], None]) -> argparse.Namespace:
    """Parse ``argv``, run the tool's ``check(parser, args)`` (which calls ``parser.error``) and
    apply ``--threads`` (0: torch's default)."""
    args = parser.parse_args(argv)
    check(parser, args)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    return args


def resolve_device(text: str) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:N``...; ValueError
    naming the problem for an unknown or unavailable device."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise ValueError(f"--device {text!r} is not a device: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text!r}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


COMPILE_HELP = ("torch.compile the whole network (slow first batches while it compiles, then faster; "
                "checkpoints stay interchangeable with eager runs)")


def add_compile_arg(group) -> None:
    """The ``--compile`` flag of ``train``, ``evaluate`` and ``infer`` (one help text for all three)."""
    group.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` ``model`` in place and return it.

    ``nn.Module.compile`` compiles the module's forward without wrapping it in an
    ``OptimizedModule``, so ``state_dict()`` keeps its plain keys (no ``_orig_mod.`` prefix) and a
    checkpoint written by a compiled run loads into an eager one and back."""
    model.compile()
    return model


def default_out(out: str | None, checkpoint: str | None, name: str) -> str:
    """``--out`` of ``infer`` / ``analyze``: as given; else the subfolder ``name`` of the run folder
    given as ``--checkpoint``; else ``name`` in the current folder."""
    if out is not None:
        return out
    if checkpoint is not None and os.path.isdir(checkpoint):
        return os.path.join(checkpoint, name)
    return name
