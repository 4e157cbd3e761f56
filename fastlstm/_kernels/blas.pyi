# Type stub of blas.pyx: the loading of scipy's BLAS and the test twin of the
# row-major gemm wrapper (a, b, c: C-contiguous, all float32 or float64).
import numpy as np

def load() -> None: ...
def gemm_twin(trans_a: bool, trans_b: bool, alpha: float, a: np.ndarray, b: np.ndarray,
              beta: float, c: np.ndarray) -> None: ...
