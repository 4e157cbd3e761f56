# Type stub of the compiled kernels (lstm.pyx). Arrays are C-contiguous, all float32 or
# all float64 (one Cython fused type per call); shapes are checked by the caller.
from typing import Any

from typing_extensions import Self, disjoint_base

import numpy as np
import numpy.typing as npt

@disjoint_base
class ForwardCall: ...

def prepare_forward(
    out: np.ndarray, out_col: int, h_n: np.ndarray, c_n: np.ndarray, gates: np.ndarray,
    hidden: np.ndarray, cells: np.ndarray, clipped: np.ndarray, x: np.ndarray,
    h0: np.ndarray, c0: np.ndarray, W_ih: np.ndarray, W_hh: np.ndarray, bias: np.ndarray,
    peep: np.ndarray, lengths: np.ndarray, reverse: bool, training: bool, clip: float,
) -> ForwardCall: ...
def run_forward(calls: list[ForwardCall], n_threads: int) -> bool: ...
def lstm_backward(
    dx: np.ndarray, accumulate_dx: bool, dh: np.ndarray, dc: np.ndarray,
    dW_ih: np.ndarray, dW_hh: np.ndarray, db: np.ndarray, dpeep: np.ndarray,
    dgates: np.ndarray, grad_out: np.ndarray, grad_col: int, gates: np.ndarray,
    hidden: np.ndarray, cells: np.ndarray, clipped: np.ndarray, x: np.ndarray,
    h0: np.ndarray, c0: np.ndarray, W_ih: np.ndarray, W_hh: np.ndarray, peep: np.ndarray,
    lengths: np.ndarray, reverse: bool, n_threads: int,
) -> bool: ...

ISAS: tuple[str, str, str]
SLICE_UNITS: int

def packed_isa() -> str: ...
def packed_product_twin(C: np.ndarray, A: np.ndarray, W: np.ndarray, accumulate: bool,
                        isa: str) -> None: ...
def weights_changed() -> None: ...
def inject_late_thread(step: int, microseconds: int) -> None: ...
def set_adaptive_threads(adaptive: bool) -> bool: ...
def team_size(requested: int) -> int: ...
def last_call() -> tuple[int, bool]: ...

@disjoint_base
class StreamKernel:
    """Stateful single-step inference over all layers of a unidirectional LSTM."""

    @property
    def h(self) -> np.ndarray: ...
    @property
    def c(self) -> np.ndarray: ...
    def __new__(
        cls,
        layers: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None,
                           np.ndarray | None]],
        batch_size: int, dtype: Any, clip: float,
    ) -> Self: ...
    def refresh(self) -> None: ...
    def reset(self) -> None: ...
    def step(self, x_t: npt.ArrayLike) -> np.ndarray: ...
