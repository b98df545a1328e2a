"""Every Python snippet of the README runs, in order, in a fresh process, within the first-run
budget: a minute on a 2-core, 8 GB CPU machine (measured as CPU time, which other processes'
load on a shared machine does not inflate, and as peak memory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_SECONDS = 2 * 60  # one minute of two cores
PEAK_RSS_BYTES = 4 * 2**30  # half of an 8 GB machine


def readme_snippets() -> list[str]:
    """The ```python blocks of README.md, in order."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_snippets():
    assert len(readme_snippets()) >= 3


def test_readme_python_snippets_run_within_the_first_run_budget(tmp_path):
    # Later snippets use names of earlier ones (the Module snippet gates the Ops snippet's
    # tensors), as a reader runs them: one script, in order.
    script = tmp_path / "readme_snippets.py"
    snippets = "\n\n".join(f"# --- README snippet {k}\n{code}" for k, code in enumerate(readme_snippets()))
    script.write_text(snippets + _REPORT_USAGE)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    cpu, peak = (float(v) for v in run.stdout.strip().splitlines()[-1].split())
    print(f"README snippets: {cpu:.1f} CPU s, peak RSS {peak / 2**30:.2f} GiB")
    assert cpu < CPU_SECONDS, f"the README's snippets took {cpu:.0f} CPU seconds"
    assert peak < PEAK_RSS_BYTES, f"the README's snippets peaked at {peak / 2**30:.2f} GiB"


# The snippets' process reports its own CPU seconds and peak RSS (bytes) on its last line.
_REPORT_USAGE = """

import resource as _resource
_usage = _resource.getrusage(_resource.RUSAGE_SELF)
print(_usage.ru_utime + _usage.ru_stime, _usage.ru_maxrss * 1024)
"""
