"""Type aliases shared across zchunk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import dask.array as da
    import numpy as np

type PathLike = str | os.PathLike[str]
type SourceLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | np.ndarray | da.Array
type MemoryLike = int | str | None
type ProjectionMethod = Literal["max", "min", "sum", "mean", "std", "median", "percentile"]
type Like = Literal["numpy", "imagej"]
