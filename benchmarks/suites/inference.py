"""Suite ``inference``: images/s of DeepLabv3+ in eval mode under ``torch.no_grad`` (the
logits only), without HANet, with HANet L1-L4 on the fused kernels and on the reference
backend, interleaved; 1024x2048 (full Cityscapes frames) on a GPU, reduced on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.suites import Context
from benchmarks.suites.models import BACKBONES, ModelCase, Plan, autocast, plan_cases, run_cases, variants_markdown

PLANS = {
    "cuda": Plan(size=(1024, 2048), batch=1, precisions=("bf16", "fp32"), backbones=BACKBONES, output_strides=(8,),
                 repeats=10, warmup=3),
    "cpu": Plan(size=(256, 512), batch=1, precisions=("fp32",), backbones=BACKBONES, output_strides=(8,),
                repeats=7, warmup=1),
}
SMOKE = Plan(size=(64, 64), batch=1, precisions=("fp32",), backbones=("mobilenet_v2",), output_strides=(16,),
             repeats=1, warmup=0)


def make_forward(case: ModelCase, model: torch.nn.Module, inputs: tuple) -> Callable[[], torch.Tensor]:
    images, row_pos, _ = inputs
    model.eval()

    def forward() -> torch.Tensor:
        with torch.no_grad(), autocast(case, images.device):
            return model(images, row_pos).logits

    return forward


def first_call(forward: Callable[[], object]) -> None:
    """The first, untimed forward; inference has no value to compare across variants."""
    forward()
    return None


def run(ctx: Context) -> dict:
    return run_cases(ctx, "inference", plan_cases(ctx, PLANS[ctx.device.type], SMOKE), make_forward, first_call)


def markdown(result: dict) -> str:
    return variants_markdown(result, "image", first_value=False)
