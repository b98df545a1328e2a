#!/usr/bin/env python
"""Every README figure that comes from the default training run, regenerated from one run.

    python scripts/readme_figures.py [--run DIR]   # regenerate the outputs, then rewrite the README
    python scripts/readme_figures.py --no-run      # rewrite the README from the recorded outputs only
    python scripts/readme_figures.py --check       # exit 1 if the README differs from the recorded outputs

The first form runs ``scripts/readme_examples.sh`` with ``RUN=DIR``: it trains the default run
(``python -m hanet_fast.train --out DIR``) when DIR has no checkpoint, then writes
``docs/evaluate_synthetic.txt``, ``docs/analyze_synthetic.txt`` and the README's images from it.
It records the run's final metrics in ``docs/default_run.json`` and rewrites the README's marked
blocks (``<!-- readme:NAME -->`` ... ``<!-- /readme:NAME -->``) from those files and from the
newest baseline-vs-HANet comparison under ``benchmarks/results/`` (the seed spread):

    default-run   the default run's single-scale mIoU and pixel accuracy, and the seed spread
    comparison    the baseline-vs-HANet table (seeds 0-2) of that comparison
    evaluate      docs/evaluate_synthetic.txt (multi-scale + flip evaluation of the run)
    analyze       docs/analyze_synthetic.txt (Table 1 of the built-in data)

``--check`` renders the blocks from the recorded files only (no run), so that a test can tell
that no figure in those blocks was edited by hand.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hanet_fast._io import write_json, write_text  # noqa: E402
from hanet_fast._provenance import code_fingerprint  # noqa: E402

README = os.path.join(ROOT, "README.md")
DEFAULT_RUN_JSON = os.path.join(ROOT, "docs", "default_run.json")
EVALUATE_TXT = os.path.join(ROOT, "docs", "evaluate_synthetic.txt")
ANALYZE_TXT = os.path.join(ROOT, "docs", "analyze_synthetic.txt")
COMPARISONS = os.path.join(ROOT, "benchmarks", "results", "cpu-baseline-vs-hanet-*", "results.md")
HANET_ROW = re.compile(r"^\| \+ HANet \|(?P<seeds>.*)\| (?P<mean>[\d.]+) ± (?P<std>[\d.]+) \|$", re.M)
BASELINE_ROW = re.compile(r"^\| baseline \|(?P<cells>.*\|)$", re.M)
COMPARISON_THREADS = re.compile(r"^- command: `[^`]*--threads (?P<threads>\d+)", re.M)
COMPARISON_COMMIT = re.compile(r"^- code: commit (?P<commit>[0-9a-f]+)(\S*, training code (?P<code>[0-9a-f]+))?", re.M)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def comparison() -> dict[str, str]:
    """The newest baseline-vs-HANet comparison: its results.md path relative to the repository
    (``path``), the commit it measured (``commit``), the + HANet seed spread (``spread``) and the
    README's table of both variants (``table``)."""
    paths = sorted(glob.glob(COMPARISONS))
    if not paths:
        raise SystemExit(f"readme_figures: no comparison at {COMPARISONS}; run scripts/baseline_vs_hanet.py")
    text = _read(paths[-1])
    hanet, baseline, commit = HANET_ROW.search(text), BASELINE_ROW.search(text), COMPARISON_COMMIT.search(text)
    if hanet is None or baseline is None or commit is None:
        raise SystemExit(f"readme_figures: {paths[-1]} lacks its '- code: commit', baseline or + HANet line")
    seeds = ", ".join(s.strip() for s in hanet["seeds"].split("|"))
    table = ("| synthetic val mIoU (%) | seed 0 | seed 1 | seed 2 | mean ± std |\n|---|---|---|---|---|\n"
             f"| DeepLabv3+ MobileNetV2 |{baseline['cells']}\n{hanet.group(0).replace('| + HANet |', '| + HANet |')}")
    threads = COMPARISON_THREADS.search(text)
    return {"path": os.path.relpath(paths[-1], ROOT), "commit": commit["commit"], "code": commit["code"],
            "threads": threads["threads"] if threads else None,
            "spread": f"{hanet['mean']} ± {hanet['std']} % (seeds 0-2: {seeds})", "table": table}


def render_blocks() -> dict[str, str]:
    """The README's marked blocks, from the recorded files."""
    run = json.loads(_read(DEFAULT_RUN_JSON))
    seeds = comparison()
    if run["commit"].startswith(seeds["commit"]) or seeds["commit"].startswith(run["commit"]):
        same_code = "the same code"
    elif run.get("code") is not None and run.get("code") == seeds["code"]:
        same_code = f"commit {seeds['commit']}, with the same training code (fingerprint {seeds['code']})"
    else:
        same_code = (f"commit {seeds['commit']}, with other training code than this run's (or code not recorded), so "
                     "the two figures are not known to come from the same code")
    default_run = (
        f"The default run (`python -m hanet_fast.train`, seed 0, commit {run['commit']}) ended at "
        f"{100 * run['mIoU']:.2f} % mIoU and {100 * run['pixel_acc']:.2f} % pixel accuracy on the synthetic "
        f"validation scenes after {run['iteration']} iterations. The mIoU varies by seed: the same recipe gave "
        f"{seeds['spread']} in the [baseline-vs-HANet comparison]({seeds['path']}), measured at {same_code}"
        + (f" with `--threads {seeds['threads']}` per run (on a CPU the thread count changes the order of the "
           "floating-point sums, so its seed 0 need not match this run)." if seeds["threads"] else ".")
    )
    return {
        "default-run": default_run,
        "comparison": seeds["table"] + f"\n\nMeasured at commit {seeds['commit']}: [{seeds['path']}]({seeds['path']}).",
        "evaluate": "```\n" + _read(EVALUATE_TXT).rstrip("\n") + "\n```",
        "analyze": "```\n" + _read(ANALYZE_TXT).rstrip("\n") + "\n```",
    }


def apply_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each marked block's content replaced; every block must be marked once."""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- readme:{name} -->\n).*?(\n<!-- /readme:{name} -->)", re.S)
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"readme_figures: README.md must mark the block {name!r} exactly once")
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    return text


def regenerate(run: str) -> None:
    """Run scripts/readme_examples.sh on ``run`` and record the run's final metrics (with the
    commit checked out when it started)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    code = code_fingerprint(ROOT)
    env = dict(os.environ, RUN=os.path.abspath(run))
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "readme_examples.sh")], cwd=ROOT, env=env, check=True)
    metrics = json.loads(_read(os.path.join(run, "metrics.json")))
    write_json(DEFAULT_RUN_JSON, {"mIoU": metrics["mIoU"], "pixel_acc": metrics["pixel_acc"],
                                  "iteration": metrics["iteration"], "commit": commit, "code": code}, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--run", default="/tmp/hanet_default_run",
                   help="the default run's folder (trained there when it has no checkpoint; default %(default)s)")
    p.add_argument("--no-run", action="store_true", help="rewrite the README from the recorded outputs, without a run")
    p.add_argument("--check", action="store_true", help="only compare the README with the recorded outputs")
    args = p.parse_args(argv)
    if not (args.check or args.no_run):
        regenerate(args.run)
    text = _read(README)
    new = apply_blocks(text, render_blocks())
    if args.check:
        if new != text:
            print("readme_figures: README.md differs from the recorded outputs; run scripts/readme_figures.py",
                  file=sys.stderr)
            return 1
        return 0
    write_text(README, new, overwrite=True)
    print("readme_figures: README.md rewritten from", os.path.relpath(DEFAULT_RUN_JSON, ROOT), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
