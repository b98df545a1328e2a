"""``python -m hanet_fast.export``: a trained network as an ONNX file or a ``torch.export`` program.

```
python -m hanet_fast.export --checkpoint runs/<run> --format onnx --size 1024x2048
python -m hanet_fast.export --checkpoint runs/<run> --format pt2 --size 768x768 --dynamic
```

What is exported: the network in eval mode, HANet included, as ``images [B, 3, H, W]`` (normalised
as for :func:`hanet_fast.inference.predict`) -> ``logits [B, num_classes, H, W]`` (float32).
Every input is a full image: HANet's row positions are those of a full image of the input's
height (``arange(H) / H``, what ``predict`` uses without ``row_pos``). With a fixed ``--size``
they are constants of the graph; with ``--dynamic`` the batch, height and width are free and the
positions are computed from the input's height inside the graph.

Formats:

- ``onnx``: standard ONNX operators only. The fused HANet ops are first replaced by their matrix
  forms (:mod:`hanet_fast.ops.decompose`: ReduceMean / ReduceMax over the width, a bin matrix
  over the rows, a linear-interpolation matrix, Mul), so the file runs in any ONNX runtime
  without plugins. Weights are stored inside the one file.
- ``pt2``: a ``torch.export`` program saved with ``torch.export.save``. ``--pt2-ops portable``
  (the default) decomposes the fused ops in the same way: the file loads with
  ``torch.export.load`` in a Python that has torch but not hanet_fast. ``--pt2-ops fused``
  keeps the fused ``hanet_fast::`` ops (faster, differentiable with the fused backward): loading
  it needs ``import hanet_fast`` first, which registers those ops.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch
import torch.nn as nn

from hanet_fast._cli import HelpFormatter, add_run_checkpoint_arg, parse_args, run_checkpoint, size_arg
from hanet_fast.nn.positional import full_image_row_pos
from hanet_fast.ops.decompose import decompositions

__all__ = ["FORMATS", "PT2_OPS", "FullImageSegmenter", "export_program", "export_onnx", "export_pt2", "main"]

FORMATS = ("onnx", "pt2")
PT2_OPS = ("portable", "fused")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
EXPORT_DEPENDENCIES = "pip install -e \".[export]\" (onnx, onnxscript, onnxruntime)"


class FullImageSegmenter(nn.Module):
    """``images -> logits`` of a segmentation network, every input being a full image.

    Wraps a :class:`~hanet_fast.models.DeepLabV3PlusHANet` (or any module called as
    ``model(images, row_pos)`` that returns an object with ``.logits``), giving each image row
    its position ``r / H`` in a full image of the input's height ``H``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> ``[B, num_classes, H, W]`` float32 logits."""
        row_pos = full_image_row_pos(images.shape[0], images.shape[2], images.device)
        return self.model(images, row_pos).logits.float()


def _example(size: tuple[int, int], batch: int, dynamic: bool) -> torch.Tensor:
    if dynamic and batch < 2:
        # torch.export specialises a dimension traced at size 1; 2 keeps the batch symbolic.
        batch = 2
    return torch.randn(batch, 3, *size)


def _dynamic_shapes(dynamic: bool) -> dict | None:
    if not dynamic:
        return None
    free = torch.export.Dim.DYNAMIC
    return {"images": {0: free, 2: free, 3: free}}


def export_program(model: nn.Module, size: tuple[int, int], *, batch: int = 1, dynamic: bool = False,
                   decompose: bool = True) -> torch.export.ExportedProgram:
    """The network as a ``torch.export`` program ``images -> logits`` (see the module docstring).

    Args:
        model: the network; moved to the CPU and put in eval mode (in place).
        size: ``(H, W)`` of the example input traced; with ``dynamic=False`` the only size the
            program accepts, and the size whose row positions are baked in.
        batch: the batch size of the program (``dynamic=False``).
        dynamic: leave batch, height and width free.
        decompose: replace the fused HANet ops by their matrix forms (portable program).
    """
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ValueError(f"hanet_fast.export: size must be (height, width) positive ints, got {size!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"hanet_fast.export: batch must be a positive int, got {batch!r}")
    wrapper = FullImageSegmenter(model.to("cpu").eval()).eval()
    with torch.no_grad():
        program = torch.export.export(wrapper, (_example(size, batch, dynamic),),
                                      dynamic_shapes=_dynamic_shapes(dynamic))
    if decompose:
        program = program.run_decompositions(decompositions())
    return program


def export_pt2(model: nn.Module, path: str | os.PathLike, size: tuple[int, int], *, batch: int = 1,
               dynamic: bool = False, decompose: bool = True) -> str:
    """Write :func:`export_program`'s program to ``path`` with ``torch.export.save``; returns the path."""
    program = export_program(model, size, batch=batch, dynamic=dynamic, decompose=decompose)
    torch.export.save(program, os.fspath(path))
    return os.fspath(path)


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int], *, batch: int = 1,
                dynamic: bool = False) -> str:
    """Write the network as a self-contained ONNX file (standard operators only); returns the path.

    Raises:
        ImportError: onnx or onnxscript is not installed (``pip install -e ".[export]"``).
    """
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError as e:
            raise ImportError(f"hanet_fast.export: ONNX export needs {module}: {EXPORT_DEPENDENCIES}") from e
    program = export_program(model, size, batch=batch, dynamic=dynamic, decompose=True)
    example = _example(size, batch, dynamic)
    # The exporter's own progress lines go to stdout; ours is the one summary line.
    torch.onnx.export(program, (example,), os.fspath(path), dynamo=True, external_data=False,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=_dynamic_shapes(dynamic), verbose=False)
    import onnx

    onnx.checker.check_model(os.fspath(path))
    return os.fspath(path)


def default_output(checkpoint: str, fmt: str, size: tuple[int, int], dynamic: bool, pt2_ops: str,
                   run_checkpoint: str = "last") -> str:
    """``<checkpoint folder>/<stem>-<H>x<W>[-dynamic][-fused].<fmt>``: next to the checkpoint, named
    by what the file accepts (a run folder's: ``model``, or ``best`` for its ``best.pt``)."""
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    stem = ("model" if run_checkpoint == "last" else "best") if os.path.isdir(checkpoint) else \
        os.path.splitext(os.path.basename(checkpoint))[0]
    name = f"{stem}-{size[0]}x{size[1]}" + ("-dynamic" if dynamic else "")
    name += "-fused" if fmt == "pt2" and pt2_ops == "fused" else ""
    return os.path.join(folder or ".", f"{name}.{fmt}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hanet_fast.export",
        description="Export a trained DeepLabv3+/HANet network (eval mode, HANet included) for deployment: an ONNX "
                    "file that runs in any ONNX runtime, or a torch.export program (.pt2).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint.pt (or best.pt) or run folder of python -m hanet_fast.train (it gives checkpoint.pt; "
                        "--run-checkpoint best: best.pt), or an official HANet checkpoint")
    add_run_checkpoint_arg(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (standard operators) or pt2 (torch.export)")
    p.add_argument("--size", required=True, type=size_arg, metavar="HxW",
                   help="input size HxW traced; without --dynamic the only size the export accepts")
    p.add_argument("--dynamic", action="store_true",
                   help="free batch, height and width (HANet's row positions computed from the input height)")
    p.add_argument("--batch", type=int, default=1, help="batch size of a fixed-size export")
    p.add_argument("--pt2-ops", choices=PT2_OPS, default="portable",
                   help="pt2: portable (fused ops decomposed; loads without hanet_fast) or fused (needs "
                        "import hanet_fast before torch.export.load)")
    p.add_argument("--backbone", default=None, help="official checkpoints: backbone, if it cannot be inferred")
    p.add_argument("--output-stride", type=int, choices=[8, 16, 32], default=None,
                   help="official checkpoints: output stride, if the file does not say; ours: export at this stride")
    p.add_argument("--out", default=None,
                   help="output file (default: next to the checkpoint, <stem>-<H>x<W>[-dynamic][-fused].<format>)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    if args.dynamic and args.batch != 1:
        p.error("--batch fixes the batch size; --dynamic leaves it free: give one of them")
    if args.pt2_ops != "portable" and args.format != "pt2":
        p.error("--pt2-ops applies to --format pt2 only (ONNX files always hold the decomposed ops)")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")


def main(argv: Sequence[str] | None = None) -> str:
    """Run the export; returns the file written."""
    from hanet_fast.inference import load_model

    p = build_parser()
    args = parse_args(p, None if argv is None else list(argv), _check_args)
    out = args.out or default_output(args.checkpoint, args.format, args.size, args.dynamic, args.pt2_ops,
                                     args.run_checkpoint)
    if os.path.exists(out) and not args.overwrite:
        p.exit(2, f"{p.prog}: error: --out {out} exists; pass --overwrite to replace it\n")
    try:
        model, info = load_model(run_checkpoint(args.checkpoint, args.run_checkpoint), device="cpu", backbone=args.backbone,
                                 output_stride=args.output_stride)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        if args.format == "onnx":
            export_onnx(model, out, args.size, batch=args.batch, dynamic=args.dynamic)
        else:
            export_pt2(model, out, args.size, batch=args.batch, dynamic=args.dynamic,
                       decompose=args.pt2_ops == "portable")
    except (FileNotFoundError, ValueError, ImportError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    shape = "B x 3 x H x W (any)" if args.dynamic else f"{args.batch} x 3 x {args.size[0]} x {args.size[1]}"
    print(f"wrote {out}: {args.format} ({args.pt2_ops if args.format == 'pt2' else 'standard ONNX operators'}), "
          f"input {INPUT_NAME!r} {shape}, output {OUTPUT_NAME!r}; {info['source']} checkpoint {info['path']}",
          file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
