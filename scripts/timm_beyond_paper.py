#!/usr/bin/env python
"""Beyond the paper: baseline vs +HANet on timm backbones, and README's table from the result.

    python scripts/timm_beyond_paper.py --out benchmarks/results/cpu-timm-beyond-paper-DATE --readme
    python scripts/timm_beyond_paper.py --check    # exit 1 when README's section is not what its source gives

For every backbone (default ``convnext_atto`` and ``efficientnet_b0``, random init), runs
``scripts/baseline_vs_hanet.py`` (the default training run on the built-in synthetic data, with
``--baseline`` and without, the same seeds and budget) with ``--backbone timm:NAME
--output-stride OS`` plus any arguments after ``--``; then counts each network's parameters and
compute (``hanet_fast.models.summary.model_cost`` at 1x3x1024x2048, the configuration read back
from a +HANet run's checkpoint). Everything goes to ``OUT/timm_table.json`` (``--out`` must not
exist: earlier results are never replaced). ``--readme`` rewrites README.md's section between
the markers from that file; nothing in the section is typed by hand. Until a run is recorded the
section holds :data:`PLACEHOLDER`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run as a script: use this checkout's hanet_fast

from hanet_fast._io import write_json, write_text  # noqa: E402

README = os.path.join(REPO_ROOT, "README.md")
BEGIN, END = "<!-- timm-table:begin -->", "<!-- timm-table:end -->"
SOURCE = "<!-- source: {} -->"
JSON_NAME = "timm_table.json"
PLACEHOLDER = ("*Not measured yet: the table is written by `python scripts/timm_beyond_paper.py --out "
               "benchmarks/results/cpu-timm-beyond-paper-DATE --readme` (12 runs, about 1.5 hours on 2 cores).*")
COST_SIZE = (1024, 2048)  # Cityscapes, as the model-zoo table of the README
VARIANTS = (("baseline", "DeepLabv3+"), ("hanet", "+ HANet"))


def _run_pair(out: str, backbone: str, args: argparse.Namespace, extra: list[str]) -> dict:
    """baseline_vs_hanet.py for one backbone; its ``results.json``."""
    folder = os.path.join(out, backbone)
    cmd = [sys.executable, os.path.join(REPO_ROOT, "scripts", "baseline_vs_hanet.py"), "--out", folder,
           "--seeds", args.seeds, "--jobs", str(args.jobs), "--threads", str(args.threads), "--",
           "--backbone", f"timm:{backbone}", "--output-stride", str(args.output_stride), *extra]
    print(f"== timm:{backbone}: {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd, cwd=REPO_ROOT).returncode != 0:
        raise SystemExit(f"timm_beyond_paper: the runs of timm:{backbone} failed (logs in {folder})")
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def _costs(run_folder: str) -> dict:
    """Parameters and GMACs of the network a run trained, with and without its HANet layers."""
    import torch

    from hanet_fast.models import HANetConfig
    from hanet_fast.models.summary import model_cost

    config = torch.load(os.path.join(run_folder, "checkpoint.pt"), map_location="cpu", weights_only=False)[
        "model_config"]
    layers = [int(h is not None) for h in config["hanet"]]
    hanet = HANetConfig(**next(h for h in config["hanet"] if h is not None))
    base = model_cost(config["backbone"], config["output_stride"], (0,) * 5, None, COST_SIZE)
    plus = model_cost(config["backbone"], config["output_stride"], layers, hanet, COST_SIZE)
    return {"hanet_layers": layers, "reduction": hanet.reduction, "params": [base.params, plus.params],
            "hanet_params": plus.hanet_params, "gmacs": [base.gmacs, plus.gmacs]}


def render(table: dict) -> str:
    """The README section (between the markers) of a ``timm_table.json``."""
    seeds = table["seeds"]
    lines = [f"| synthetic val mIoU (%) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|" + "---|" * len(seeds) + "---|"]
    for backbone, result in table["backbones"].items():
        for variant, label in VARIANTS:
            values = [result["mIoU"][variant][str(s)] for s in seeds]
            mean, std = result["summary"][variant]["mean"], result["summary"][variant]["std"]
            name = f"{label} timm:{backbone}" if variant == "baseline" else label
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {mean:.2f} ± {std:.2f} |")
    lines += ["", f"| backbone | OS | params base | params +HANet | HANet share of params | GMACs base | GMACs +HANet "
                  f"| HANet share of GMACs |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for backbone, result in table["backbones"].items():
        c = result["cost"]
        (p0, p1), (g0, g1) = c["params"], c["gmacs"]
        lines.append(f"| timm:{backbone} | {table['output_stride']} | {p0 / 1e6:.3f}M | {p1 / 1e6:.3f}M "
                     f"| {100 * c['hanet_params'] / p1:.1f} % | {g0:.2f} | {g1:.2f} | {100 * (g1 - g0) / g1:.3f} % |")
    if "commit" in table:
        runs = 2 * len(seeds) * len(table["backbones"])
        lines += ["", f"Measured at commit {table['commit']} on {table['machine']['description']}, timm "
                      f"{table['machine']['timm']}: {runs} runs in {table['machine']['wall_seconds']} s; mean ± sample "
                      f"std over seeds. Compute is counted at 1×3×{COST_SIZE[0]}×{COST_SIZE[1]}."]
    return "\n".join(lines)


def _section_bounds(text: str) -> tuple[int, int]:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"timm_beyond_paper: {README} has no {BEGIN} ... {END} section")
    return start + len(BEGIN), end


def expected_section(text: str) -> str:
    """What the README section must hold: the table of the file its source line names, or the
    placeholder when it names none."""
    start, end = _section_bounds(text)
    body = text[start:end]
    marker = SOURCE.split("{}")[0]
    if marker not in body:
        return f"\n{PLACEHOLDER}\n"
    source = body[body.index(marker) + len(marker):].split(" -->")[0]
    if not os.path.isfile(os.path.join(REPO_ROOT, source)):
        raise SystemExit(f"timm_beyond_paper: README's timm section cites {source}, which does not exist")
    with open(os.path.join(REPO_ROOT, source)) as f:
        return f"\n{SOURCE.format(source)}\n{render(json.load(f))}\n"


def _write_readme(json_path: str) -> None:
    source = os.path.relpath(json_path, REPO_ROOT)
    with open(json_path) as f:
        block = f"\n{SOURCE.format(source)}\n{render(json.load(f))}\n"
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start, end = _section_bounds(text)
    write_text(README, text[:start] + block + text[end:], overwrite=True)
    print(f"rewrote the timm section of {README} from {source}")


def _check() -> int:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start, end = _section_bounds(text)
    if text[start:end] != expected_section(text):
        print(f"timm_beyond_paper: {README}'s timm section differs from what its source gives; run "
              "python scripts/timm_beyond_paper.py --readme-from JSON", file=sys.stderr)
        return 1
    return 0


def _measure(args: argparse.Namespace, seeds: list[int], extra: list[str]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    os.mkdir(args.out)  # claims the folder; fails if it exists
    t0, table = time.time(), {"command": " ".join(sys.argv), "seeds": seeds,
                              "output_stride": args.output_stride, "extra_args": extra, "backbones": {}}
    for backbone in args.backbones.split(","):
        result = _run_pair(args.out, backbone, args, extra)
        result["cost"] = _costs(os.path.join(args.out, backbone, f"hanet-seed{table['seeds'][0]}"))
        table["backbones"][backbone] = result
    import timm
    import torch

    first = next(iter(table["backbones"].values()))
    table["commit"] = first["commit"]  # recorded by baseline_vs_hanet.py before its runs
    table["machine"] = {"description": first["machine"], "platform": platform.platform(), "cpus": os.cpu_count(),
                        "torch": torch.__version__, "timm": timm.__version__, "wall_seconds": round(time.time() - t0)}
    path = os.path.join(args.out, JSON_NAME)
    write_json(path, table, overwrite=False, indent=1)
    print(f"\nwrote {path}\n\n{render(table)}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/timm_beyond_paper.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="folder for the runs and timm_table.json (must not exist)")
    p.add_argument("--backbones", default="convnext_atto,efficientnet_b0", help="comma-separated timm model names")
    p.add_argument("--output-stride", type=int, default=16, help="output stride of every run")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--readme", action="store_true", help="rewrite README.md's timm section from this run")
    p.add_argument("--readme-from", metavar="JSON", help="rewrite README.md's timm section from a recorded "
                   "timm_table.json (no runs)")
    p.add_argument("--check", action="store_true", help="exit 1 when README.md's timm section is stale")
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    if args.check:
        return _check()
    if args.readme_from:
        _write_readme(args.readme_from)
        return 0
    if not args.out:
        p.error("--out is required to run the comparison")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds or not all(args.backbones.split(",")):
        p.error("--seeds and --backbones must name at least one seed / model each")
    if os.path.exists(args.out):
        p.error(f"--out {args.out!r} exists; choose a new folder (earlier results are never replaced)")
    if args.readme and os.path.relpath(os.path.abspath(args.out), REPO_ROOT).startswith(".."):
        p.error("--readme: --out must be inside the repository, so that README can cite the results")
    path = _measure(args, seeds, extra)
    if args.readme:
        _write_readme(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
