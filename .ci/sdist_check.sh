#!/usr/bin/env bash
# Packaging check: build the sdist, check that it holds the Cython and C sources, build a
# wheel from it with FASTLSTM_NO_OPENMP=1 (serial kernels) and check the wheel's files,
# install it into a fresh virtual environment (numpy and scipy come from the package index)
# and run the smoke test from outside the source tree. The OpenMP build is the one the
# README's first command installs; .ci/run runs the same smoke test on it.
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
python -m venv "$work/venv"
pip="$work/venv/bin/python -m pip --quiet --disable-pip-version-check"
FASTLSTM_NO_OPENMP=1 $pip wheel --no-deps --no-cache-dir --wheel-dir "$work/wheel" "$sdist" \
    > "$work/wheel.log" 2>&1 || { cat "$work/wheel.log"; exit 1; }
wheel=$(ls "$work"/wheel/fastlstm-*.whl)
"$work/venv/bin/python" - "$wheel" <<'PY'
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
cd "$work" && "$work/venv/bin/python" smoke.py serial
echo "sdist check passed"
