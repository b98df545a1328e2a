"""Suite ``inference``: images/s of DeepLabv3+ in eval mode under ``torch.no_grad`` (the
logits only), without HANet, with HANet L1-L4 on the fused kernels and on the reference
backend, and the deployment variants of the fused network (``torch.compile``; on a CPU also
the ONNX export run by onnxruntime), interleaved on the same inputs; 1024x2048 (full Cityscapes
frames) on a GPU, reduced on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.suites import Context
from benchmarks.common import fmt_ms
from benchmarks.suites.models import (BACKBONES, COMPILED, ONNXRUNTIME, ModelCase, Plan, autocast, plan_cases, run_cases,
                                      variants_markdown)

PLANS = {
    "cuda": Plan(size=(1024, 2048), batch=1, precisions=("bf16", "fp32"), backbones=BACKBONES, output_strides=(8,),
                 repeats=10, warmup=3, extra_variants=(COMPILED,)),
    "cpu": Plan(size=(256, 512), batch=1, precisions=("fp32",), backbones=BACKBONES, output_strides=(8,),
                repeats=7, warmup=1, extra_variants=(COMPILED, ONNXRUNTIME)),
}
SMOKE = Plan(size=(64, 64), batch=1, precisions=("fp32",), backbones=("mobilenet_v2",), output_strides=(16,),
             repeats=1, warmup=0, extra_variants=(COMPILED, ONNXRUNTIME))
DEPLOY_VARIANTS = ("fused", COMPILED, ONNXRUNTIME)


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
    plan = SMOKE if ctx.args.smoke else PLANS[ctx.device.type]
    return run_cases(ctx, "inference", plan_cases(ctx, PLANS[ctx.device.type], SMOKE), make_forward, first_call,
                     plan.extra_variants)


def deployment_markdown(result: dict) -> str:
    """The fused network eager, under torch.compile and in onnxruntime, side by side per case
    (the same run, the same inputs, interleaved); empty when no deployment variant ran."""
    cases: dict[tuple, dict] = {}
    for r in result["rows"]:
        if r["variant"] in DEPLOY_VARIANTS:
            cases.setdefault((r["case"], r["format"]), {})[r["variant"]] = r
    shown = [v for v in DEPLOY_VARIANTS if any(v in c for c in cases.values())]
    if len(shown) < 2:
        return ""
    names = {"fused": "PyTorch eager (fused ops)", COMPILED: "torch.compile", ONNXRUNTIME: "onnxruntime"}
    lines = ["Deployment: the HANet network (L1-L4) " + " vs ".join(names[v] for v in shown)
             + ", images/s (ms); the first call includes compiling / session warm-up.", "",
             "| case | size x batch | " + " | ".join(names[v] for v in shown) + " | first call s |",
             "|---|---|" + "---:|" * (len(shown) + 1)]
    for (case, fmt), by in cases.items():
        anyrow = next(iter(by.values()))
        cells = ["-" if v not in by else f"{by[v]['images_per_s']:.2f} ({fmt_ms(by[v]['ms'])})" for v in shown]
        first = " / ".join("-" if v not in by else f"{by[v]['first_call_s']:.1f}" for v in shown)
        lines.append(f"| {case}{'' if fmt == 'channels_last' else ' ' + fmt} | {anyrow['size'][0]}x{anyrow['size'][1]} "
                     f"x {anyrow['batch']} | " + " | ".join(cells) + f" | {first} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    deploy = deployment_markdown(result)
    return variants_markdown(result, "image", first_value=False) + ("\n\n" + deploy if deploy else "")
