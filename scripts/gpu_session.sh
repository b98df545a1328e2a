#!/usr/bin/env bash
# Everything the first session with a GPU must do, as one command that fits in 9 minutes on an
# H100 / H200 (the device tool's one-call limit is 10): build the CUDA kernels, run the GPU
# tests, the compute-sanitizer sweep, the op benchmarks under a budget and Nsight Compute
# counters of the four main kernels, each stage under its own timeout so that one hang cannot
# eat the rest, and every result written as a file.
#
#   scripts/gpu_session.sh --dry-run      # here, without a GPU: the plan and its time budget
#   scripts/gpu_session.sh                # on a GPU machine: results in benchmarks/results/<name>/
#   scripts/gpu_session.sh --out "$OUT"   # through the device tool: <name>.tar.gz, summary.md and
#                                         # session.log in $OUT (it returns 8 files, 2 folders deep);
#                                         # `tar -xzf <name>.tar.gz -C benchmarks/results` to commit
#   scripts/gpu_session.sh --stages bench,ncu   # only these stages (e.g. a second call's rerun)
#
# <name> is gpu-session-<gpu>-<YYYY-MM-DD> (gpu as benchmarks/run.py names it). The folder holds
# one log per stage, summary.md (each stage's status, seconds and budget, and the key lines of
# its output), pytest-gpu.xml, bench/ (benchmarks/run.py's results folder), ncu.csv and ncu.md.
# Stages run in priority order; a stage gets min(its budget, what is left of the total), and
# is skipped when under 10 s would be left. A stage whose tool cannot work on this machine
# (no counters for ncu, "device not supported" for compute-sanitizer: seen on gVisor machines)
# is marked `unavailable`, not failed. Exit status: 0 when every stage that ran passed or was
# unavailable, 1 otherwise. Needs: python3 with a CUDA torch (PYTHON overrides), nvcc,
# setuptools; ncu and compute-sanitizer are optional. Nothing is downloaded.
set -uo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
OUT_DIR=""
ONLY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out) [[ $# -ge 2 ]] || { echo "gpu_session: --out needs a folder" >&2; exit 2; }; OUT_DIR="$2"; shift ;;
    --stages) [[ $# -ge 2 ]] || { echo "gpu_session: --stages needs a list" >&2; exit 2; }; ONLY="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_session: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

export PY="${PYTHON:-python3}"
TOTAL_S="${GPU_SESSION_BUDGET_S:-540}"  # 9 minutes
[[ "$TOTAL_S" =~ ^[0-9]+$ ]] || { echo "gpu_session: GPU_SESSION_BUDGET_S must be whole seconds, got '$TOTAL_S'" >&2; exit 2; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# ------------------------------------------------------------------------------------------ stages
# name | budget in s | what it does. Budgets measured or estimated as noted; the total is 540.
STAGES=(
  "env|20|GPU, driver, nvcc, torch, triton and tool versions (nvidia-smi, ncu, compute-sanitizer)"
  "build|150|HANET_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation --no-deps -e . (each .cu file takes ~20 s of nvcc on one core here)"
  "check|20|the extension has its CUDA kernels; every op once on the GPU against the reference"
  "gpu-tests|120|pytest -m gpu tests/ (pytest-xdist -n 8 when installed: Triton compiles on the CPUs)"
  "bench|110|benchmarks/run.py --suites ops,module --formats channels_last,nchw --budget-s 75"
  "ncu|70|ncu --clock-control none: dram__throughput, achieved occupancy, L2 write requests of pool/gate fwd/bwd, cuda and triton, fp32 and bf16, NCHW and NHWC (scripts/ncu_kernels.py)"
  "sanitize|50|TOOLS=memcheck scripts/sanitize_cuda.sh, cuda backend only (what fits: the log says how far it got)"
)

stage_env() {
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git -C "$REPO" rev-parse HEAD 2>/dev/null && git -C "$REPO" status --short | head -20
  nvidia-smi || echo "nvidia-smi: not found"
  nvcc --version 2>&1 | tail -2 || echo "nvcc: not found"
  for tool in ncu compute-sanitizer; do
    if command -v "$tool" >/dev/null; then "$tool" --version 2>&1 | tail -1; else echo "$tool: not on PATH"; fi
  done
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); p = torch.cuda.get_device_properties(0); print(p.name, p.multi_processor_count, 'SMs', p.total_memory // 2**20, 'MiB')"
}

stage_build() {
  HANET_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
    "$PY" -m pip install --no-build-isolation --no-deps -v -e "$REPO"
}

stage_check() {
  "$PY" - <<'EOF'
import torch, hanet_fast
from hanet_fast import ops
from hanet_fast.ops import reference
assert hanet_fast._extension.built_with_cuda(), "the extension has no CUDA kernels"
torch.manual_seed(0)
for fmt in (torch.contiguous_format, torch.channels_last):
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 24, 37, 41, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
        attn = torch.rand(2, 24, 16, device="cuda", dtype=dtype)
        for mode in ("avg", "max"):
            got = hanet_fast.height_pool(x, 16, mode, backend="cuda").float()
            want = reference.height_pool(x.double(), 16, mode).float()
            torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
        got = hanet_fast.height_gate(x, attn, backend="cuda").float()
        torch.testing.assert_close(got, reference.height_gate(x.double(), attn.double()).float(), atol=2e-2, rtol=2e-2)
        print("ok", fmt, dtype)
torch.cuda.synchronize()
print("check: cuda ops agree with the reference")
EOF
}

stage_gpu_tests() {
  local parallel=()
  if "$PY" -c "import xdist" 2>/dev/null; then parallel=(-n 8); fi
  "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider "${parallel[@]}" --junitxml="$RES/pytest-gpu.xml" tests/
}

stage_bench() {
  "$PY" benchmarks/run.py --suites ops,module --formats channels_last,nchw --budget-s 75 --out "$RES/bench"
}

stage_ncu() {
  if ! command -v ncu >/dev/null; then echo "ncu: not on PATH"; return 3; fi
  local metrics
  metrics=$("$PY" -c "import sys; sys.path.insert(0, 'scripts'); import ncu_kernels; print(','.join(ncu_kernels.METRICS))")
  ncu --clock-control none --profile-from-start off --nvtx --csv --metrics "$metrics" \
    --log-file "$RES/ncu.csv" "$PY" scripts/ncu_kernels.py --backends cuda,triton
  local rc=$?
  if grep -qE "ERR_NVGPUCTRPERM|LibraryNotLoaded|Failed to initialize the profiler|not supported" "$RES/ncu.csv" 2>/dev/null; then
    echo "ncu: cannot read the hardware counters here"; return 3
  fi
  [[ $rc -eq 0 ]] || return $rc
  "$PY" scripts/ncu_kernels.py --summarize "$RES/ncu.csv" | tee "$RES/ncu.md"
}

stage_sanitize() {
  # The cuda backend's kernels only: Triton's compiles run slowly under memcheck.
  TOOLS=memcheck PYTHON="$PY" OPS_SELECTION="cuda and not triton and not (matches_reference and (float64 or float16))" \
    scripts/sanitize_cuda.sh
  local rc=$?
  if [[ $rc -ne 0 ]] && grep -qE "Device not supported|device not supported" "$RES/sanitize.log"; then
    echo "compute-sanitizer: device not supported here"; return 3
  fi
  return $rc
}
if [[ -n "$ONLY" ]]; then  # keep the selected stages, in the usual order
  known=" ${STAGES[*]%%|*} "
  selected=()
  for name in ${ONLY//,/ }; do
    [[ " ${STAGES[*]%%|*} " == *" $name "* ]] || { echo "gpu_session: --stages: unknown stage '$name' (of:${known% })" >&2; exit 2; }
  done
  for entry in "${STAGES[@]}"; do [[ ",$ONLY," == *",${entry%%|*},"* ]] && selected+=("$entry"); done
  STAGES=("${selected[@]}")
fi
export -f stage_env stage_build stage_check stage_gpu_tests stage_bench stage_ncu stage_sanitize

# The lines of a stage's log that the summary quotes.
key_lines() {
  case "$1" in
    gpu-tests) grep -E "passed|failed|error" "$2" | tail -3 ;;
    bench) grep -E "^\S.*wrote|skipped for the budget|Traceback|Error" "$2" | tail -3 ;;
    ncu|sanitize|check|build) grep -E "unavailable|cannot|not supported|clean|ERROR|Error|error:|agree|Successfully" "$2" | tail -3 ;;
    env) grep -E "SMs|release|Driver Version" "$2" | head -3 ;;
  esac
}

total_planned=0
for entry in "${STAGES[@]}"; do IFS='|' read -r _ budget _ <<<"$entry"; total_planned=$((total_planned + budget)); done

if [[ $DRY_RUN -eq 1 ]]; then
  echo "gpu_session --dry-run: the stages a GPU session runs, in order, each under its own timeout"
  for entry in "${STAGES[@]}"; do
    IFS='|' read -r name budget what <<<"$entry"
    printf '  %-10s %4d s  %s\n' "$name" "$budget" "$what"
  done
  echo "time budget: stages $total_planned s in all, held to $TOTAL_S s ($((TOTAL_S / 60)) min $((TOTAL_S % 60)) s)"
  for tool in nvidia-smi nvcc ncu compute-sanitizer "$PY"; do
    if command -v "$tool" >/dev/null; then echo "  found $tool"; else echo "  missing $tool (its stage would fail or be unavailable)"; fi
  done
  echo "results: benchmarks/results/gpu-session-<gpu>-<date>/ (or <name>.tar.gz, summary.md, session.log under --out)"
  echo "dry run: nothing was run"
  exit 0
fi

# ------------------------------------------------------------------------------------------ run
START=$(date +%s)
DATE=$(date -u +%F)
GPU=$("$PY" -c "import torch; print('-'.join(''.join(c if c.isalnum() else ' ' for c in torch.cuda.get_device_name(0).lower()).split()))" 2>/dev/null || echo "no-gpu")
NAME="gpu-session-$GPU-$DATE"
if [[ -n "$OUT_DIR" ]]; then
  mkdir -p "$OUT_DIR" || exit 2
  WORK=$(mktemp -d)
  export RES="$WORK/$NAME"
else
  export RES="$REPO/benchmarks/results/$NAME"
fi
mkdir -p "$RES"
SUMMARY="$RES/summary.md"
{
  echo "# GPU session $NAME"
  echo
  echo "commit $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown); \`scripts/gpu_session.sh\`, budget $TOTAL_S s"
  echo
  echo "| stage | status | seconds | budget | key lines |"
  echo "|---|---|---|---|---|"
} >"$SUMMARY"

failed=0
for entry in "${STAGES[@]}"; do
  IFS='|' read -r name budget what <<<"$entry"
  left=$((TOTAL_S - ($(date +%s) - START)))
  limit=$((budget < left - 5 ? budget : left - 5))
  if [[ $limit -lt 10 ]]; then
    echo "== $name: skipped, ${left} s left" | tee -a "$RES/session.log"
    echo "| $name | skipped (time) | 0 | $budget | |" >>"$SUMMARY"
    continue
  fi
  echo "== $name (limit $limit s): $what" | tee -a "$RES/session.log"
  t0=$(date +%s)
  timeout -k 10 "$limit" bash -c "stage_${name//-/_}" >"$RES/$name.log" 2>&1
  rc=$?
  seconds=$(($(date +%s) - t0))
  case $rc in
    0) status=ok ;;
    3) status=unavailable ;;
    124|137) status="timed out"; failed=1 ;;
    *) status="failed (exit $rc)"; failed=1 ;;
  esac
  keys=$(key_lines "$name" "$RES/$name.log" | tr '|' '/' | tr '\n' ' ' | cut -c1-300)
  echo "   $status in $seconds s" | tee -a "$RES/session.log"
  tail -5 "$RES/$name.log" | sed 's/^/   | /' >>"$RES/session.log"
  echo "| $name | $status | $seconds | $budget | $keys |" >>"$SUMMARY"
done
echo >>"$SUMMARY"
echo "total $(($(date +%s) - START)) s" >>"$SUMMARY"
cat "$SUMMARY"

if [[ -n "$OUT_DIR" ]]; then
  tar -C "$WORK" -czf "$OUT_DIR/$NAME.tar.gz" "$NAME"
  cp "$SUMMARY" "$OUT_DIR/summary.md"
  cp "$RES/session.log" "$OUT_DIR/session.log"
  [[ -f "$RES/ncu.md" ]] && cp "$RES/ncu.md" "$OUT_DIR/ncu.md"
  echo "gpu_session: $OUT_DIR/$NAME.tar.gz (extract into benchmarks/results/ to commit)"
else
  echo "gpu_session: results in $RES"
fi
exit $failed
