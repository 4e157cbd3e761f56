"""pytest-benchmark suite (a package so its test_bench.py and tests/test_bench.py can share a run)."""
