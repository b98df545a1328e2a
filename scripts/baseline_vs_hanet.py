"""Baseline vs +HANet on the built-in synthetic data: the default training run, with and without
HANet, over several seeds at the same budget; prints a markdown table and writes ``results.json``.

    python scripts/baseline_vs_hanet.py --out runs/baseline-vs-hanet [--seeds 0,1,2] [--jobs 2]

Each run is ``python -m hanet_fast.train --seed S --out OUT/<variant>-seed<S>`` (plus ``--baseline``
for the baseline) with any extra arguments after ``--`` passed to every run. ``--out`` must not
exist yet (``--overwrite`` replaces it), so an earlier comparison is never lost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

VARIANTS = {"baseline": ["--baseline"], "hanet": []}


def _runs(out: str, seeds: list[int]) -> list[tuple[str, int, str]]:
    return [(variant, seed, os.path.join(out, f"{variant}-seed{seed}")) for variant in VARIANTS for seed in seeds]


def _launch(variant: str, seed: int, folder: str, threads: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hanet_fast.train", "--seed", str(seed), "--out", folder, "--no-progress",
           "--threads", str(threads), *VARIANTS[variant], *extra]
    log = open(folder + ".log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/baseline_vs_hanet.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs, their logs and results.json (must not exist)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds or args.jobs < 1 or args.threads < 1:
        p.error("--seeds must name at least one seed; --jobs and --threads must be >= 1")
    if os.path.exists(args.out):
        if not args.overwrite:
            p.error(f"--out {args.out!r} exists; pass --overwrite to replace it")
        shutil.rmtree(args.out)
    os.makedirs(args.out)

    pending, running, t0 = _runs(args.out, seeds), [], time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            variant, seed, folder = pending.pop(0)
            running.append((variant, seed, folder, _launch(variant, seed, folder, args.threads, extra)))
        time.sleep(2)
        for entry in [r for r in running if r[3].poll() is not None]:
            running.remove(entry)
            variant, seed, folder, proc = entry
            print(f"{variant} seed {seed}: exit {proc.returncode} after {time.time() - t0:.0f} s", flush=True)
            if proc.returncode != 0:
                print(f"see {folder}.log", file=sys.stderr)
                return 1

    results: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
    for variant, seed, folder in _runs(args.out, seeds):
        with open(os.path.join(folder, "metrics.json")) as f:
            results[variant][str(seed)] = 100 * json.load(f)["mIoU"]
    rows = ["| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
            "|---|" + "---|" * len(seeds) + "---|"]
    summary = {}
    for variant, by_seed in results.items():
        values = list(by_seed.values())
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[variant] = {"mean": statistics.mean(values), "std": std}
        rows.append(f"| {variant} | " + " | ".join(f"{v:.2f}" for v in values)
                    + f" | {summary[variant]['mean']:.2f} ± {std:.2f} |")
    table = "\n".join(rows)
    print(f"\nmIoU % on the synthetic val split ({len(seeds)} seeds, sample std; {time.time() - t0:.0f} s):\n{table}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"seeds": seeds, "extra_args": extra, "mIoU": results, "summary": summary,
                   "wall_seconds": time.time() - t0}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
