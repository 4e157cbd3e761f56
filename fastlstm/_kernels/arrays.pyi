# Type stub of arrays.pyx: uninitialised arrays on cache-line boundaries.
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

def aligned_empty(shape: int | tuple[int, ...], dtype: DTypeLike) -> np.ndarray[Any, Any]: ...
