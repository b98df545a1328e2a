#!/usr/bin/env python
"""Rewrites README.md's performance section from the recorded benchmark runs.

    python scripts/perf_readme.py            # rewrite the section between the perf markers
    python scripts/perf_readme.py --check    # exit 1 when the section differs from what the
                                             # recorded results give (a stale README)

The section is generated from ``benchmarks/results/<device>-<date>/results.json`` (written by
``python benchmarks/run.py``): for every device, its newest complete recorded run; scratch
folders (``tmp*``) and runs of some suites only are ignored. Nothing in the section is typed by
hand: edit the generator or record a new run. Running it twice gives the same README (it is
idempotent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run as a script: make the checkout's ``benchmarks`` importable

from benchmarks import report  # noqa: E402
from benchmarks.common import fmt_ms  # noqa: E402
from benchmarks.suites import SUITE_NAMES  # noqa: E402

BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
README = os.path.join(REPO_ROOT, "README.md")
OVERHEAD_TARGET_PCT = 2.0  # issue #8: HANet's training-step overhead with the fused kernels on a GPU
HEADLINE = "R101 OS8 bf16"  # the paper's network in the GPU run's training precision
GPU_COMMAND = "python benchmarks/run.py"  # on a GPU machine: every suite, held to the GPU budget


def newest_runs(results_dir: str) -> list[tuple[str, dict]]:
    """``(folder name, results.json)`` of the newest complete run (every suite) of every device,
    sorted by device (CPU first); runs of some suites only are focused measurements that the
    README links to by hand, not the section's source."""
    newest: dict[str, tuple[str, dict]] = {}
    if not os.path.isdir(results_dir):
        raise SystemExit(f"perf_readme: no results folder {results_dir}")
    for name in sorted(os.listdir(results_dir)):
        path = os.path.join(results_dir, name, report.JSON_NAME)
        if name.startswith("tmp") or not os.path.isfile(path):
            continue
        with open(path) as f:
            run = json.load(f)
        # other scripts' results.json (the seed comparisons) hold no suites: not benchmark runs
        if not isinstance(run, dict) or set(run.get("suites", ())) != set(SUITE_NAMES):
            continue
        slug = run["machine"]["device_slug"]
        if slug not in newest or run["machine"]["date"] > newest[slug][1]["machine"]["date"]:
            newest[slug] = (name, run)
    return [newest[slug] for slug in sorted(newest, key=lambda s: (s != "cpu", s))]


def ops_table(suites: dict) -> list[str]:
    """Forward+backward of the ops and the module: reference vs each fused backend."""
    rows = [r for name in ("ops", "module") for r in suites.get(name, {}).get("rows", []) if r["pass"] == "fwd+bwd"]
    if not rows:
        return []
    lines = ["| case | op | shape | dtype | format | backend | fwd+bwd ms | reference ms | speedup | % copy |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|"]
    ref = {(r["case"], r["op"], r["dtype"], r["format"]): r for r in rows if r["backend"] == "reference"}
    for r in rows:
        key = (r["case"], r["op"], r["dtype"], r["format"])
        if r["backend"] == "reference" or key not in ref or r["ratio"] is None:
            continue
        lines.append(f"| {r['case']} | {r['op']} | {r['shape']} | {r['dtype']} | {r['format']} | {r['backend']} | {fmt_ms(r['ms'])} "
                     f"| {fmt_ms(ref[key]['ms'])} | {r['ratio']:.2f}x | {r['pct_copy']:.0f} |")
    return lines


def headline(run: dict) -> str | None:
    """The GPU question of issue #8: the fused and reference overheads of the headline case."""
    rows = run["suites"].get("train-step", {}).get("rows", [])
    entry = next((e for e in report.model_summary(rows) if e["case"] == HEADLINE), None)
    if entry is None or "fused" not in entry["variants"]:
        return None
    fused, ref = entry["variants"]["fused"], entry["variants"].get("reference")
    met = "met" if fused["overhead_pct"] <= OVERHEAD_TARGET_PCT else "NOT met"
    text = (f"**{HEADLINE} training step ({entry['size'][0]}x{entry['size'][1]}, batch {entry['batch']}, "
            f"{entry['format']}): HANet L1-L4 adds {fused['overhead_pct']:+.1f} % with the fused kernels "
            f"(target <= {OVERHEAD_TARGET_PCT:.0f} %: {met})")
    if ref is not None:
        text += f", {ref['overhead_pct']:+.1f} % with the reference backend"
    return text + f", medians of {fused['repeats']} interleaved steps.**"


def device_section(folder: str, run: dict) -> list[str]:
    m = run["machine"]
    title = m.get("gpu", f"CPU: {m['cpu']}, {m['cores']} cores")
    lines = [f"### {title}", "", f"Recorded run `benchmarks/results/{folder}/` "
             f"([full report](benchmarks/results/{folder}/{report.MARKDOWN_NAME})):", "",
             *report.machine_lines(m), f"- total runtime {run['total_s']:.0f} s"
             + (f"; skipped for the time budget: {', '.join(run['budget']['skipped'])}" if run["budget"]["skipped"]
                else "")]
    if m["device"].startswith("cuda"):
        text = headline(run)
        lines += ["", text or f"The headline case {HEADLINE} is not in this run."]
    suites = run["suites"]
    for name, label in (("train-step", "Training step"), ("inference", "Inference")):
        if suites.get(name, {}).get("rows"):
            unit = "forward+loss+backward+SGD step" if name == "train-step" else "eval-mode forward, no_grad"
            peak = "" if m["device"].startswith("cuda") else "; peak memory is measured on GPUs only"
            lines += ["", f"**{label}** ({unit}; HANet overhead = median [IQR] of the "
                          f"per-round variant / no-HANet - 1{peak}):", "", report.summary_markdown(name, suites[name]["rows"])]
    ops = ops_table(suites)
    if ops:
        lines += ["", "**Ops and HANet module**, forward+backward, speedup = reference ms / backend ms:", "", *ops]
    charts = [f"![{name}](benchmarks/results/{folder}/{name}.png)" for name in ("train-step", "inference")
              if os.path.isfile(os.path.join(RESULTS_DIR, folder, f"{name}.png"))]
    if charts:
        lines += ["", " ".join(charts)]
    return lines


def generate(results_dir: str) -> str:
    """The text between the markers (markers excluded)."""
    runs = newest_runs(results_dir)
    lines = ["<!-- generated by scripts/perf_readme.py from benchmarks/results/: do not edit by hand -->", "",
             "Every figure below was measured by `python benchmarks/run.py`: the variants of a case run interleaved "
             "in one process; speedups compare the medians of that run, HANet overheads are the medians of the "
             "per-round (paired) ratios. `benchmarks/README.md` explains the suites and columns."]
    if not any(run["machine"]["device"].startswith("cuda") for _, run in runs):
        lines += ["", f"**No GPU run is recorded yet: it is owed.** On a GPU machine, `{GPU_COMMAND}` runs every "
                      "suite within its 7-minute time budget (`--budget-s`) and writes "
                      "`benchmarks/results/<gpu>-<date>/`; then `python scripts/perf_readme.py` regenerates this "
                      "section."]
    for folder, run in runs:
        lines += ["", *device_section(folder, run)]
    return "\n".join(lines) + "\n"


def render(readme_text: str, section: str) -> str:
    """``readme_text`` with the text between the markers replaced by ``section``."""
    if readme_text.count(BEGIN) != 1 or readme_text.count(END) != 1 or readme_text.index(BEGIN) > readme_text.index(END):
        raise SystemExit(f"perf_readme: README must hold one {BEGIN} line followed by one {END} line")
    head, rest = readme_text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{section}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="do not write; exit 1 when README.md is stale")
    p.add_argument("--readme", default=README, help="the README to update (default %(default)s)")
    p.add_argument("--results", default=RESULTS_DIR, help="the recorded runs (default %(default)s)")
    args = p.parse_args(argv)
    with open(args.readme) as f:
        current = f.read()
    updated = render(current, generate(args.results))
    if args.check:
        if updated != current:
            print(f"{args.readme}: the performance section is stale; run python scripts/perf_readme.py",
                  file=sys.stderr)
            return 1
        print(f"{args.readme}: the performance section matches the recorded results")
        return 0
    if updated != current:
        with open(args.readme, "w") as f:
            f.write(updated)
        print(f"{args.readme}: performance section rewritten")
    else:
        print(f"{args.readme}: already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
