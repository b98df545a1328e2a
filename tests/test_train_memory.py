"""scripts/train_memory.py: one training step's peak memory per preset, written into README's table."""

import os
import subprocess
import sys

from test_train import ROOT, _env

SCRIPT = os.path.join(ROOT, "scripts", "train_memory.py")


def test_train_memory_measures_a_step_and_writes_the_table_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- train-memory:begin -->\nold\n<!-- train-memory:end -->\nrest\n")
    res = subprocess.run([sys.executable, SCRIPT, "--presets", "synthetic-mobilenet", "--crop", "32x32", "--batch",
                          "2", "--threads", "1", "--readme", str(readme)],
                         capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = readme.read_text()
    assert text.startswith("intro\n<!-- train-memory:begin -->\n") and text.endswith("<!-- train-memory:end -->\nrest\n")
    row = [line for line in text.splitlines() if line.startswith("| `synthetic-mobilenet`")]
    assert "old" not in text and len(row) == 1 and "2 x 32x32" in row[0]
    peak = float(row[0].split("|")[3].split("GiB")[0])
    assert 0.05 < peak < 24


def test_the_readme_has_the_table_markers():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert text.count("<!-- train-memory:begin -->") == text.count("<!-- train-memory:end -->") == 1
    assert "docs/training.md" in text[text.index("## Train"):text.index("<!-- train-memory:begin -->")]


def test_train_memory_refuses_an_unknown_preset():
    res = subprocess.run([sys.executable, SCRIPT, "--presets", "nope"], capture_output=True, text=True, env=_env(),
                         cwd=ROOT, timeout=120)
    assert res.returncode == 2 and "--presets" in res.stderr.strip().splitlines()[-1]


def test_a_step_over_the_limit_is_stopped_and_reported(tmp_path):
    res = subprocess.run([sys.executable, SCRIPT, "--presets", "synthetic-mobilenet", "--crop", "32x32", "--batch",
                          "2", "--threads", "1", "--limit-gib", "0.05"],
                         capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "does not fit 0.05 GiB even at batch 2" in res.stdout
