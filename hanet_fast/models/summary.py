"""Parameter counts and FLOPs of the model zoo, beside the paper's Table 2.

Run ``python -m hanet_fast.models.summary`` (markdown table on stdout; ``--help`` for options).
Models are built on the ``meta`` device and FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` during one eval-mode forward pass (no auxiliary
head, as at inference), so nothing is allocated or computed and the whole table takes seconds.

``FlopCounterMode`` counts a multiply-add as 2 FLOPs and counts only matrix products and
convolutions (not BN, activations, pooling, interpolation or HANet's fused pool/gate ops). The
paper's "GFLOPs" turn out to be 10^9 multiply-adds of the convolutions plus one operation per
element entering an adaptive pooling (ASPP's image pooling, HANet's width pooling): the table
shows both, and the paper's numbers beside the second.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from hanet_fast._cli import error_exit
from hanet_fast.models.backbones import BACKBONES, backbone_spec
from hanet_fast.models.deeplab import DeepLabV3PlusHANet, HANetConfig

__all__ = ["PAPER_TABLE2", "PAPER_REDUCTION", "ModelCost", "model_cost", "summarize", "markdown_table", "main"]

#: Paper Table 2 (Cityscapes val): (backbone, OS) -> (params baseline, params +HANet [M],
#: GFLOPs baseline, GFLOPs +HANet, mIoU baseline, mIoU +HANet [%]). The paper's ResNet-101
#: is the deep-stem one (§4.1). Its "GFLOPs" are multiply-adds (GMACs): see the README.
PAPER_TABLE2 = {
    ("shufflenet_v2_x1_0", 32): (12.6, 14.9, 64.34, 64.39, 70.27, 71.30),
    ("shufflenet_v2_x1_0", 16): (12.6, 13.7, 117.09, 117.14, 70.85, 71.52),
    ("mobilenet_v2", 16): (14.8, 16.1, 142.74, 142.80, 73.93, 74.96),
    ("mobilenet_v2", 8): (14.8, 15.4, 428.70, 428.82, 73.40, 74.70),
    ("resnet50", 16): (45.1, 47.6, 553.74, 553.85, 76.84, 77.78),
    ("resnet50", 8): (45.1, 46.3, 1460.56, 1460.76, 77.76, 78.71),
    ("resnet101_deepstem", 16): (64.2, 65.4, 765.53, 765.63, 77.80, 79.31),
    ("resnet101_deepstem", 8): (64.2, 65.4, 2137.82, 2138.02, 79.25, 80.29),
}

#: The HANet reduction ratio r that reproduces each Table 2 row's +HANet parameter count with
#: HANet at L1-L4. The paper states r = 32 only for its ResNet-101 ablation (Table 3); the
#: other rows' +HANet parameters (which cannot depend on the output stride, yet differ between
#: the two rows of one backbone) are matched by r = 8 / 16 as listed. Inferred here, not stated
#: in the paper.
PAPER_REDUCTION = {
    ("shufflenet_v2_x1_0", 32): 8,
    ("shufflenet_v2_x1_0", 16): 16,
    ("mobilenet_v2", 16): 16,
    ("mobilenet_v2", 8): 32,
    ("resnet50", 16): 16,
    ("resnet50", 8): 32,
    ("resnet101_deepstem", 16): 32,
    ("resnet101_deepstem", 8): 32,
}

#: Cityscapes' full resolution (H, W), the default input of the FLOP count.
CITYSCAPES_SIZE = (1024, 2048)


@dataclass(frozen=True)
class ModelCost:
    """Size and cost of one network.

    Attributes:
        params: all parameters, the auxiliary head included.
        aux_params: parameters of the auxiliary head ``dsn`` (0 without it).
        hanet_params: parameters of the HANet modules.
        flops: FLOPs (2 per multiply-add; convolutions and matrix products only, as
            ``FlopCounterMode`` counts) of one eval-mode forward pass of one image.
        pool_elements: input elements of the adaptive poolings in that pass (ASPP's image
            pooling and HANet's width pooling of ``x_low``); not in ``flops``.
        gate_elements: elements HANet gates (``numel(x_high)`` summed over its layers); not
            in ``flops``.
    """

    params: int
    aux_params: int
    hanet_params: int
    flops: int
    pool_elements: int
    gate_elements: int

    @property
    def gmacs(self) -> float:
        """Multiply-adds of the convolutions, in 10^9."""
        return self.flops / 2e9

    @property
    def paper_gflops(self) -> float:
        """The paper's "GFLOPs" convention, as far as it can be reproduced: convolution
        multiply-adds plus one operation per pooled input element, in 10^9."""
        return (self.flops / 2 + self.pool_elements) / 1e9


def model_cost(
    backbone: str,
    output_stride: int,
    hanet_layers: Sequence[int] = (0, 0, 0, 0, 0),
    hanet: HANetConfig | None = None,
    input_size: tuple[int, int] = CITYSCAPES_SIZE,
    num_classes: int = 19,
) -> ModelCost:
    """Parameters and forward cost of ``deeplabv3plus(backbone, output_stride, ...)`` (aux head on)."""
    hanet = hanet or HANetConfig()
    pooled: list[int] = []
    gated: list[int] = []
    with torch.device("meta"):
        model = DeepLabV3PlusHANet(backbone, output_stride, num_classes, hanet_layers,
                                   dataclasses.replace(hanet, backend="reference"), aux=True)
        model.eval()
        for module in model.hanet_modules.values():
            def hook(m, args, out):
                pooled.append(args[0].numel())
                gated.append(args[1].numel())
            module.register_forward_hook(hook)
        model.aspp.img_pooling.register_forward_hook(lambda m, args, out: pooled.append(args[0].numel()))
        images = torch.empty(1, 3, *input_size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(images)
    params = sum(p.numel() for p in model.parameters())
    aux = sum(p.numel() for p in model.dsn.parameters())
    hanet_params = sum(p.numel() for m in model.hanet_modules.values() for p in m.parameters())
    return ModelCost(params, aux, hanet_params, counter.get_total_flops(), sum(pooled), sum(gated))


def summarize(
    rows: Iterable[tuple[str, int]] | None = None,
    hanet_layers: Sequence[int] = (1, 1, 1, 1, 0),
    reduction: int | None = None,
    input_size: tuple[int, int] = CITYSCAPES_SIZE,
) -> list[dict]:
    """One dict per (backbone, OS): our baseline and +HANet costs and the paper's numbers (or None).

    ``rows`` default: Table 2's eight rows. ``reduction`` None: :data:`PAPER_REDUCTION` for
    Table 2's rows and 32 for the others.
    """
    if rows is None:
        rows = list(PAPER_TABLE2)
    out = []
    for backbone, os_ in rows:
        r = reduction or PAPER_REDUCTION.get((backbone, os_), 32)
        base = model_cost(backbone, os_, (0, 0, 0, 0, 0), None, input_size)
        plus = model_cost(backbone, os_, hanet_layers, HANetConfig(reduction=r), input_size)
        out.append({"backbone": backbone, "output_stride": os_, "reduction": r, "baseline": base, "hanet": plus,
                    "paper": PAPER_TABLE2.get((backbone, os_))})
    return out


def markdown_table(results: list[dict]) -> str:
    """The results of :func:`summarize` as a markdown table: parameters in millions; compute
    in 10^9 multiply-adds of the convolutions (GMACs), and in the paper's convention (GMACs +
    pooled elements, see :attr:`ModelCost.paper_gflops`) beside the paper's "GFLOPs"."""
    lines = [
        "| backbone | OS | r | params base (paper) | params +HANet (paper) | GMACs base | +HANet "
        "| paper convention base (paper) | +HANet (paper) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        b, h, p = res["baseline"], res["hanet"], res["paper"]

        def paper(i: int, fmt: str) -> str:
            return f" ({p[i]:{fmt}})" if p else ""

        lines.append(
            f"| {res['backbone']} | {res['output_stride']} | {res['reduction']} "
            f"| {b.params / 1e6:.2f}M{paper(0, '.1f')} | {h.params / 1e6:.2f}M{paper(1, '.1f')} "
            f"| {b.gmacs:.2f} | {h.gmacs:.2f} "
            f"| {b.paper_gflops:.2f}{paper(2, '.2f')} | {h.paper_gflops:.2f}{paper(3, '.2f')} |"
        )
    return "\n".join(lines)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (one line, exit 2) naming the flag of a value no network can be built for."""
    if any(v < 1 for v in args.size):
        parser.error(f"--size must be two positive integers H W, got {' '.join(map(str, args.size))}")
    if any(v not in (0, 1) for v in args.hanet_layers):
        parser.error(f"--hanet-layers must be five 0/1 flags, got {' '.join(map(str, args.hanet_layers))}")
    if args.reduction is not None and args.reduction < 1:
        parser.error(f"--reduction must be a positive integer, got {args.reduction}")
    if args.output_stride and not args.backbone:
        parser.error("--output-stride needs --backbone")


def _rows(args: argparse.Namespace) -> list[tuple[str, int]] | None:
    """The (backbone, OS) rows the command line asks for (None: Table 2's)."""
    if args.backbone:
        return [(b, os_) for b in args.backbone for os_ in (args.output_stride or backbone_spec(b).output_strides)]
    return [(b, os) for b in BACKBONES for os in (8, 16, 32)] if args.all else None


def main(argv: Sequence[str] | None = None) -> None:
    """Print the cost table (``python -m hanet_fast.models.summary --help``)."""
    parser = argparse.ArgumentParser(prog="python -m hanet_fast.models.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=list(CITYSCAPES_SIZE), metavar=("H", "W"),
                        help="input height and width (default: Cityscapes' 1024 2048)")
    parser.add_argument("--hanet-layers", type=int, nargs=5, default=[1, 1, 1, 1, 0], metavar="ON",
                        help="L1..L5 on/off for the +HANet column (default 1 1 1 1 0)")
    parser.add_argument("--reduction", type=int, default=None,
                        help="HANet reduction ratio r for every row (default: PAPER_REDUCTION, 32 elsewhere)")
    parser.add_argument("--all", action="store_true", help="every backbone at OS 8/16/32, not only Table 2's rows")
    parser.add_argument("--backbone", action="append", metavar="NAME",
                        help="summarise this backbone instead of Table 2's rows (repeatable; a torchvision name or "
                             "timm:NAME)")
    parser.add_argument("--output-stride", type=int, action="append", metavar="OS",
                        help="with --backbone: these output strides (repeatable; default: every stride it supports)")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        rows = _rows(args)
        results = summarize(rows, args.hanet_layers, args.reduction, tuple(args.size))
    except ValueError as err:  # an unknown backbone, a stride it cannot give, timm missing, a bad HANET_FAST_BACKEND
        error_exit(parser, err)
    print(f"input 1x3x{args.size[0]}x{args.size[1]}, +HANet = layers {args.hanet_layers}; params include the "
          "auxiliary head; compute of one eval forward pass (no auxiliary head)\n")
    print(markdown_table(results))


if __name__ == "__main__":
    main()
