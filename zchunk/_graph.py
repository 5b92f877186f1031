"""Dask arrays built from one task per block, with no open file and no dependency in the graph.

The readers (:mod:`zchunk.io`), the direct-read projections and filters (:mod:`zchunk.ops`)
all build graphs the same way: every block is a plain tuple ``(func, *args)`` made from the
block's slices, and depends on nothing, so no task holds a neighbour's block and graphs run
under the threads, processes and distributed schedulers alike. This module owns that one
pattern; the grid arithmetic is dask's own (``normalize_chunks``, ``slices_from_chunks``).
"""

from __future__ import annotations

import itertools
import operator
from typing import TYPE_CHECKING, Any

import dask.array as da
from dask.array.core import normalize_chunks, slices_from_chunks
from dask.highlevelgraph import HighLevelGraph

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import numpy as np

__all__ = ["Chunks", "block_regions", "from_tasks", "grid", "split_outputs", "task_layer"]

type Chunks = tuple[tuple[int, ...], ...]
type Key = tuple[Any, ...]


def grid(shape: tuple[int, ...], chunk: tuple[int, ...]) -> Chunks:
    """Return dask's chunks tuple for a regular chunk shape (the last chunk may be smaller).

    Examples
    --------
    >>> grid((5, 7), (5, 3))
    ((5,), (3, 3, 1))
    """
    chunks: Chunks = normalize_chunks(
        tuple(max(1, min(c, n)) for c, n in zip(chunk, shape, strict=True)), shape
    )
    return chunks


def block_regions(chunks: Chunks) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """Yield ``(block index, slices)`` for every block of `chunks`, in C order.

    Examples
    --------
    >>> list(block_regions(((2, 1), (3,))))
    [((0, 0), (slice(0, 2, None), slice(0, 3, None))), ((1, 0), (slice(2, 3, None), slice(0, 3, None)))]
    """
    indices = itertools.product(*(range(len(c)) for c in chunks))
    yield from zip(indices, slices_from_chunks(chunks), strict=True)


def task_layer(
    name: str, chunks: Chunks, make_task: Callable[[tuple[slice, ...]], tuple[Any, ...]]
) -> dict[Key, Any]:
    """Return the graph layer ``{(name, *index): make_task(slices)}`` of one task per block."""
    return {(name, *index): make_task(slices) for index, slices in block_regions(chunks)}


def from_tasks(
    name: str,
    chunks: Chunks,
    dtype: np.dtype[Any],
    make_task: Callable[[tuple[slice, ...]], tuple[Any, ...]],
) -> da.Array:
    """Return a dask array whose block at `slices` is computed by the task ``make_task(slices)``.

    `make_task` runs now, once per block, and should put in the task only what it needs (the
    offsets of the segments it reads, not the whole file's table).
    """
    layer = task_layer(name, chunks, make_task)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())  # type: ignore[arg-type]
    return da.Array(graph, name, chunks, dtype=dtype)


def split_outputs(
    name: str, layer: dict[Key, Any], chunks: Chunks, outputs: Sequence[tuple[str, np.dtype[Any]]]
) -> list[da.Array]:
    """Return one array per ``(name, dtype)`` of `outputs` from `layer` (named `name`).

    Every task of `layer` returns a tuple holding one block per output; the arrays share those
    tasks: computed together, each task runs once for all of them.
    """
    out = []
    for k, (key, dtype) in enumerate(outputs):
        pick = {(key, *i[1:]): (operator.getitem, i, k) for i in layer}
        layers = {name: layer, key: pick}
        graph = HighLevelGraph(layers, {name: set(), key: {name}})  # type: ignore[arg-type]
        out.append(da.Array(graph, key, chunks, dtype=dtype))
    return out
