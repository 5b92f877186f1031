"""Type aliases shared across zchunk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

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
type FilterName = Literal[
    "gaussian",
    "sobel",
    "prewitt",
    "laplace",
    "gaussian_gradient_magnitude",
    "median",
    "uniform",
    "minimum",
    "maximum",
]
type Mode = Literal["reflect", "nearest", "mirror", "constant"]

#: The option values, for the CLI's choices (which must not import the heavy modules).
METHODS: tuple[str, ...] = get_args(ProjectionMethod.__value__)
FILTERS: tuple[str, ...] = get_args(FilterName.__value__)
MODES: tuple[str, ...] = get_args(Mode.__value__)
