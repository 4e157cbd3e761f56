"""Smoke test of an installed fastlstm, run from outside the source tree: by sdist_check.sh on
the serial wheel built from the sdist, and by .ci/run on the README's OpenMP install.

Usage: python sdist_smoke.py {openmp|serial}. Checks that the package imports from
site-packages with its typing files, that forward, backward, streaming and save/load run
and agree with the NumPy reference, and that the build is the one asked for.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

import fastlstm as fl
from fastlstm import reference
from fastlstm._kernels import openmp as _openmp

expected = sys.argv[1]
package_dir = os.path.dirname(fl.__file__)
assert "site-packages" in package_dir, f"fastlstm imported from {package_dir}, not site-packages"
for name in ("py.typed", "_kernels/lstm.pyi", "_kernels/blas.pyi", "_kernels/openmp.pyi",
             "_kernels/quant.pyi", "_kernels/probe.pyi", "_kernels/update.pyi",
             "_kernels/layers.pyi"):
    assert os.path.exists(os.path.join(package_dir, name)), f"{name} is not installed"

openmp = _openmp.openmp_enabled()
assert openmp == (expected == "openmp"), f"expected a {expected} build, openmp_enabled()={openmp}"
if not openmp:
    assert fl.get_num_threads() == 1, fl.get_num_threads()

m = fl.LSTM(5, 13, num_layers=2, seed=0)  # H not a multiple of 8, in != H
x = np.random.default_rng(1).standard_normal((7, 3, 5)).astype(np.float32)
out, (h_n, c_n) = m(x)
ref_out, (ref_h, ref_c), cache = reference.forward(m.state_dict(), x, num_layers=2)
forward_diff = max(float(np.abs(a - b).max()) for a, b in ((out, ref_out), (h_n, ref_h),
                                                            (c_n, ref_c)))
grad = np.ones_like(out)
dx, _ = m.backward(grad)
ref_dx, _, ref_grads = reference.backward(cache, grad)
backward_diff = max(float(np.abs(dx - ref_dx).max()),
                    max(float(np.abs(m.grads[k] - g).max()) for k, g in ref_grads.items()))
print(f"max |fastlstm - reference|: forward {forward_diff:.2e}, backward {backward_diff:.2e}")
assert forward_diff < 2e-5 and backward_diff < 2e-4

m.eval()
step = m.stream().step
stream_out = np.stack([step(x[t, 0]) for t in range(x.shape[0])])
stream_diff = float(np.abs(stream_out - m(x[:, :1])[0][:, 0]).max())
print(f"max |stream - forward|: {stream_diff:.2e}")
assert stream_diff < 2e-5

exact = m(x)[0]
for dtype, bound in (("bfloat16", 2e-2), ("int8", 2e-2)):
    quant_diff = float(np.abs(fl.quantize(m, dtype)(x)[0] - exact).max())
    print(f"max |{dtype} - float32|: {quant_diff:.2e}")
    assert quant_diff < bound

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "m.safetensors")
    fl.save(m, path)
    loaded = fl.load(path)
    assert all(np.array_equal(v, loaded.state_dict()[k]) for k, v in m.state_dict().items())

script = os.path.join(os.path.dirname(sys.executable), "fastlstm")  # the console script
info = subprocess.run([script, "info"], capture_output=True, text=True, check=True).stdout
openmp_line = next(line for line in info.splitlines() if line.startswith("OpenMP:"))
print(f"fastlstm info: {openmp_line}")
assert openmp_line.startswith("OpenMP: on" if openmp else "OpenMP: off"), info
print(f"smoke test passed: {expected} build, fastlstm {fl.__version__} from {package_dir}")
