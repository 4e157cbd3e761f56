# Type stub of the compiled quantised kernels (quant.pyx).
from typing import Any

from typing_extensions import Self, disjoint_base

import numpy as np

DTYPES: tuple[str, str]

def cpu_paths() -> dict[str, str]: ...
def quantized_path(dtype: str) -> str: ...
def set_quantized_path(path: str | None = None) -> None: ...
def quantized_forward(
    dtype: str, out: np.ndarray, out_col: int, h_n: np.ndarray, c_n: np.ndarray,
    x: np.ndarray, h0: np.ndarray, c0: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
    s_ih: np.ndarray, s_hh: np.ndarray, r_ih: np.ndarray, r_hh: np.ndarray, bias: np.ndarray,
    peep: np.ndarray, lengths: np.ndarray, reverse: bool, clip: float, n_threads: int,
) -> None: ...

@disjoint_base
class QuantStreamKernel:
    """Stateful single-step quantised inference over all layers of a unidirectional LSTM."""

    @property
    def h(self) -> np.ndarray: ...
    @property
    def c(self) -> np.ndarray: ...
    def __new__(cls, module: Any, batch_size: int) -> Self: ...
    def reset(self) -> None: ...
    def step(self, x_t: Any) -> np.ndarray: ...
