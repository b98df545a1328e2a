#!/usr/bin/env bash
# Runs a sweep of the CUDA op tests under compute-sanitizer: memcheck (out-of-bounds and
# misaligned accesses, launch errors) and racecheck (shared-memory races), and initcheck
# (reads of uninitialised device memory, e.g. a workspace read before it is written) when
# asked for with TOOLS.
#
#   scripts/sanitize_cuda.sh            # memcheck + racecheck
#   TOOLS="memcheck racecheck initcheck" scripts/sanitize_cuda.sh
#   scripts/sanitize_cuda.sh -k "gate"  # extra pytest arguments narrow the sweep further
#
# Exits 0 with a message when there is no GPU (nothing to check); non-zero when a tool
# reports an error, a test fails, or compute-sanitizer is missing on a machine with a GPU.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TOOLS="${TOOLS:-memcheck racecheck}"

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "sanitize_cuda: no CUDA device visible to torch; skipping (nothing to check)"
  exit 0
fi
if ! "$PYTHON" -c "import sys, hanet_fast; sys.exit(0 if hanet_fast._extension.built_with_cuda() else 1)"; then
  echo "sanitize_cuda: hanet_fast was built without its CUDA kernels; rebuild with pip install -e ." >&2
  exit 1
fi

SANITIZER="${COMPUTE_SANITIZER:-}"
if [[ -z "$SANITIZER" ]]; then
  for candidate in "$(command -v compute-sanitizer || true)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
      /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then
      SANITIZER="$candidate"
      break
    fi
  done
fi
if [[ -z "$SANITIZER" ]]; then
  echo "sanitize_cuda: compute-sanitizer not found (install the CUDA toolkit or set COMPUTE_SANITIZER)" >&2
  exit 1
fi

# The sweep: every cuda test of tests/test_ops.py, with its parity grid cut to float32 and
# bfloat16 (vector widths 4 and 8), plus the cross-backend shapes of tests/test_cuda_build.py
# (aligned and misaligned, both memory formats) but the largest.
# OPS_SELECTION / BUILD_SELECTION in the environment replace them (scripts/gpu_session.sh narrows
# the sweep to the cuda backend to fit its time budget).
OPS_SELECTION="${OPS_SELECTION:-cuda and not (matches_reference and (float64 or float16))}"
BUILD_SELECTION="${BUILD_SELECTION:-matches_cpu_backend and (float32 or bfloat16) and not L1_like}"

# Without the caching allocator every tensor is its own allocation, so memcheck sees
# out-of-bounds accesses that would otherwise land inside a cached block.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1

status=0
for tool in $TOOLS; do
  echo "== compute-sanitizer --tool $tool"
  if ! "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 20 \
      "$PYTHON" -m pytest -q -p no:cacheprovider -x \
      tests/test_ops.py -k "$OPS_SELECTION" "$@"; then
    echo "sanitize_cuda: $tool failed on tests/test_ops.py" >&2
    status=1
  fi
  if ! "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 20 \
      "$PYTHON" -m pytest -q -p no:cacheprovider -x \
      tests/test_cuda_build.py -k "$BUILD_SELECTION" "$@"; then
    echo "sanitize_cuda: $tool failed on tests/test_cuda_build.py" >&2
    status=1
  fi
done
if [[ $status -eq 0 ]]; then
  echo "sanitize_cuda: clean ($TOOLS)"
fi
exit $status
