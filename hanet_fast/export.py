"""``python -m hanet_fast.export``: a trained network as an ONNX file or a ``torch.export`` program.

```
python -m hanet_fast.export --checkpoint runs/<run> --format onnx --size 1024x2048
python -m hanet_fast.export --checkpoint runs/<run> --format pt2 --size 768x768 --dynamic
```

What is exported: the network in eval mode, HANet included, as ``images [B, 3, H, W]`` (normalised
as for :func:`hanet_fast.inference.predict`) -> ``logits [B, num_classes, H, W]`` (float32).
Every input is a full image: HANet's row positions are those of a full image of the input's
height (``arange(H) / H``, what ``predict`` and the model use without ``row_pos``). With a fixed
``--size`` they are constants of the graph; with ``--dynamic`` the batch, height and width are
free and the positions are computed from the input's height inside the graph.

Sizes a ``--dynamic`` graph accepts: ``torch.export`` fixes, while tracing, every choice that
depends on a size (a feature map of one row is upsampled and laid out unlike a taller one), so
the graph serves the sizes that make the same choices as the traced one: ``H >= H_min`` and
``W >= W_min``, where ``H_min`` is one more than the network's largest stride (17 for
MobileNetV2 at output stride 16). The export reads that range from the program, prints it, and
stores it in the file (pt2: the program's range constraints, which refuse other sizes with a
guard error; ONNX: the metadata properties ``hanet_fast.min_height`` and
``hanet_fast.min_width``, since an ONNX runtime checks no such range). A ``--size`` below that
range would give a graph bounded above (e.g. 16x16: only 9..16 rows), so it is refused, naming
the size to trace instead. ``--size`` is at most :data:`MAX_SIDE` per side.

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
from torch.utils._sympy.numbers import int_oo

from hanet_fast import _io
from hanet_fast._cli import (HelpFormatter, add_run_checkpoint_arg, check_outputs, checkpoint_files, parse_args,
                             run_checkpoint, size_arg)
from hanet_fast.nn.positional import full_image_row_pos
from hanet_fast.ops.decompose import decompositions

__all__ = ["FORMATS", "PT2_OPS", "MAX_SIDE", "FullImageSegmenter", "export_program", "dynamic_size_range",
           "export_onnx", "export_pt2", "main"]

FORMATS = ("onnx", "pt2")
#: Largest traced height or width: the example input is a real tensor (8192 x 8192 x 3 floats: 0.8 GB).
MAX_SIDE = 8192
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


def dynamic_size_range(program: torch.export.ExportedProgram) -> dict[str, tuple[int, int | None]]:
    """``{"height": (min, max), "width": (min, max)}`` of the input sizes a program accepts
    (``max`` None: unbounded); a fixed dimension has ``min == max``."""
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == INPUT_NAME)
    bounds = {}
    for name, dim in (("height", 2), ("width", 3)):
        size = node.meta["val"].shape[dim]
        if not isinstance(size, torch.SymInt):
            bounds[name] = (int(size), int(size))
            continue
        found = program.range_constraints[size.node.expr]
        bounds[name] = (int(found.lower), None if found.upper == int_oo else int(found.upper))
    return bounds


def describe_sizes(bounds: dict[str, tuple[int, int | None]]) -> str:
    """``H >= 17, W >= 17`` (or ``H in [9, 16]``...) for :func:`dynamic_size_range`'s result."""
    parts = []
    for letter, (low, high) in zip("HW", bounds.values()):
        parts.append(f"{letter} >= {low}" if high is None else f"{letter} in [{low}, {high}]")
    return ", ".join(parts)


def _check_size(size: tuple[int, int]) -> None:
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ValueError(f"hanet_fast.export: size must be (height, width) positive ints, got {size!r}")
    if max(size) > MAX_SIDE:
        raise ValueError(f"hanet_fast.export: size {size[0]}x{size[1]} is too large to trace: at most {MAX_SIDE} "
                         "per side (a --dynamic export serves larger inputs)")


def _refuse_bounded(program: torch.export.ExportedProgram, size: tuple[int, int]) -> None:
    """ValueError when a dynamic program traced at ``size`` serves only sizes up to a bound."""
    bounds = dynamic_size_range(program)
    if all(high is None for _, high in bounds.values()):
        return
    wanted = [size[i] if high is None else high + 1 for i, (_, high) in enumerate(bounds.values())]
    raise ValueError(
        f"hanet_fast.export: --size {size[0]}x{size[1]} is too small to trace a --dynamic graph: traced there it "
        f"would accept only {describe_sizes(bounds)} (feature maps of one row or column); trace at "
        f"--size {wanted[0]}x{wanted[1]} or larger, which serves every size from a minimum up")


def export_program(model: nn.Module, size: tuple[int, int], *, batch: int = 1, dynamic: bool = False,
                   decompose: bool = True) -> torch.export.ExportedProgram:
    """The network as a ``torch.export`` program ``images -> logits`` (see the module docstring).

    Args:
        model: the network; moved to the CPU and put in eval mode (in place).
        size: ``(H, W)`` of the example input traced; with ``dynamic=False`` the only size the
            program accepts, and the size whose row positions are baked in.
        batch: the batch size of the program (``dynamic=False``).
        dynamic: leave batch, height and width free, from a minimum up
            (:func:`dynamic_size_range` of the program; see the module docstring).
        decompose: replace the fused HANet ops by their matrix forms (portable program).

    Raises:
        ValueError: a bad ``size`` or ``batch``, a side over :data:`MAX_SIDE`, or (dynamic) a
            ``size`` too small to trace a graph unbounded above.
    """
    _check_size(size)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"hanet_fast.export: batch must be a positive int, got {batch!r}")
    wrapper = FullImageSegmenter(model.to("cpu").eval()).eval()
    with torch.no_grad():
        program = torch.export.export(wrapper, (_example(size, batch, dynamic),),
                                      dynamic_shapes=_dynamic_shapes(dynamic))
    if dynamic:
        _refuse_bounded(program, size)
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

    With ``dynamic`` the sizes it serves are in its metadata properties ``hanet_fast.min_height``
    and ``hanet_fast.min_width`` (and ``hanet_fast.input_sizes`` in words).

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
    onnx_program = torch.onnx.export(program, (example,), dynamo=True, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], dynamic_shapes=_dynamic_shapes(dynamic),
                                     verbose=False)
    if dynamic:
        bounds = dynamic_size_range(program)
        onnx_program.model.metadata_props.update({
            "hanet_fast.min_height": str(bounds["height"][0]), "hanet_fast.min_width": str(bounds["width"][0]),
            "hanet_fast.input_sizes": describe_sizes(bounds)})
    onnx_program.save(os.fspath(path), external_data=False)
    import onnx

    onnx.checker.check_model(os.fspath(path))
    return os.fspath(path)


def exported_sizes(path: str | os.PathLike, fmt: str) -> str:
    """The input sizes a written ``--dynamic`` file serves, in words (``H >= 17, W >= 17``), read
    from the file itself: the ONNX metadata :func:`export_onnx` stores, or the pt2 program's
    range constraints."""
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}
        return props["hanet_fast.input_sizes"]
    return describe_sizes(dynamic_size_range(torch.export.load(os.fspath(path))))


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
                   help=f"input size HxW traced (at most {MAX_SIDE} per side); without --dynamic the only size the "
                        "export accepts")
    p.add_argument("--dynamic", action="store_true",
                   help="free batch, and height and width from a minimum up (printed and stored in the file; "
                        "too small a --size is refused); HANet's row positions computed from the input height")
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
    if max(args.size) > MAX_SIDE:
        p.error(f"--size {args.size[0]}x{args.size[1]}: at most {MAX_SIDE} per side"
                + ("" if args.dynamic else "; --dynamic serves larger inputs"))


def main(argv: Sequence[str] | None = None) -> str:
    """Run the export; returns the file written."""
    from hanet_fast.inference import load_model

    p = build_parser()
    args = parse_args(p, None if argv is None else list(argv), _check_args)
    out = args.out or default_output(args.checkpoint, args.format, args.size, args.dynamic, args.pt2_ops,
                                     args.run_checkpoint)
    try:
        # Never the checkpoint itself; a link at --out is replaced by the file, never followed.
        check_outputs([out], flag="--out", overwrite=args.overwrite,
                      inputs=checkpoint_files(args.checkpoint))
        model, info = load_model(run_checkpoint(args.checkpoint, args.run_checkpoint), device="cpu",
                                 backbone=args.backbone,
                                 output_stride=args.output_stride)
        with _io.atomic_path(out) as tmp:
            if args.format == "onnx":
                export_onnx(model, tmp, args.size, batch=args.batch, dynamic=args.dynamic)
            else:
                export_pt2(model, tmp, args.size, batch=args.batch, dynamic=args.dynamic,
                           decompose=args.pt2_ops == "portable")
    except (OSError, ValueError, ImportError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    shape = f"{args.batch} x 3 x {args.size[0]} x {args.size[1]}"
    if args.dynamic:
        where = ("in the file's metadata; onnxruntime does not check it" if args.format == "onnx"
                 else "the program refuses other sizes")
        shape = f"B x 3 x H x W with {exported_sizes(out, args.format)} ({where})"
    print(f"wrote {out}: {args.format} ({args.pt2_ops if args.format == 'pt2' else 'standard ONNX operators'}), "
          f"input {INPUT_NAME!r} {shape}, output {OUTPUT_NAME!r}; {info['source']} checkpoint {info['path']}",
          file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
