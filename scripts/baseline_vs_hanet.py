"""Baseline vs +HANet on the built-in synthetic data: the default training run, with and without
HANet, over several seeds at the same budget; prints a markdown table and writes ``results.json``
and ``results.md`` (the table with the command, the commit and the machine that measured it).

    python scripts/baseline_vs_hanet.py --out runs/baseline-vs-hanet [--seeds 0,1,2] [--jobs 2]

Each run is ``python -m hanet_fast.train --seed S --out OUT/<variant>-seed<S>`` (plus ``--baseline``
for the baseline) with any extra arguments after ``--`` passed to every run. ``--out`` must not
exist yet (``--overwrite`` replaces it), so an earlier comparison is never lost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run as a script: use this checkout's hanet_fast

from hanet_fast._io import write_json, write_text  # noqa: E402
from hanet_fast._provenance import code_fingerprint  # noqa: E402

VARIANTS = {"baseline": ["--baseline"], "hanet": []}


def _runs(out: str, seeds: list[int]) -> list[tuple[str, int, str]]:
    return [(variant, seed, os.path.join(out, f"{variant}-seed{seed}")) for variant in VARIANTS for seed in seeds]


def _launch(variant: str, seed: int, folder: str, threads: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hanet_fast.train", "--seed", str(seed), "--out", folder, "--no-progress",
           "--threads", str(threads), *VARIANTS[variant], *extra]
    log = open(folder + ".log", "w")
    # this checkout's hanet_fast, whichever one is installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def code_commit() -> str:
    """The checked-out commit (short hash), with ``+changes`` when the tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    """One line naming this machine's processor, cores and torch."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def _table(seeds: list[int], results: dict[str, dict[str, float]]) -> tuple[str, dict]:
    rows = ["| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
            "|---|" + "---|" * len(seeds) + "---|"]
    summary = {}
    for variant, by_seed in results.items():
        values = [by_seed[str(s)] for s in seeds]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[variant] = {"mean": statistics.mean(values), "std": std}
        label = "+ HANet" if variant == "hanet" else variant
        rows.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values)
                    + f" | {summary[variant]['mean']:.2f} ± {std:.2f} |")
    return "\n".join(rows), summary


def _markdown(record: dict, table: str) -> str:
    base, plus = record["mIoU"]["baseline"], record["mIoU"]["hanet"]
    gain = record["summary"]["hanet"]["mean"] - record["summary"]["baseline"]["mean"]
    wins = sum(h > b for h in plus.values() for b in base.values())
    extra = " ".join(record["extra_args"])
    return (f"# Baseline vs +HANet on the built-in synthetic data\n\n"
            f"- command: `{record['command']}`\n"
            f"- run: `python -m hanet_fast.train{' ' + extra if extra else ''}` (the default training run), with "
            f"`--baseline` (no HANet) and without, same seeds, same budget\n"
            f"- code: commit {record['commit']}, training code {record['code']}\n"
            f"- machine: {record['machine']}; {record['wall_seconds']:.0f} s for the {2 * len(record['seeds'])} runs, "
            f"{record['jobs']} at a time\n"
            f"- metric: validation mIoU (%) on the synthetic validation split at the end of each run "
            f"(mean ± sample std over seeds)\n\n{table}\n\n"
            f"+ HANet minus baseline: {gain:+.2f} mIoU points on average; {wins} of {len(plus) * len(base)} "
            f"(+ HANet run, baseline run) pairs favour + HANet. These are synthetic scenes built with a height "
            f"prior; they say nothing about Cityscapes.\n")


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

    commit, code = code_commit(), code_fingerprint(REPO_ROOT)  # before the runs: the code they ran
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
    table, summary = _table(seeds, results)
    record = {"command": "python scripts/baseline_vs_hanet.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "commit": commit, "code": code, "machine": machine(), "seeds": seeds, "jobs": args.jobs, "extra_args": extra,
              "mIoU": results, "summary": summary, "wall_seconds": time.time() - t0}
    print(f"\nmIoU % on the synthetic val split ({len(seeds)} seeds, sample std; {time.time() - t0:.0f} s):\n{table}")
    write_json(os.path.join(args.out, "results.json"), record, overwrite=False, indent=1)
    write_text(os.path.join(args.out, "results.md"), _markdown(record, table), overwrite=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
