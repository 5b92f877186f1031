"""How a filter becomes a dask graph: region tasks straight from a file, or ``map_overlap``.

:func:`filter_regions` makes one task per chunk that reads the chunk and its halo from the
stack's :class:`~zchunk.stack.Source` and filters it (streamed plane by plane where the filter
streams); :func:`filter_overlap` filters any other dask array with halos exchanged by
``dask.array.map_overlap`` along the split axes only.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np

from zchunk._graph import from_tasks
from zchunk.ops._filter_spec import halo_radius
from zchunk.ops._filter_stream import filter_block, filter_region, halo_region

if TYPE_CHECKING:
    from zchunk.ops._filter_spec import Spec
    from zchunk.stack import Source

__all__ = ["filter_overlap", "filter_regions"]


def _merge_chunks(chunks: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Merge neighbouring chunks (never split one) until each is at least `depth` long.

    Examples
    --------
    >>> _merge_chunks((16, 16, 13), 14), _merge_chunks((5, 5, 5, 2), 6)
    ((16, 29), (10, 7))
    """
    merged: list[int] = []
    run = 0
    for n in chunks:
        run += n
        if run >= depth:
            merged.append(run)
            run = 0
    if run:
        if merged:
            merged[-1] += run
        else:
            merged.append(run)
    return tuple(merged)


def filter_overlap(
    data: da.Array, spec: Spec, axes: tuple[int, ...], dtype: np.dtype[Any], name: str
) -> da.Array:
    """Filter an arbitrary dask array: halos exchanged with dask's map_overlap.

    Halos only along split axes; chunks shallower than their halo are merged first.
    """
    chunks = list(data.chunks)
    depth: dict[int, int] = {}
    for i in axes:
        radius = halo_radius(spec, i)
        if radius and len(chunks[i]) > 1 and min(chunks[i]) < radius:
            chunks[i] = _merge_chunks(chunks[i], radius)
        depth[i] = radius if len(chunks[i]) > 1 else 0
    if tuple(chunks) != data.chunks:
        data = data.rechunk(tuple(chunks))
    filtered: da.Array = da.map_overlap(
        functools.partial(filter_block, spec=spec),
        data,
        depth=depth,
        boundary="none",
        trim=True,
        allow_rechunk=False,
        dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype=dtype),
        token=f"zchunk-{name}",
    )
    return filtered


def filter_regions(
    source: Source,
    data: da.Array,
    spec: Spec,
    axes: tuple[int, ...],
    dtype: np.dtype[Any],
    name: str,
) -> da.Array:
    """Filter a stack straight from its file: one task reads a chunk plus halo and filters it.

    Every task depends on nothing: no read task runs ahead of the filters holding blocks for
    neighbours (dask's threaded scheduler reads eagerly), so memory stays at one halo'd chunk
    per worker. The halo stops at the image edge, where scipy's `mode` applies, exactly as on
    the whole array.
    """
    from dask.base import tokenize

    shape = data.shape
    radius = {i: halo_radius(spec, i) for i in axes}

    def task(slices: tuple[slice, ...]) -> tuple[Any, ...]:
        region, trim = halo_region(slices, shape, radius)
        return (filter_region, source, region, trim, spec, data.dtype)

    key = f"zchunk-{name}-{tokenize(data.name, spec, dtype.str)}"
    return from_tasks(key, data.chunks, dtype, task)
