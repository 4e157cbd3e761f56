# Type stub of the compiled fused optimizer updates (update.pyx).
import numpy as np

def adam(
    data: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, beta1: float,
    beta2: float, step_size: float, bias_correction2: float, eps: float, n_threads: int = 1,
) -> None: ...
def keras_adam(
    data: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, v_hat: np.ndarray,
    beta_1: float, beta_2: float, alpha: float, epsilon: float, n_threads: int = 1,
) -> None: ...
def shared_state_address() -> int: ...
