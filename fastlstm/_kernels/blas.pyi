# Type stub of blas.pyx: scipy's OpenBLAS thread count and the test twins of the
# row-major gemm wrapper (a, b, c: C-contiguous, all float32 or float64).
import numpy as np

def blas_threads() -> int | None: ...
def gemm_twin(trans_a: bool, trans_b: bool, alpha: float, a: np.ndarray, b: np.ndarray,
              beta: float, c: np.ndarray) -> None: ...
