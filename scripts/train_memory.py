"""Peak memory per process of one training step of each preset, on this CPU, and README's table.

    python scripts/train_memory.py --readme            # measure every preset, rewrite README's table
    python scripts/train_memory.py --presets synthetic-mobilenet --crop 64x64 --batch 2   # a quick try

Each measurement runs in a fresh process: the preset's network (no pretrained file is read:
the weights do not change the memory), its optimiser, and one step (forward, loss, backward, SGD
step) on random images at the preset's per-process batch and crop; the figure is the process's
peak resident memory (``ru_maxrss``: Python, torch and the step). CPU-measured: on a GPU the
same step also needs cuDNN workspaces and the CUDA context. A preset whose batch would not fit
``--limit-gib`` (extrapolated from a batch-2 step) is measured at the largest batch that fits,
and the table says so; a step whose memory passes ``--limit-gib`` is stopped, never left to
take the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from hanet_fast import _io  # noqa: E402
from hanet_fast._cli import size_arg  # noqa: E402

BEGIN, END = "<!-- train-memory:begin -->", "<!-- train-memory:end -->"
GIB = 1024 ** 3


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def one_step(preset: str, batch: int, crop: tuple[int, int]) -> dict:
    """One training step of ``preset`` at ``batch`` x ``crop`` in this process; the peak memory
    before the step (network and optimiser built) and after it, in bytes."""
    import torch

    from hanet_fast.data.mapillary import MAPILLARY_NUM_CLASSES
    from hanet_fast.data.labels import NUM_CLASSES
    from hanet_fast.training import TrainConfig
    from hanet_fast.training.losses import segmentation_loss
    from hanet_fast.training.model import build_model, build_optimization

    cfg = TrainConfig.from_preset(preset, data_root="/unused", pretrained_backbone="none", init_from=None,
                                  batch_size=batch, crop_size=crop, device="cpu")
    classes = MAPILLARY_NUM_CLASSES if cfg.dataset == "mapillary" else NUM_CLASSES
    torch.manual_seed(0)
    model = build_model(cfg, classes).train()
    optimizer, scheduler, _ = build_optimization(cfg, model, torch.device("cpu"))
    images = torch.randn(batch, 3, *crop)
    masks = torch.randint(0, classes, (batch, *crop))
    before = _rss_peak()
    res = model(images)
    loss, _ = segmentation_loss(res.logits, masks, res.aux_logits, cfg.aux_weight, class_weighted=cfg.cls_wt_loss,
                                image_weighted=cfg.img_wt_loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return {"before": before, "peak": _rss_peak()}


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _measure(preset: str, batch: int, crop: tuple[int, int], threads: int, limit: float) -> dict | None:
    """One step in a fresh process; None when its memory passed ``limit`` bytes (it is stopped
    then, so that the machine's other work keeps its memory)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one", preset, str(batch),
                              f"{crop[0]}x{crop[1]}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=REPO_ROOT)
    while child.poll() is None:
        if _rss(child.pid) > limit:
            child.kill()
            child.communicate()
            return None
        time.sleep(0.1)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"train_memory: {preset} at batch {batch}: {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])


def measure_preset(preset: str, batch: int, crop: tuple[int, int], limit: float, threads: int) -> dict:
    """The row of ``preset``: measured at ``batch`` if a batch-2 step extrapolates to fit ``limit``
    bytes, else at the largest batch (>= 2) that does."""
    probe = _measure(preset, 2, crop, threads, limit)
    if probe is None:
        return {"preset": preset, "batch": batch, "measured_batch": 0, "crop": list(crop), "peak_gib": None,
                "estimate_gib": None}
    per_image = max(probe["peak"] - probe["before"], 1) / 2
    fits = int((limit - probe["before"]) // per_image)
    measured = batch if batch <= fits else max(2, fits)
    result = probe if measured == 2 else _measure(preset, measured, crop, threads, limit)
    if result is None:  # the extrapolation was short: the batch-2 step is what fits
        measured, result = 2, probe
    return {"preset": preset, "batch": batch, "measured_batch": measured, "crop": list(crop),
            "peak_gib": result["peak"] / GIB, "estimate_gib": (probe["before"] + per_image * batch) / GIB}


def render(rows: list[dict], limit_gib: float) -> str:
    """README's table (between the markers) of :func:`measure_preset` rows."""
    lines = [f"<!-- generated by scripts/train_memory.py: do not edit by hand -->", "",
             "| preset | per-process batch x crop | peak memory per process (CPU-measured) |", "|---|---|---|"]
    for r in rows:
        crop = "x".join(map(str, r["crop"]))
        if r["peak_gib"] is None:
            lines.append(f"| `{r['preset']}` | {r['batch']} x {crop} | does not fit {limit_gib:g} GiB even at batch 2 |")
            continue
        peak = f"{r['peak_gib']:.1f} GiB"
        if r["measured_batch"] != r["batch"]:
            peak += (f" at batch {r['measured_batch']} (batch {r['batch']} does not fit {limit_gib:g} GiB: "
                     f"about {r['estimate_gib']:.0f} GiB extrapolated)")
        lines.append(f"| `{r['preset']}` | {r['batch']} x {crop} | {peak} |")
    return "\n".join(lines)


def write_section(readme: str, section: str) -> None:
    """Replace README's text between :data:`BEGIN` and :data:`END` by ``section`` (atomically)."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"train_memory: {readme} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _io.write_text(readme, head + BEGIN + "\n" + section + "\n" + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    from hanet_fast.training.presets import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: all)")
    p.add_argument("--crop", type=size_arg, metavar="HxW", help="override every preset's crop (a quick try)")
    p.add_argument("--batch", type=int, help="override every preset's per-process batch (a quick try)")
    p.add_argument("--limit-gib", type=float, default=24.0, help="the memory a measured step may take")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of the measuring process")
    p.add_argument("--readme", nargs="?", const=os.path.join(REPO_ROOT, "README.md"), metavar="FILE",
                   help="rewrite the table between the markers of FILE (default README.md)")
    p.add_argument("--one", nargs=3, metavar=("PRESET", "BATCH", "HxW"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_step(args.one[0], int(args.one[1]), size_arg(args.one[2]))))
        return 0
    names = [n for n in args.presets.split(",") if n]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        p.error(f"--presets: unknown {', '.join(unknown)} (known: {', '.join(PRESETS)})")
    rows = []
    for name in names:
        crop = tuple(args.crop) if args.crop else tuple(PRESETS[name]["crop_size"])
        rows.append(measure_preset(name, args.batch or PRESETS[name]["batch_size"], crop, args.limit_gib * GIB,
                                   args.threads))
        print(json.dumps(rows[-1]), flush=True)
    section = render(rows, args.limit_gib)
    print(section)
    if args.readme:
        write_section(args.readme, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
