"""Suite ``train-step``: one DeepLabv3+ training step (forward, segmentation loss with the
auxiliary head, backward, SGD step) without HANet, with HANet L1-L4 on the fused kernels, on
the reference backend, and on the fused kernels under ``torch.compile`` (variant ``compile``,
what ``train --compile`` does), interleaved, for each backbone, output stride and precision.

The HANet overhead of a variant is the median of the per-round ``(variant_ms / none_ms - 1) *
100`` of the same run, its spread their quartiles (see :func:`benchmarks.common.paired_overhead`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.suites import Context
from benchmarks.suites.models import (BACKBONES, COMPILED, ONNXRUNTIME, ModelCase, Plan, autocast, plan_cases, run_cases,
                                      variants_markdown)
from hanet_fast.training.losses import segmentation_loss

AUX_WEIGHT = 0.4  # the paper's auxiliary loss weight
LR, MOMENTUM = 1e-3, 0.9  # small enough that random labels do not blow the weights up over the repeats

# GPU: the paper's per-GPU training setting (768x768 crops, batch 2); the first case (ResNet-101
# OS8 bf16) is the headline and gets enough interleaved repeats to resolve a 1 % overhead.
# CPU: small crops so that all six networks fit the 10-minute run on a 2-core machine.
PLANS = {
    "cuda": Plan(size=(768, 768), batch=2, precisions=("bf16", "fp32"), backbones=BACKBONES, output_strides=(8, 16),
                 repeats=12, warmup=3, headline_repeats=80, extra_variants=(COMPILED,)),
    "cpu": Plan(size=(128, 256), batch=2, precisions=("fp32",), backbones=BACKBONES, output_strides=(8, 16),
                repeats=11, warmup=1, extra_variants=(COMPILED,)),
}
# Batch 2: training BatchNorm needs more than one value per channel after the ASPP's image pooling.
SMOKE = Plan(size=(64, 64), batch=2, precisions=("fp32",), backbones=("mobilenet_v2",), output_strides=(16,),
             repeats=1, warmup=0, extra_variants=(COMPILED,))


def make_step(case: ModelCase, model: torch.nn.Module, inputs: tuple) -> Callable[[], torch.Tensor]:
    images, row_pos, labels = inputs
    device = images.device
    model.train()
    optimizer = torch.optim.SGD(model.param_groups(), lr=LR, momentum=MOMENTUM)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(case, device):
            out = model(images, row_pos)
            loss, _ = segmentation_loss(out.logits, labels, out.aux_logits, aux_weight=AUX_WEIGHT)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def first_loss(step: Callable[[], torch.Tensor]) -> float:
    """The first step's loss: equal in the HANet variants (same weights, inputs and random draws)
    up to rounding, a check that the fused and reference variants compute the same network."""
    return float(step())


def run(ctx: Context) -> dict:
    if ctx.args.variants and ONNXRUNTIME in ctx.args.variants.split(","):
        raise SystemExit(f"--variants: {ONNXRUNTIME} is an inference variant (the train-step suite trains)")
    plan = SMOKE if ctx.args.smoke else PLANS[ctx.device.type]
    result = run_cases(ctx, "train-step", plan_cases(ctx, PLANS[ctx.device.type], SMOKE), make_step, first_loss,
                       plan.extra_variants)
    result["config"].update(aux_weight=AUX_WEIGHT, lr=LR, momentum=MOMENTUM, optimizer="SGD")
    return result


def markdown(result: dict) -> str:
    return variants_markdown(result, "crop", first_value=True)
