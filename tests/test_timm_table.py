"""README's "Beyond the paper" table is written by scripts/timm_beyond_paper.py, never by hand."""

from __future__ import annotations

import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))  # scripts/ is not an installed package

import timm_beyond_paper as script  # noqa: E402


def test_readme_section_is_what_the_script_gives():
    assert script.main(["--check"]) == 0


def _table() -> dict:
    def pair(base: list[float], plus: list[float]) -> dict:
        def stats(v):
            return {"mean": sum(v) / len(v), "std": 0.5}
        return {"mIoU": {"baseline": {"0": base[0], "1": base[1]}, "hanet": {"0": plus[0], "1": plus[1]}},
                "summary": {"baseline": stats(base), "hanet": stats(plus)},
                "cost": {"params": [8.0e6, 8.2e6], "hanet_params": 0.2e6, "gmacs": [200.0, 200.5]}}

    return {"seeds": [0, 1], "output_stride": 16,
            "backbones": {"convnext_atto": pair([10.0, 11.0], [12.0, 13.5]), "efficientnet_b0": pair([9, 9], [8, 8])}}


def test_readme_from_a_recorded_run_and_check_catches_an_edit(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{script.BEGIN}\n{script.PLACEHOLDER}\n{script.END}\n\nafter\n")
    monkeypatch.setattr(script, "README", str(readme))
    monkeypatch.setattr(script, "REPO_ROOT", str(tmp_path))
    assert script.main(["--check"]) == 0
    results = tmp_path / "runs" / script.JSON_NAME
    results.parent.mkdir()
    results.write_text(json.dumps(_table()))
    assert script.main(["--readme-from", str(results)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith(f"{script.END}\n\nafter\n")
    assert "<!-- source: runs/timm_table.json -->" in text and script.PLACEHOLDER not in text
    assert "| DeepLabv3+ timm:convnext_atto | 10.00 | 11.00 | 10.50 ± 0.50 |" in text
    assert "| + HANet | 12.00 | 13.50 | 12.75 ± 0.50 |" in text
    assert "| timm:convnext_atto | 16 | 8.000M | 8.200M | 2.4 % | 200.00 | 200.50 | 0.249 % |" in text
    assert script.main(["--check"]) == 0
    readme.write_text(text.replace("12.75 ± 0.50", "14.00 ± 0.50"))  # a hand edit
    assert script.main(["--check"]) == 1
