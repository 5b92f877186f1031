"""Multiscale pyramids for OME-Zarr: y and x halved per level with the mean of 2x2 blocks.

Each level is computed from the previous level's zarr array as written on disk (read back
lazily with dask), block by block, and written shard-aligned like level 0, so no level is
ever held in memory whole.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from zchunk.sinks._atomic import remove_path
from zchunk.sinks._zarr import create_aligned_array, store_blocks

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Literal

__all__ = ["downsample_mean", "level_scales", "level_shapes", "write_levels"]

#: Blocks smaller than this along y or x are not halved again: the level reads 2x2 blocks of
#: the previous one, so its shards keep the previous level's size instead of shrinking.
_SMALL_BLOCK = 128


def level_shapes(shape: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    """Return the shapes of levels 0..`levels`, fewer when y or x cannot be halved again.

    Y and x are the last two axes; each level has ``ceil(n / 2)`` pixels where the previous
    one has ``n``. A level is added only while the previous level has at least 2 pixels in
    both y and x, so every level halves both.

    Examples
    --------
    >>> level_shapes((3, 10, 7), 5)
    [(3, 10, 7), (3, 5, 4), (3, 3, 2), (3, 2, 1)]
    """
    shapes = [tuple(int(n) for n in shape)]
    for _ in range(levels):
        last = shapes[-1]
        if last[-2] < 2 or last[-1] < 2:
            break
        shapes.append((*last[:-2], math.ceil(last[-2] / 2), math.ceil(last[-1] / 2)))
    return shapes


def level_scales(scale: Sequence[float], count: int) -> list[list[float]]:
    """Return the scale of each of `count` levels: y and x (the last two) doubled per level.

    Examples
    --------
    >>> level_scales([2.0, 0.5, 0.25], 3)
    [[2.0, 0.5, 0.25], [2.0, 1.0, 0.5], [2.0, 2.0, 1.0]]
    """
    return [[*scale[:-2], scale[-2] * 2**i, scale[-1] * 2**i] for i in range(count)]


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """Return the mean of every 2x2 block of the last two axes of `block`.

    An odd last row or column is averaged with what exists (2 or 1 pixels), so the result
    has ``ceil(n / 2)`` rows and columns. Floats stay in their dtype (computed in float64).
    Integers are averaged exactly and rounded to nearest, halves up, then cast back to the
    input dtype (64-bit integers are averaged in float64, exact up to 2**53).

    Parameters
    ----------
    block : numpy.ndarray
        Array of shape (..., Y, X).

    Returns
    -------
    numpy.ndarray
        Array of shape (..., ceil(Y / 2), ceil(X / 2)) and the dtype of `block`.

    Examples
    --------
    >>> downsample_mean(np.array([[1, 2, 3], [4, 4, 5]], dtype="uint8"))
    array([[3, 4]], dtype=uint8)
    >>> downsample_mean(np.array([[1.0, 2.0], [3.0, 5.0]], dtype="float32"))
    array([[2.75]], dtype=float32)
    """
    h, w = block.shape[-2:]
    exact = block.dtype.kind in "iu" and block.dtype.itemsize < 8
    a = block.astype(np.int64 if exact else np.float64)
    if h % 2 or w % 2:
        a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, h % 2), (0, w % 2)])
    rows, cols = a.shape[-2] // 2, a.shape[-1] // 2
    total = a.reshape(*a.shape[:-2], rows, 2, cols, 2).sum(axis=(-3, -1))
    count = np.full((rows, cols), 4, dtype=np.int64)
    if h % 2:
        count[-1, :] //= 2
    if w % 2:
        count[:, -1] //= 2
    if exact:
        out = (total + count // 2) // count
    elif block.dtype.kind in "iu":
        out = np.floor(total / count + 0.5)
    else:
        out = total / count
    result: np.ndarray = out.astype(block.dtype)
    return result


def _read_chunk(block: int, size: int) -> int:
    """Rows (or columns) of the previous level read for one block of the next: even."""
    n = 2 * block if block < _SMALL_BLOCK else block + block % 2
    return min(n, size + size % 2)


def _downsampled(root: str, level: int, block: tuple[int, ...]) -> da.Array:
    """Lazily halve y and x (the last two axes) of level `level` - 1 of the image in `root`.

    The previous level, written in blocks of shape `block`, is read in blocks with an even
    number of rows and columns (see :data:`_SMALL_BLOCK`), each giving one output block.
    """
    array = zarr.open_array(root, path=str(level - 1), mode="r")
    shape = tuple(int(n) for n in array.shape)
    read = (
        *block[:-2],
        _read_chunk(block[-2], shape[-2]),
        _read_chunk(block[-1], shape[-1]),
    )
    data: da.Array = da.from_zarr(array, chunks=read)
    out_chunks = (*data.chunks[:-2], *(tuple(-(-n // 2) for n in c) for c in data.chunks[-2:]))
    out: da.Array = da.map_blocks(downsample_mean, data, chunks=out_chunks, dtype=data.dtype)
    return out


def write_levels(
    partial: Path,
    shapes: Sequence[tuple[int, ...]],
    block: tuple[int, ...],
    *,
    axes: str,
    zarr_format: Literal[2, 3],
) -> None:
    """Write levels ``"1"``.. of the OME-Zarr image in `partial`, each from the one before.

    Every level is (re)created from scratch: a level left by an interrupted run is deleted
    first, so the pyramid is always computed from the finished level 0.

    Parameters
    ----------
    partial : Path
        The OME-Zarr group being written, with its level ``"0"`` complete.
    shapes : sequence of tuple of int
        Shapes of all levels, level 0 first (:func:`level_shapes`).
    block : tuple of int
        Block (shard) shape of level 0.
    axes : str
        Axis letters (NGFF order: y and x last).
    zarr_format : {3, 2}
        Zarr format of the image.
    """
    root = os.fspath(partial)
    for level in range(1, len(shapes)):
        data = _downsampled(root, level, block)
        block = tuple(int(c[0]) for c in data.chunks)
        if tuple(data.shape) != shapes[level]:
            msg = f"level {level} has shape {data.shape}, expected {shapes[level]}"
            raise AssertionError(msg)
        remove_path(partial / str(level))
        array: Any = create_aligned_array(
            root,
            data,
            name=str(level),
            axes=axes,
            zarr_format=zarr_format,
            dimension_names=zarr_format == 3,
        )
        store_blocks(data, array, partial)
