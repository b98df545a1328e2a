"""The benchmark runner (benchmarks/run.py) and the README's generated performance section
(scripts/perf_readme.py): a smoke run of every suite writes the results folder with the
expected fields, bad flags fail clearly, and the committed README matches the recorded runs."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)  # benchmarks/ and scripts/ are not installed packages

from benchmarks import run as bench_run  # noqa: E402
from benchmarks.suites import SUITE_NAMES  # noqa: E402

pytest.importorskip("torchvision")  # the model suites build torchvision backbones
pytest.importorskip("matplotlib")

sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
import perf_readme  # noqa: E402

MODEL_ROW_FIELDS = {"case", "backbone", "output_stride", "precision", "format", "size", "batch", "variant", "backend",
                    "ms", "q1_ms", "q3_ms", "min_ms", "times_ms", "images_per_s", "peak_mb", "repeats"}
OVERHEAD_FIELDS = {"overhead_pct", "overhead_q1_pct", "overhead_q3_pct"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> str:
    """One smoke run of every suite, as a user runs it (a script in a fresh process), on one
    thread: the sizes are tiny, and one thread is immune to other processes' load. The model suites'
    compile variant traces with aot_eager: inductor's C++ code generation for two whole networks
    would take minutes of CI (inductor itself is covered by the module and ops tests)."""
    out = str(tmp_path_factory.mktemp("bench") / "smoke")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "run.py"), "--smoke", "--device", "cpu",
         "--threads", "1", "--compile-backend", "aot_eager", "--out", out],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## train-step" in proc.stdout  # the markdown report also goes to stdout
    with open(out + ".stderr", "w") as f:  # the progress, for test_smoke_reports_progress_at_every_stage
        f.write(proc.stderr)
    return out


def test_smoke_reports_progress_at_every_stage(smoke):
    """A smoke run is never silent for long: each model variant's first call (torch.compile's can
    take minutes) is announced as it starts and timed as it ends."""
    with open(smoke + ".stderr") as f:
        err = f.read()
    for suite_case in ("MNv2 OS16 fp32",):
        assert f"{suite_case}: building the variants" in err and f"{suite_case}: timing" in err
        for variant in ("none", "fused", "reference", "compile"):
            assert f"{suite_case} {variant}: first call" in err
            assert f"{suite_case} {variant}: first call done in" in err


def test_smoke_run_writes_every_file(smoke):
    names = set(os.listdir(smoke))
    expected = {"results.json", "results.md"} | {f"{s}.csv" for s in SUITE_NAMES} | {f"{s}.png" for s in SUITE_NAMES}
    assert expected <= names
    for s in SUITE_NAMES:
        with open(os.path.join(smoke, f"{s}.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_smoke_json_has_machine_and_model_rows(smoke):
    with open(os.path.join(smoke, "results.json")) as f:
        run = json.load(f)
    machine = run["machine"]
    for key in ("cpu", "torch", "git_commit", "date", "device_slug", "scheduling", "loadavg_start"):
        assert key in machine
    assert machine["device_slug"] == "cpu"
    assert list(run["suites"]) == list(bench_run.DEFAULT_ORDER)
    assert run["total_s"] > 0 and run["budget"]["skipped"] == []
    # The deployment variants run by default: torch.compile in both suites, onnxruntime in the
    # inference suite where the export extra is installed.
    deploy = {"train-step": ["compile"], "inference": ["compile"] + (["onnxruntime"] if _export_extra() else [])}
    for suite in ("train-step", "inference"):
        rows = run["suites"][suite]["rows"]
        assert [r["variant"] for r in rows] == ["none", "fused", "reference", *deploy[suite]]
        for r in rows:
            assert MODEL_ROW_FIELDS <= set(r)
            assert r["backbone"] == "mobilenet_v2" and r["ms"] > 0 and r["peak_mb"] is None  # no CPU peak memory
            assert (OVERHEAD_FIELDS <= set(r)) == (r["variant"] != "none")
    train = run["suites"]["train-step"]["rows"]
    # Same weights, inputs and random draws: the fused and reference networks give the same first loss.
    assert train[1]["first_value"] == pytest.approx(train[2]["first_value"], rel=1e-4)
    ops_rows = run["suites"]["ops"]["rows"]
    assert {r["op"] for r in ops_rows} == {"pool", "gate"}
    assert {r["op"] for r in run["suites"]["module"]["rows"]} == {"module"}
    assert all(r["check_ok"] in (True, None) for r in ops_rows)


def _export_extra() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def test_smoke_report_compares_the_deployment_variants(smoke):
    with open(os.path.join(smoke, "results.md")) as f:
        text = f.read()
    assert "Deployment: the HANet network (L1-L4) PyTorch eager (fused ops) vs torch.compile" in text
    assert ("vs onnxruntime" in text) == _export_extra()


def test_smoke_csv_matches_json(smoke):
    with open(os.path.join(smoke, "results.json")) as f:
        rows = json.load(f)["suites"]["train-step"]["rows"]
    with open(os.path.join(smoke, "train-step.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert "times_ms" not in table[0] and table[0]["size"] == "64x64"
    assert float(table[1]["overhead_pct"]) == pytest.approx(rows[1]["overhead_pct"])


@pytest.mark.parametrize("argv, message", [
    (["--suites", "ops,bogus"], "unknown suites ['bogus']"),
    (["--suites", "train-step", "--variants", "fused,reference"], "--variants must include 'none'"),
    (["--suites", "train-step", "--variants", "none,nope"], "--variants: unknown 'nope'"),
    (["--suites", "train-step", "--variants", "none,triton", "--device", "cpu"], "cannot run here"),
    (["--suites", "train-step", "--image-size", "12"], "--image-size: expected HxW"),
    (["--suites", "train-step", "--models", "vgg16"], "unknown models ['vgg16']"),
    (["--suites", "ops", "--cases", "L9"], "unknown case ['L9']"),
])
def test_bad_flags_fail_clearly(argv, message, tmp_path):
    with pytest.raises(SystemExit) as error:
        bench_run.main([*argv, "--out", str(tmp_path / "out")])
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing written for a run that could not start


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--warmup", "-1"], ["--budget-s", "-5"], ["--batch", "0"]])
def test_bad_numbers_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as error:
        bench_run.parse_args(argv)
    assert error.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_budget_skips_cases_and_records_them(tmp_path):
    code = bench_run.main(["--smoke", "--device", "cpu", "--threads", "1", "--suites", "ops",
                           "--budget-s", "1e-9", "--out", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "results.json") as f:
        run = json.load(f)
    # Every case would end past the budget: all are skipped, and the report says which.
    assert run["budget"]["skipped"] == ["pool L1 float32 nchw", "gate L1 float32 nchw", "pool L5 float32 nchw",
                                        "gate L5 float32 nchw"]
    assert run["suites"]["ops"]["rows"] == []
    assert "skipped for the budget" in (tmp_path / "results.md").read_text()


# --------------------------------------------------------------------------------------------- README


def test_readme_section_matches_recorded_results(capsys):
    assert perf_readme.main(["--check"]) == 0, capsys.readouterr().err


def test_readme_check_fails_on_a_modified_copy(tmp_path, capsys):
    copy = tmp_path / "README.md"
    text = open(perf_readme.README).read()
    begin = text.index(perf_readme.BEGIN) + len(perf_readme.BEGIN)
    copy.write_text(text[:begin] + "\n| typed by hand | 1.0 |" + text[begin:])
    assert perf_readme.main(["--check", "--readme", str(copy)]) == 1
    assert "stale" in capsys.readouterr().err
    assert perf_readme.main(["--readme", str(copy)]) == 0  # rewriting fixes it ...
    assert copy.read_text() == text  # ... to exactly the committed README
    assert perf_readme.main(["--check", "--readme", str(copy)]) == 0


def test_readme_from_a_gpu_run(smoke, tmp_path):
    """A GPU folder replaces the 'GPU run owed' note with the GPU's own section."""
    results = tmp_path / "results"
    shutil.copytree(smoke, results / "cpu-2000-01-01")
    assert "it is owed" in perf_readme.generate(str(results))
    run = json.loads((results / "cpu-2000-01-01" / "results.json").read_text())
    run["machine"].update(device="cuda", device_slug="nvidia-test-gpu", gpu="NVIDIA Test GPU", gpu_memory_gb=80.0,
                          cuda="13.0", cudnn=91000)
    (results / "nvidia-test-gpu-2000-01-01").mkdir()
    (results / "nvidia-test-gpu-2000-01-01" / "results.json").write_text(json.dumps(run))
    (results / "tmp-scratch").mkdir()  # scratch folders are ignored
    text = perf_readme.generate(str(results))
    assert "it is owed" not in text and "### NVIDIA Test GPU" in text
    assert f"The headline case {perf_readme.HEADLINE} is not in this run." in text
    assert text.index("### CPU") < text.index("### NVIDIA Test GPU")
    assert perf_readme.generate(str(results)) == text  # deterministic


def test_readme_ignores_newer_runs_of_some_suites_only(smoke, tmp_path):
    """A newer run of some suites (a focused measurement) does not replace the complete run."""
    results = tmp_path / "results"
    shutil.copytree(smoke, results / "cpu-2000-01-01")
    text = perf_readme.generate(str(results))
    run = json.loads((results / "cpu-2000-01-01" / "results.json").read_text())
    run["machine"]["date"] = "2100-01-01T00:00:00+00:00"
    del run["suites"]["ops"]
    (results / "cpu-2100-01-01").mkdir()
    (results / "cpu-2100-01-01" / "results.json").write_text(json.dumps(run))
    assert [name for name, _ in perf_readme.newest_runs(str(results))] == ["cpu-2000-01-01"]
    assert perf_readme.generate(str(results)) == text


def test_readme_needs_its_markers():
    with pytest.raises(SystemExit, match="perf:begin"):
        perf_readme.render("# no markers\n", "x\n")


def test_low_precision_checks_are_relative_to_the_references_own_error():
    """In bf16 a backend is held to the float64 oracle tensor by tensor, allowed the reference's
    own error on each tensor (x1.5) or the tolerance; a gradient that is zero in exact arithmetic
    is skipped, and fp32 keeps its absolute tolerance."""
    import torch

    from benchmarks.suites.ops import check_passes, tensor_errors

    exact = (torch.tensor([4.0, -2.0], dtype=torch.float64), torch.full((3,), 1e-16, dtype=torch.float64))
    noisy = (torch.tensor([4.0, -2.125], dtype=torch.bfloat16), torch.tensor([0.5, -0.5, 0.0], dtype=torch.bfloat16))
    errors = tensor_errors(noisy, exact)
    assert errors == [0.125 / 4, 0.0]
    bf16 = torch.bfloat16
    assert check_passes([0.04, 0.0], [0.03, 0.0], bf16)  # within 1.5x the reference's error
    assert not check_passes([0.05, 0.0], [0.03, 0.0], bf16)
    assert check_passes([0.015], [0.0], bf16)  # the tolerance (2e-2) when the reference is exact
    assert not check_passes([0.03, 0.001], [0.001, 0.03], bf16)  # per tensor, not the worst of each
    assert not check_passes([2e-4], None, torch.float32) and check_passes([5e-5], None, torch.float32)
