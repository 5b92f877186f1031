"""Build a dask array from a per-block read function, with no open file in the graph.

Every task is a plain tuple ``(read, spec)`` whose `spec` is a small picklable object, so graphs
run under the threads, processes and distributed schedulers alike.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["block_slices", "blocks_array", "normalize_chunks"]


def normalize_chunks(shape: tuple[int, ...], chunk: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Return dask's chunks tuple for a regular chunk shape (the last chunk may be smaller).

    Examples
    --------
    >>> normalize_chunks((5, 7), (5, 3))
    ((5,), (3, 3, 1))
    """
    out = []
    for n, c in zip(shape, chunk, strict=True):
        c = max(1, min(c, n)) if n else 1
        full, rest = divmod(n, c)
        out.append((c,) * full + ((rest,) if rest else ()) if n else (0,))
    return tuple(out)


def block_slices(
    chunks: tuple[tuple[int, ...], ...],
) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """Return ``(block index, slices)`` for every block of a chunks tuple, in C order."""
    starts = [tuple(itertools.accumulate((0, *c[:-1]))) for c in chunks]
    out = []
    for index in itertools.product(*(range(len(c)) for c in chunks)):
        slices = tuple(
            slice(s[i], s[i] + c[i]) for i, s, c in zip(index, starts, chunks, strict=True)
        )
        out.append((index, slices))
    return out


def blocks_array(
    read: Callable[[Any], np.ndarray],
    make_spec: Callable[[tuple[slice, ...]], Any],
    shape: tuple[int, ...],
    chunk: tuple[int, ...],
    dtype: np.dtype[Any],
    *,
    token: str,
    prefix: str = "zchunk-read",
) -> da.Array:
    """Return a dask array whose block at `slices` is ``read(make_spec(slices))``.

    `make_spec` runs now, once per block, and should return only what the task needs (the
    offsets of the segments it reads, not the whole file's table).
    """
    chunks = normalize_chunks(shape, chunk)
    name = f"{prefix}-{tokenize(token, chunks, np.dtype(dtype).str)}"
    dsk: dict[tuple[Any, ...], Any] = {}
    for index, slices in block_slices(chunks):
        if math.prod(s.stop - s.start for s in slices) == 0:
            dsk[(name, *index)] = (np.zeros, tuple(s.stop - s.start for s in slices), dtype)
        else:
            dsk[(name, *index)] = (read, make_spec(slices))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())  # type: ignore[arg-type]
    return da.Array(graph, name, chunks, dtype=dtype)
