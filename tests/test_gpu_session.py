"""scripts/gpu_session.sh (the first GPU session's one command) and scripts/ncu_kernels.py, as far
as they run without a GPU: the dry run's plan and budget, the stage machinery and result layout,
and the summary of Nsight Compute's CSV."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_session.sh"
sys.path.insert(0, str(REPO / "scripts"))


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          **kwargs)


def test_dry_run_prints_every_stage_and_a_budget_within_nine_minutes():
    run = _run("--dry-run")
    assert run.returncode == 0, run.stderr
    stages = re.findall(r"^  (\S+)\s+(\d+) s  ", run.stdout, flags=re.M)
    assert [name for name, _ in stages] == ["env", "build", "check", "gpu-tests", "bench", "ncu", "sanitize"]
    total = re.search(r"time budget: stages (\d+) s in all, held to (\d+) s", run.stdout)
    assert total and int(total.group(1)) == sum(int(b) for _, b in stages)
    assert int(total.group(2)) <= 540 and int(total.group(1)) <= 540
    assert "nothing was run" in run.stdout


def test_bad_arguments_are_one_line_errors():
    for args, message in [(("--stages", "nope"), "unknown stage 'nope'"), (("--frobnicate",), "unknown argument"),
                          (("--out",), "--out needs a folder")]:
        run = _run(*args)
        assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_stages_write_logs_summary_and_a_tarball(tmp_path):
    """Without a GPU the ncu stage is `unavailable` and env fails, but both are recorded and packed."""
    out = tmp_path / "out"
    run = _run("--stages", "ncu", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr  # unavailable is not a failure
    names = sorted(p.name for p in out.iterdir())
    tarball = [n for n in names if n.endswith(".tar.gz")]
    assert len(tarball) == 1 and {"summary.md", "session.log"} <= set(names) and len(names) <= 8
    assert re.search(r"^\| ncu \| unavailable \| \d+ \| 70 \|", (out / "summary.md").read_text(), flags=re.M)
    with tarfile.open(out / tarball[0]) as tar:
        members = tar.getnames()
    folder = tarball[0][: -len(".tar.gz")]
    assert folder.startswith("gpu-session-") and f"{folder}/ncu.log" in members and f"{folder}/summary.md" in members


def test_ncu_summary_table(tmp_path):
    import ncu_kernels

    header = '"ID","Process ID","Process Name","Host Name","thread Domain:Push/Pop_Range","Kernel Name","Metric Name","Metric Unit","Metric Value"'
    rows = [
        '"0","1","python3","h","cuda/float32/nchw/pool_fwd","rows_nchw_kernel(float)","dram__throughput.avg.pct_of_peak_sustained_elapsed","%","87.5"',
        '"0","1","python3","h","cuda/float32/nchw/pool_fwd","rows_nchw_kernel(float)","sm__warps_active.avg.pct_of_peak_sustained_active","%","91.2"',
        '"1","1","python3","h","cuda/float32/nchw/gate_fwd","forward_nchw_kernel(float)","lts__t_requests_srcunit_tex_op_write.sum","","4096"',
    ]
    path = tmp_path / "ncu.csv"
    path.write_text("==PROF== Connected to process\n" + "\n".join([header, *rows]) + "\n")
    table = ncu_kernels.summarize(str(path)).splitlines()
    assert table[0].startswith("| range | kernel | time | DRAM % of peak | achieved occupancy % | L2 write requests")
    assert "| cuda/float32/nchw/pool_fwd | rows_nchw_kernel | " in table[2] and "87.5 %" in table[2] and "91.2 %" in table[2]
    assert "4096" in table[3] and len(table) == 4
