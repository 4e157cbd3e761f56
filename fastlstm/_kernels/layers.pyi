# Type stub of the compiled layer kernels (layers.pyx).
import numpy as np

def embedding_backward(
    grad_weight: np.ndarray, indices: np.ndarray, grad_out: np.ndarray, skip_index: int,
) -> None: ...
def sparse_softmax_cross_entropy(
    loss: np.ndarray, grad: np.ndarray, logits: np.ndarray, target: np.ndarray, isa: str,
    n_threads: int = 1, divisor: float = 1,
) -> None: ...
def shared_state_address() -> int: ...
