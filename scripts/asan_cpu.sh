#!/usr/bin/env bash
# Runs the CPU op tests against an AddressSanitizer build of the C++ op library (issue 13: a
# kernel handed bad indices wrote outside its tensors). The library is built in a temporary copy
# of the tree, so the installed one is left alone; the copy is removed afterwards.
#
#   scripts/asan_cpu.sh                    # tests/test_ops.py, cpu parametrisations
#   scripts/asan_cpu.sh tests/test_ops.py -k "cpu and gradcheck"     # any pytest arguments
#
# Needs g++ with libasan (the
# compiler torch.utils.cpp_extension uses). tests/test_asan.py runs it (marked slow).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/hanet_fast_asan.XXXXXX")
trap 'rm -rf "$work"' EXIT

libasan=$(g++ -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "asan_cpu.sh: g++ has no libasan.so (got '$libasan'); install the compiler's sanitizer runtime" >&2
  exit 2
fi

cp -r "$root/csrc" "$root/kernels" "$root/hanet_fast" "$root/tests" "$root/setup.py" "$root/pyproject.toml" "$work"
find "$work" \( -name '_C*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +

# Triton's native library aborts when loaded under the sanitizer runtime: a stand-in package
# that fails to import makes the triton backend (and torch's triton probes) see no triton.
mkdir -p "$work/no_triton/triton"
echo 'raise ImportError("triton is hidden in the AddressSanitizer run")' > "$work/no_triton/triton/__init__.py"

cd "$work"
start=$(date +%s)
# setuptools adds CFLAGS / LDFLAGS to every compile and link.
CFLAGS="-fsanitize=address -fno-omit-frame-pointer" LDFLAGS="-fsanitize=address" HANET_FAST_CUDA=0 \
  python setup.py build_ext --inplace > build.log 2>&1 || { tail -50 build.log >&2; exit 1; }
echo "asan_cpu.sh: built in $(( $(date +%s) - start )) s"
if ! nm -D hanet_fast/_C*.so | grep -c __asan_ > /dev/null; then
  echo "asan_cpu.sh: the library was built without AddressSanitizer (CFLAGS ignored?)" >&2
  exit 1
fi

# libstdc++ is preloaded too: python does not link it, and the sanitizer, loaded first, must find
# its __cxa_throw (else the first C++ exception, e.g. a TORCH_CHECK, aborts). Leak checking is
# off: the Python interpreter itself never frees some allocations.
export LD_PRELOAD="$libasan $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1" PYTHONPATH="$work/no_triton:$work"
loaded=$(python -c "import hanet_fast._C as c; print(c.__file__)")
case "$loaded" in
  "$work"/*) ;;
  *) echo "asan_cpu.sh: the tests would load $loaded, not the sanitized library" >&2; exit 1 ;;
esac

if [ $# -eq 0 ]; then
  set -- tests/test_ops.py -k "cpu and not triton"
fi
start=$(date +%s)
OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider -x "$@"
echo "asan_cpu.sh: tests passed in $(( $(date +%s) - start )) s"
