#!/usr/bin/env bash
# The kernels under AddressSanitizer and UndefinedBehaviorSanitizer: a separate build of the
# tree (FASTLSTM_SANITIZE=1) in a temporary directory, running the kernel, quantisation,
# module, io and ONNX tests, the products' own on every instruction set this CPU offers,
# on 1 and 2 threads.
# Any sanitizer report fails the job. Leak detection is off: the interpreter itself keeps
# memory to the end on purpose. Needs the test extras installed (README, command 2).
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
git ls-files --cached --others --exclude-standard | tar cf - -T - | tar xf - -C "$build"
cd "$build"
FASTLSTM_SANITIZE=1 python setup.py -q build_ext --inplace -j 2 > build.log 2>&1 || {
    cat build.log; exit 1; }

logs="$build/sanitizer-logs"
mkdir -p "$logs"
# libstdc++ is preloaded too, so C++ exceptions inside PyTorch pass the ASan interceptor
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:log_path=$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"

# The sanitized build is the one imported, and it carries the sanitizer checks.
python - "$build" <<'EOF'
import pathlib, sys
import fastlstm
from fastlstm._kernels import lstm
assert pathlib.Path(fastlstm.__file__).is_relative_to(sys.argv[1]), fastlstm.__file__
binary = pathlib.Path(lstm.__file__).read_bytes()
assert b"__asan_report" in binary and b"__ubsan_handle" in binary, "not a sanitized build"
# the register block's range checks (packed.h), which stand in for its own instrumentation
assert b"__asan_region_is_poisoned" in binary, "the packed products' range checks are missing"
print("sanitized build:", lstm.__file__, "| instruction sets:", lstm.supported_isas())
EOF

# The products' tests (parity with the reference, the register blocks, the bits for any
# thread count) on every instruction set the CPU offers; the paths without a parallel region
# on one thread; and everything (modules, files, ONNX, PyTorch parity) on the CPU's best set
# and 2 threads. What an instruction set does not change (quantisation, the thread pool, the
# memory-growth loops) runs once.
isa_tests=(tests/kernels/test_kernels.py tests/kernels/test_kernel_properties.py
           tests/kernels/test_layer_kernels.py tests/kernels/test_determinism.py
           tests/api/test_lstm.py)
one_thread_tests=(tests/kernels/test_kernels.py tests/kernels/test_kernel_properties.py
                  tests/kernels/test_threads.py tests/kernels/test_quantize.py
                  tests/kernels/test_layer_kernels.py tests/kernels/test_update.py
                  tests/kernels/test_arrays.py tests/api/test_lstm.py tests/api/test_lookup.py)
tests=("${one_thread_tests[@]}" tests/kernels/test_determinism.py tests/kernels/test_probe.py
       tests/api/test_modules.py tests/kernels/test_gradcheck.py tests/kernels/test_reference.py
       tests/interop/test_io.py tests/interop/test_onnx.py tests/interop/test_fuzz_loaders.py
       tests/interop/test_torch_parity.py)

failed=0
run() {   # run VAR=value ... -- test files: the tests under that environment
    local env=()
    while [[ $1 != -- ]]; do env+=("$1"); shift; done
    shift
    local files=0 arg
    for arg; do [[ $arg == *.py ]] && files=$((files + 1)); done
    echo "== sanitized tests with ${env[*]}: $files files"
    env "${env[@]}" python -m pytest -q -p no:cacheprovider "$@" | tail -3 || failed=1
}
# the CPU's best set runs in the last run below; the lower ones here
lower_isas=($(python -c "from fastlstm._kernels import lstm; print(*lstm.supported_isas()[:-1])"))
for isa in "${lower_isas[@]}"; do
    run FASTLSTM_ISA="$isa" OMP_NUM_THREADS=2 -- -k "not memory_growth" "${isa_tests[@]}"
done
run OMP_NUM_THREADS=1 -- "${one_thread_tests[@]}"
run OMP_NUM_THREADS=2 -- "${tests[@]}"

if grep -l -E "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer" "$logs"/* 2>/dev/null; then
    cat "$logs"/*
    failed=1
fi
if (( failed )); then
    echo "sanitizer job FAILED"
    exit 1
fi
echo "sanitizer job passed: no reports"
