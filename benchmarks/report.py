"""Writes a run's results folder: ``results.json`` (everything), one CSV per suite, the markdown
report ``results.md`` and PNG charts; and the summary tables that ``results.md`` and the
README's performance section (``scripts/perf_readme.py``) share.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable

from benchmarks.common import fmt_ms
from benchmarks.suites import ops, inference, train_step

JSON_NAME = "results.json"
MARKDOWN_NAME = "results.md"
SECTION_MARKDOWN: dict[str, Callable[[dict], str]] = {
    "ops": ops.markdown,
    "module": ops.markdown,
    "train-step": train_step.markdown,
    "inference": inference.markdown,
}
MODEL_SUITES = ("train-step", "inference")


# --------------------------------------------------------------------------------------------- summaries


def model_summary(rows: list[dict]) -> list[dict]:
    """One entry per case of a model suite: every variant's row by name, in run order."""
    cases: dict[tuple, dict] = {}
    for r in rows:
        key = (r["case"], r["format"])
        cases.setdefault(key, {"case": r["case"], "format": r["format"], "size": r["size"], "batch": r["batch"],
                               "variants": {}})["variants"][r["variant"]] = r
    return list(cases.values())


def _overhead(row: dict | None) -> str:
    if row is None or "overhead_pct" not in row:
        return "-"
    return f"{row['overhead_pct']:+.1f} ({row['overhead_q1_pct']:+.1f} to {row['overhead_q3_pct']:+.1f})"


def summary_markdown(suite: str, rows: list[dict]) -> str:
    """The side-by-side table of a model suite: baseline, fused and reference per case."""
    head = "step ms" if suite == "train-step" else "ms"
    lines = [
        f"| case | size x batch | no HANet {head} | fused {head} | fused overhead % (IQR) | reference {head} "
        "| reference overhead % (IQR) | images/s no HANet / fused / reference | peak MB no HANet / fused / reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in model_summary(rows):
        v = entry["variants"]
        none, fused, ref = v.get("none"), v.get("fused"), v.get("reference")

        def ms(r: dict | None) -> str:
            return "-" if r is None else fmt_ms(r["ms"])

        ips = " / ".join("-" if r is None else f"{r['images_per_s']:.2f}" for r in (none, fused, ref))
        peaks = [None if r is None else r.get("peak_mb") for r in (none, fused, ref)]
        peak = "-" if all(p is None for p in peaks) else " / ".join("-" if p is None else f"{p:.0f}" for p in peaks)
        case = entry["case"] + ("" if entry["format"] == "channels_last" else f" {entry['format']}")
        lines.append(
            f"| {case} | {entry['size'][0]}x{entry['size'][1]} x {entry['batch']} | {ms(none)} | {ms(fused)} "
            f"| {_overhead(fused)} | {ms(ref)} | {_overhead(ref)} | {ips} | {peak} |"
        )
    return "\n".join(lines)


def machine_lines(machine: dict) -> list[str]:
    gpu = f"; GPU {machine['gpu']} ({machine['gpu_memory_gb']} GB), CUDA {machine['cuda']}, cuDNN {machine['cudnn']}" \
        if "gpu" in machine else ""
    return [
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads, "
        f"{machine['cpu_capability']}{gpu}",
        f"- torch {machine['torch']}, python {machine['python']}, hanet_fast {machine['hanet_fast']} "
        f"@ {machine['git_commit']}, {machine['date']}",
        f"- command `{machine['command']}`, scheduling {machine['scheduling']}; load average (1/5/15 min) "
        f"at start {machine['loadavg_start']}, at end {machine['loadavg_end']}",
    ]


def markdown(report: dict) -> str:
    """The whole report: machine, per-suite sections (summary first for the model suites)."""
    lines = [f"# hanet_fast benchmarks: {report['machine']['device_slug']}", "", *machine_lines(report["machine"])]
    budget = report["budget"]
    lines.append(f"- total runtime {report['total_s']:.0f} s; budget "
                 + ("none" if budget["seconds"] is None else f"{budget['seconds']:.0f} s")
                 + (f"; skipped for the budget: {', '.join(budget['skipped'])}" if budget["skipped"] else ""))
    for name, result in report["suites"].items():
        lines += ["", f"## {name}", ""]
        lines += [f"- FAILED `{key}`: {why}" for key, why in result["failed"].items()]
        if name in MODEL_SUITES:
            lines += [summary_markdown(name, result["rows"]), "", "All variants:", ""]
        lines.append(SECTION_MARKDOWN[name](result))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- files


def write_csv(path: str, rows: list[dict]) -> None:
    """Every scalar column of the rows (the per-repeat times stay in the JSON); sizes as HxW."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k, v in r.items() if k not in columns and not (isinstance(v, list) and k != "size")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **({"size": "x".join(map(str, r["size"]))} if "size" in r else {})})


def chart(name: str, result: dict, path: str, title: str) -> bool:
    """A PNG chart of one suite; False when the suite has no rows to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    if not rows:
        return False
    fig, ax = plt.subplots(layout="constrained")
    if name in MODEL_SUITES:
        entries = model_summary(rows)
        labels = [e["case"] for e in entries]
        if name == "train-step":
            variants = [v for v in entries[0]["variants"] if v != "none"]
            for k, variant in enumerate(variants):
                got = [(i, e["variants"][variant]) for i, e in enumerate(entries) if variant in e["variants"]]
                x = [i + k * 0.8 / len(variants) for i, _ in got]
                ax.bar(x, [r["overhead_pct"] for _, r in got], 0.8 / len(variants), label=variant)
                # The IQR of the per-round overheads around their median.
                ax.vlines(x, [r["overhead_q1_pct"] for _, r in got], [r["overhead_q3_pct"] for _, r in got],
                          color="black", linewidth=1.5)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_ylabel("HANet overhead over no HANet, % (IQR)")
        else:
            variants = list(entries[0]["variants"])
            for k, variant in enumerate(variants):
                values = [e["variants"][variant]["images_per_s"] if variant in e["variants"] else 0.0 for e in entries]
                ax.bar([i + k * 0.8 / len(variants) for i in range(len(entries))], values, 0.8 / len(variants),
                       label=variant)
            ax.set_ylabel("images/s")
        ax.set_xticks([i + 0.4 - 0.4 / len(variants) for i in range(len(entries))], labels, rotation=30, ha="right")
    else:
        timed = [r for r in rows if r["pass"] == "fwd+bwd" and r["backend"] != "reference" and r["ratio"]]
        if not timed:
            plt.close(fig)
            return False
        backends = list(dict.fromkeys(r["backend"] for r in timed))
        keys = list(dict.fromkeys((r["case"], r["op"], r["dtype"], r["format"]) for r in timed))
        for k, backend in enumerate(backends):
            ratio = {(r["case"], r["op"], r["dtype"], r["format"]): r["ratio"] for r in timed if r["backend"] == backend}
            ax.bar([i + k * 0.8 / len(backends) for i in range(len(keys))], [ratio.get(key, 0.0) for key in keys],
                   0.8 / len(backends), label=backend)
        ax.axhline(1, color="black", linewidth=0.8)
        ax.set_ylabel("speedup over reference, fwd+bwd (x)")
        ax.set_xticks([i + 0.4 - 0.4 / len(backends) for i in range(len(keys))],
                      [" ".join(key) for key in keys], rotation=45, ha="right", fontsize=7)
    groups = len(ax.get_xticks())
    fig.set_size_inches(min(16.0, max(6.0, 0.9 * groups)), 4.5)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_folder(report: dict, out: str) -> list[str]:
    """All files of a run into ``out``; returns their names."""
    os.makedirs(out, exist_ok=True)
    written = [JSON_NAME, MARKDOWN_NAME]
    with open(os.path.join(out, JSON_NAME), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, MARKDOWN_NAME), "w") as f:
        f.write(markdown(report))
    m = report["machine"]
    for name, result in report["suites"].items():
        write_csv(os.path.join(out, f"{name}.csv"), result["rows"])
        written.append(f"{name}.csv")
        title = f"{name} on {m.get('gpu', m['cpu'])}, torch {m['torch']}"
        if chart(name, result, os.path.join(out, f"{name}.png"), title):
            written.append(f"{name}.png")
    return written
