"""Build the fastlstm Cython extensions.

OpenMP is detected by compiling a tiny program with ``-fopenmp``; without it the kernels
build serially (with a loud warning) and stay correct. The gate nonlinearities are compiled
for several instruction sets at once (``target_clones`` in ``fastlstm/_kernels``) so one portable
build runs AVX-512/AVX2 code where the CPU has it. ``FASTLSTM_NATIVE=1`` adds
``-march=native`` for a local build tuned to this machine. ``FASTLSTM_SANITIZE=1`` builds
with AddressSanitizer and UndefinedBehaviorSanitizer (any report aborts; see
``.ci/sanitize.sh``).
"""
import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import Extension, setup
import numpy
from Cython.Build import cythonize

OPENMP_TEST = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or ([], []) if the compiler lacks it."""
    if os.environ.get("FASTLSTM_NO_OPENMP"):
        return [], []
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler.split()[0]) is None:
        return [], []
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "omp_test.c")
        with open(source, "w") as f:
            f.write(OPENMP_TEST)
        result = subprocess.run(
            compiler.split() + ["-fopenmp", source, "-o", os.path.join(tmp, "omp_test")],
            capture_output=True,
        )
    if result.returncode != 0:
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


omp_compile, omp_link = openmp_flags()
if not omp_compile:
    print("\n" + "!" * 78 + "\n!! WARNING: OpenMP not found; fastlstm kernels are built SERIAL "
          "(single thread).\n" + "!" * 78 + "\n", file=sys.stderr)

sanitized = bool(os.environ.get("FASTLSTM_SANITIZE"))
# -fno-wrapv undoes the -fwrapv of Python's own flags: with wrapping int indices gcc cannot
# prove the cell loops contiguous and gathers element by element. A sanitized build takes
# -O1 and line tables, as the sanitizers' own documentation suggests: its lstm.c compiled in
# 50 s instead of 114 s at -O3 with full debug information, and the sanitized tests ran no
# slower (the CI's sanitizer job 499 -> 264 s).
compile_args = ["-O1" if sanitized else "-O3", "-fno-wrapv", "-fno-math-errno",
                "-fno-trapping-math", "-fno-semantic-interposition"]
if os.environ.get("FASTLSTM_NATIVE"):
    compile_args.append("-march=native")
link_args = list(omp_link)
if sanitized:
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                "-fno-omit-frame-pointer", "-g1"]
    compile_args += sanitize
    link_args += sanitize
compile_args += omp_compile
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
          ("FASTLSTM_OPENMP", "1" if omp_compile else "0")]


# The extensions compile side by side, one per usable core (lstm.pyx alone takes most of a
# serial build's 90 s; `python setup.py build_ext -j N` still overrides this).
jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def extension(name):
    return Extension(
        f"fastlstm._kernels.{name}", [f"fastlstm/_kernels/{name}.pyx"],
        include_dirs=["fastlstm/_kernels", numpy.get_include()],
        extra_compile_args=compile_args, extra_link_args=link_args, libraries=["m"],
        define_macros=macros,
    )


setup(
    ext_modules=cythonize(
        [extension(name) for name in ("openmp", "arrays", "blas", "lstm", "quant", "probe", "update", "layers")]
        # Cython's own helpers (typed memoryviews and the like) compiled once for all the
        # modules, not into each: a third less C to compile
        + [Extension("fastlstm._kernels._cyutility", ["fastlstm/_kernels/_cyutility.c"],
                     extra_compile_args=compile_args, extra_link_args=link_args)],
        shared_utility_qualified_name="fastlstm._kernels._cyutility",
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    ),
    options={"build_ext": {"parallel": jobs or 1}},
)
