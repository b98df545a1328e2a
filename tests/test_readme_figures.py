"""The README's figures from the default run are what scripts/readme_figures.py renders from the
recorded outputs (docs/default_run.json, docs/evaluate_synthetic.txt, docs/analyze_synthetic.txt
and the newest baseline-vs-HANet comparison), never edited by hand."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "readme_figures.py")


def _script():
    spec = importlib.util.spec_from_file_location("readme_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_blocks_are_what_the_script_renders():
    res = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr


def test_a_hand_edit_of_a_figure_is_caught():
    figures = _script()
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = figures.render_blocks()
    assert figures.apply_blocks(text, blocks) == text
    mark = "<!-- readme:default-run -->\n"
    start = text.index(mark) + len(mark)
    edited = text[:start] + "The default run ended at 99.99 % mIoU. " + text[start:]
    assert figures.apply_blocks(edited, blocks) != edited


def test_the_default_run_block_names_its_figures_and_the_seed_spread():
    block = _script().render_blocks()["default-run"]
    assert "% mIoU" in block and "pixel accuracy" in block and " ± " in block and "seeds 0-2" in block
