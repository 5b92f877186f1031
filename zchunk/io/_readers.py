"""The input formats: one frozen :class:`Reader` per format, in :data:`READERS`.

A reader recognises its inputs (a folder it claims, or files by suffix) and opens them into a
Stack planned for the request, returning also what reads regions of them within a task (see
:class:`zchunk.io._source.OpenedSource`). Adding a format is adding one entry to `READERS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zchunk.chunking import plan
from zchunk.errors import StackFormatError
from zchunk.io import _sequence, _tiff, _zarr
from zchunk.io._tiff_parse import parse_tiff, parse_tiff_files
from zchunk.stack import Stack, default_axes

if TYPE_CHECKING:
    from collections.abc import Callable

    import dask.array as da

    from zchunk.budget import Budget
    from zchunk.chunking import ChunkPlan, Purpose
    from zchunk.io._tiff_layout import BlockSpec

__all__ = ["READERS", "Found", "Reader", "Request", "open_array"]


@dataclass(frozen=True, slots=True)
class Request:
    """How ``zchunk.open`` was asked to open an input (all but the input itself)."""

    axes: str | None
    budget: Budget
    purpose: Purpose
    whole: str
    allow_incomplete: bool
    pattern: str | None = None  # a sequence's axes from its file names (see _sequence)
    by_name: bool = True  # arrange a sequence by the axes its names carry (not a list)


@dataclass(frozen=True, slots=True)
class Found:
    """An input as its reader found it: all a Stack holds but the dask array, built by `stack`.

    ``zchunk info`` stops here, so it needs no dask array (nor the import of dask.array).
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    axes: str
    scale: tuple[float | None, ...]
    units: tuple[str | None, ...]
    name: str
    attrs: dict[str, Any]
    plan: ChunkPlan
    reader: Any  # reads regions within a task (see OpenedSource), or None
    build: Callable[[], da.Array]

    def stack(self) -> Stack:
        """Build the dask array and return the Stack."""
        return Stack(
            self.build(),
            axes=self.axes,
            scale=self.scale,
            units=self.units,
            name=self.name,
            attrs=self.attrs,
            plan=self.plan,
        )


@dataclass(frozen=True, slots=True)
class Reader:
    """One input format.

    Attributes
    ----------
    name : str
        Its name in messages (``"tiff"``, ``"zarr"``).
    claims : callable
        ``claims(folder)``: whether a folder is one input of this format (a zarr store).
    suffixes : tuple of str
        Files of this format, opened alone or as a sequence (a folder, glob or list).
    find : callable
        ``find(request, kind, paths)`` with `kind` ``"file"`` (one file), ``"files"`` (a
        sequence) or ``"folder"`` (a claimed folder): what it found (headers parsed, chunks
        planned), as :class:`Found`.
    """

    name: str
    claims: Callable[[str], bool]
    suffixes: tuple[str, ...]
    find: Callable[[Request, str, list[str]], Found]


def _resolve_axes(found: str | None, given: str | None, ndim: int, where: str) -> str:
    if given is not None:
        given = given.lower()
        if len(given) != ndim:
            msg = f"axes={given!r} has {len(given)} letters but {where} has {ndim} dimensions"
            raise StackFormatError(msg)
        return given
    return found or default_axes(ndim)


def _calibration(
    axes: str, scale: dict[str, float], units: dict[str, str]
) -> tuple[tuple[float | None, ...], tuple[str | None, ...]]:
    return tuple(scale.get(a) for a in axes), tuple(units.get(a) for a in axes)


def _read_tasks(
    make_spec: Callable[[tuple[slice, ...]], BlockSpec], dtype: np.dtype[Any]
) -> Callable[[tuple[slice, ...]], tuple[Any, ...]]:
    """Return the task reading the block at `slices` (zeros for an empty block)."""

    def task(slices: tuple[slice, ...]) -> tuple[Any, ...]:
        shape = tuple(s.stop - s.start for s in slices)
        if 0 in shape:
            return (np.zeros, shape, dtype)
        return (_tiff.read_block, make_spec(slices))

    return task


def _find_tiff(request: Request, kind: str, paths: list[str]) -> Found:
    """Open a multi-page TIFF (`kind` "file") or a sequence of TIFF files.

    A folder or glob is arranged by the axes its file names carry (an explicit list keeps
    the caller's order unless a pattern is given; see :mod:`zchunk.io._sequence`).
    """
    by_name = kind == "files" and (request.by_name or request.pattern is not None)
    arranged = _sequence.arrange(paths, request.pattern) if by_name else None
    if arranged is not None:
        paths = list(arranged.paths)
    info = parse_tiff(paths[0]) if kind == "file" else parse_tiff_files(paths)
    layout = info.layout
    shape = info.shape
    found = info.axes
    if arranged is not None and layout.kind == "folder":  # not a multi-file OME-TIFF dataset
        shape = (*arranged.shape, *shape[1:])
        inner = info.file_axes or default_axes(len(shape) - len(arranged.axes))
        if set(inner) & set(arranged.axes):
            msg = (
                f"the file names give the axes {arranged.axes!r} but each file holds "
                f"{inner!r} already: pass --axes / axes= for the whole stack"
            )
            raise StackFormatError(msg)
        found = arranged.axes + inner
    ax = _resolve_axes(found, request.axes, len(shape), paths[0] if kind == "file" else "the files")
    decoded = layout.compressed or layout.tiled
    chunk_plan = plan(
        shape,
        ax,
        layout.dtype,
        request.budget,
        purpose=request.purpose,
        whole=request.whole,
        y_align=layout.segment_shape[0] if decoded else 1,
        x_align=layout.segment_shape[1] if layout.tiled else (None if decoded else 1),
        segment_bytes=(
            layout.segment_shape[0] * layout.segment_shape[1] * layout.dtype.itemsize
            if decoded
            else 0
        ),
    )
    dtype = layout.dtype.newbyteorder("=")

    def build() -> da.Array:
        from dask.base import tokenize

        from zchunk._graph import from_tasks, grid

        chunks = grid(shape, chunk_plan.chunks)
        key = "zchunk-read-" + tokenize(repr((layout.files, shape)), chunks, dtype.str)
        read = _read_tasks(_tiff.block_reader(layout, shape[:-2]), dtype)
        return from_tasks(key, chunks, dtype, read)

    scale, units = _calibration(ax, info.scale, info.units)
    return Found(
        shape,
        dtype,
        ax,
        scale,
        units,
        Path(paths[0]).name if kind == "file" else Path(paths[0]).parent.name or paths[0],
        {
            "source": paths[0] if kind == "file" else os.path.dirname(paths[0]) or ".",
            "source_paths": tuple(os.path.abspath(p) for p in paths),
            "layout": layout.describe(),
            "channel_names": info.channel_names,
            "channel_colors": info.channel_colors,
            "tiff_metadata": info.metadata,
        },
        chunk_plan,
        _tiff.RegionReader(layout, shape[:-2]),
        build,
    )


def _find_zarr(request: Request, kind: str, paths: list[str]) -> Found:
    """Open a zarr array or the first level of an OME-Zarr image."""
    path = paths[0]
    info = _zarr.parse_zarr(path, allow_incomplete=request.allow_incomplete)
    array = info.array
    shape = tuple(int(n) for n in array.shape)
    ax = _resolve_axes(info.axes, request.axes, len(shape), path)
    cy, cx = int(array.chunks[-2]), int(array.chunks[-1])
    chunk_plan = plan(
        shape,
        ax,
        np.dtype(array.dtype),
        request.budget,
        purpose=request.purpose,
        whole=request.whole,
        y_align=cy,
        x_align=cx,
        segment_bytes=int(np.prod(array.chunks)) * np.dtype(array.dtype).itemsize,
    )
    checked = _zarr.CheckedArray(array, path)  # checked[slices] reads a region, halo included

    def build() -> da.Array:
        import dask.array as da
        from dask.base import tokenize

        token = tokenize(os.path.abspath(path), array.path, shape, chunk_plan.chunks)
        data: da.Array = da.from_array(
            checked,
            chunks=chunk_plan.chunks,
            name="zchunk-zarr-" + token,
            meta=np.empty((0,) * len(shape), dtype=checked.dtype),
            asarray=False,
        )
        return data

    scale, units = _calibration(ax, info.scale, info.units)
    return Found(
        shape,
        checked.dtype,
        ax,
        scale,
        units,
        Path(path).name,
        {
            "source": path,
            "source_paths": (os.path.abspath(path),),
            "layout": info.layout,
            "channel_names": info.channel_names,
            "channel_colors": info.channel_colors,
        },
        chunk_plan,
        checked,
        build,
    )


def open_array(request: Request, array: np.ndarray | da.Array) -> Found:
    """Open a numpy or dask array (no file: no region reader)."""
    if np.dtype(array.dtype).kind not in "uif":
        msg = f"unsupported pixel type {array.dtype}: zchunk reads integer and float images"
        raise StackFormatError(msg)
    ax = _resolve_axes(None, request.axes, array.ndim, "the array")
    chunk_plan = plan(
        tuple(array.shape),
        ax,
        np.dtype(array.dtype),
        request.budget,
        purpose=request.purpose,
        whole=request.whole,
    )

    def build() -> da.Array:
        import dask.array as da

        data: da.Array
        if isinstance(array, da.Array):
            data = array.rechunk(chunk_plan.chunks)
        else:
            data = da.from_array(array, chunks=chunk_plan.chunks)
        return data

    unknown = (None,) * array.ndim
    shape = tuple(int(n) for n in array.shape)
    attrs: dict[str, Any] = {"layout": {"format": "array"}}
    return Found(
        shape, np.dtype(array.dtype), ax, unknown, unknown, "array", attrs, chunk_plan, None, build
    )


def _no_folder(path: str) -> bool:
    return False


#: The input formats, in the order they are tried: the one place to add a reader.
READERS: tuple[Reader, ...] = (
    Reader("zarr", _zarr.is_zarr, (), _find_zarr),
    Reader("tiff", _no_folder, (".tif", ".tiff", ".btf", ".tf8"), _find_tiff),
)
