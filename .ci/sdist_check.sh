#!/usr/bin/env bash
# Packaging check: build the sdist, check that it holds the Cython and C sources, install it
# into fresh virtual environments (numpy and scipy come from the package index) and run a
# smoke test from outside the source tree: once as a wheel with OpenMP, once built with
# FASTLSTM_NO_OPENMP=1 (serial kernels). The two builds run side by side.
# Usage: bash .ci/sdist_check.sh (from any directory; needs `python -m build`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -m build --sdist --outdir "$work/dist" . > "$work/sdist.log" 2>&1 \
    || { cat "$work/sdist.log"; exit 1; }
sdist=$(ls "$work"/dist/fastlstm-*.tar.gz)
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort > "$work/sdist.txt"
missing=0
for source in fastlstm/_kernels/*.pyx fastlstm/_kernels/*.pxd fastlstm/_kernels/*.h \
              fastlstm/_kernels/*.pyi fastlstm/py.typed \
              LICENSE CHANGELOG.md tests/conftest.py; do
    grep -qxF "$source" "$work/sdist.txt" || { echo "sdist lacks $source"; missing=1; }
done
if grep -E '\.(c|so)$' "$work/sdist.txt" | grep -v '^docs/'; then
    echo "sdist holds build outputs (above)"; missing=1
fi
[ "$missing" = 0 ] || exit 1
echo "sdist: $(basename "$sdist"), $(wc -l < "$work/sdist.txt") entries, sources present"

cp "$root/.ci/sdist_smoke.py" "$work/smoke.py"
# one fresh venv per build; $1: openmp or serial
check() (
    set -euo pipefail
    python -m venv "$work/venv-$1"
    pip="$work/venv-$1/bin/python -m pip --quiet --disable-pip-version-check"
    if [ "$1" = openmp ]; then
        $pip wheel --no-deps --no-cache-dir --wheel-dir "$work/wheel" "$sdist"
        wheel=$(ls "$work"/wheel/fastlstm-*.whl)
        "$work/venv-$1/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for name in ("py.typed", "_kernels/lstm.pyi", "_kernels/blas.pyi", "_kernels/openmp.pyi",
             "_kernels/quant.pyi", "_kernels/probe.pyi", "_kernels/update.pyi",
             "_kernels/layers.pyi", "_kernels/arrays.pyi"):
    assert f"fastlstm/{name}" in names, f"wheel lacks fastlstm/{name}"
assert sum(n.endswith(".so") for n in names) == 9, "wheel lacks a compiled module"
assert not [n for n in names if n.endswith(".c")], "wheel holds generated C"
PY
        $pip install "$wheel"
    else
        FASTLSTM_NO_OPENMP=1 $pip install --no-cache-dir "$sdist"
    fi
    cd "$work" && "$work/venv-$1/bin/python" smoke.py "$1"
)
status=0
check openmp > "$work/openmp.log" 2>&1 & openmp_pid=$!
check serial > "$work/serial.log" 2>&1 & serial_pid=$!
wait "$openmp_pid" || status=1
wait "$serial_pid" || status=1
for build in openmp serial; do
    echo "--- $build build"
    cat "$work/$build.log"
done
[ "$status" = 0 ] && echo "sdist check passed"
exit "$status"
