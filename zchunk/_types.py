"""Type aliases shared across zchunk."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Sequence

    import dask.array as da
    import numpy as np

PathLike: TypeAlias = "str | os.PathLike[str]"
SourceLike: TypeAlias = "str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | np.ndarray | da.Array"
MemoryLike: TypeAlias = "int | str | None"
ProjectionMethod = Literal["max", "min", "sum", "mean", "std", "median", "percentile"]
Like = Literal["numpy", "imagej"]
