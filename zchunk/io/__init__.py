"""Open image stacks lazily: TIFF files, folders of TIFFs, zarr and OME-Zarr, arrays."""

from __future__ import annotations

import errno
import glob
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from zchunk._graph import from_tasks, grid
from zchunk._partial import incomplete_reason, partial_path
from zchunk.chunking import PROJECTION, Budget, Purpose, plan
from zchunk.errors import IncompleteOutputError, SourceNotFoundError, StackFormatError
from zchunk.io import _tiff, _zarr
from zchunk.io._source import OpenArgs, OpenedSource
from zchunk.io._tiff_parse import parse_tiff, parse_tiff_files
from zchunk.stack import Stack, default_axes

if TYPE_CHECKING:
    from collections.abc import Callable

    from zchunk._types import MemoryLike, SourceLike

__all__ = ["natural_key", "open", "open_planned", "parse_scale"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


def natural_key(path: str) -> list[Any]:
    """Sort key putting ``z2`` before ``z10``.

    Examples
    --------
    >>> sorted(["z10.tif", "z2.tif", "z1.tif"], key=natural_key)
    ['z1.tif', 'z2.tif', 'z10.tif']
    """
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def _not_a_file(path: str) -> str:
    """Say what `path` is, when it is not a file or folder to read.

    Examples
    --------
    >>> _not_a_file("/no/such.tif")
    '/no/such.tif does not exist'
    """
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a loop of symbolic links"
        if os.path.islink(path):
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
        return f"{path} does not exist"
    if stat.S_ISFIFO(mode):
        kind = "a named pipe (FIFO)"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "not a regular file"
    target = f" (a symbolic link to {os.path.realpath(path)})" if os.path.islink(path) else ""
    return f"{path} is {kind}{target}, not an image file"


def _list_sources(source: SourceLike) -> tuple[str, list[str]]:
    """Return (kind, paths) for a path, a folder, a glob or a list of files."""
    if isinstance(source, (list, tuple)):
        paths = [os.fspath(p) for p in source]
        if not paths:
            msg = "the list of files is empty"
            raise SourceNotFoundError(msg)
        for p in paths:
            if not os.path.isfile(p):
                raise SourceNotFoundError(_not_a_file(p))
        return "files", paths
    path = os.fspath(source)  # type: ignore[arg-type]
    if os.path.isdir(path):
        if _zarr.is_zarr(path):
            return "zarr", [path]
        names = [n for n in os.listdir(path) if n.lower().endswith(TIFF_SUFFIXES)]
        names = [n for n in names if not n.startswith(".")]
        if not names:
            msg = f"{path} is a folder without TIFF files (.tif, .tiff)"
            raise SourceNotFoundError(msg)
        return "files", sorted((os.path.join(path, n) for n in names), key=natural_key)
    if os.path.isfile(path):
        return "file", [path]
    if glob.has_magic(path):
        matches = sorted((p for p in glob.glob(path) if os.path.isfile(p)), key=natural_key)
        if not matches:
            msg = f"no file matches {path}"
            raise SourceNotFoundError(msg)
        return "files", matches
    msg = _not_a_file(path)
    if os.path.lexists(partial_path(Path(os.path.abspath(path)))):
        msg += (
            f" (an interrupted run left {partial_path(Path(path)).name} next to it: "
            "run it again with --resume / resume=True to finish it)"
        )
    raise SourceNotFoundError(msg)


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
    make_spec: Callable[[tuple[slice, ...]], _tiff.BlockSpec], dtype: np.dtype[Any]
) -> Callable[[tuple[slice, ...]], tuple[Any, ...]]:
    """Return the task reading the block at `slices` (zeros for an empty block)."""

    def task(slices: tuple[slice, ...]) -> tuple[Any, ...]:
        shape = tuple(s.stop - s.start for s in slices)
        if 0 in shape:
            return (np.zeros, shape, dtype)
        return (_tiff.read_block, make_spec(slices))

    return task


def _open_tiff(
    kind: str, paths: list[str], axes: str | None, budget: Budget, purpose: Purpose, whole: str
) -> tuple[Stack, Any]:
    info = parse_tiff(paths[0]) if kind == "file" else parse_tiff_files(paths)
    layout = info.layout
    shape = info.shape
    ax = _resolve_axes(info.axes, axes, len(shape), paths[0] if kind == "file" else "the files")
    decoded = layout.compressed or layout.tiled
    chunk_plan = plan(
        shape,
        ax,
        layout.dtype,
        budget,
        purpose=purpose,
        whole=whole,
        y_align=layout.segment_shape[0] if decoded else 1,
        x_align=layout.segment_shape[1] if layout.tiled else (None if decoded else 1),
        segment_bytes=(
            layout.segment_shape[0] * layout.segment_shape[1] * layout.dtype.itemsize
            if decoded
            else 0
        ),
    )
    chunks = grid(shape, chunk_plan.chunks)
    dtype = layout.dtype.newbyteorder("=")
    name = "zchunk-read-" + tokenize(repr((layout.files, shape)), chunks, dtype.str)
    data = from_tasks(
        name, chunks, dtype, _read_tasks(_tiff.block_reader(layout, shape[:-2]), dtype)
    )
    scale, units = _calibration(ax, info.scale, info.units)
    name = Path(paths[0]).name if kind == "file" else Path(paths[0]).parent.name or paths[0]
    return Stack(
        data,
        axes=ax,
        scale=scale,
        units=units,
        name=name,
        attrs={
            "source": paths[0] if kind == "file" else os.path.dirname(paths[0]) or ".",
            "source_paths": tuple(os.path.abspath(p) for p in paths),
            "layout": layout.describe(),
            "channel_names": info.channel_names,
            "tiff_metadata": info.metadata,
        },
        plan=chunk_plan,
    ), _tiff.RegionReader(layout, shape[:-2])


def _open_zarr(
    path: str,
    axes: str | None,
    budget: Budget,
    purpose: Purpose,
    whole: str,
    allow_incomplete: bool,
) -> tuple[Stack, Any]:
    info = _zarr.parse_zarr(path, allow_incomplete=allow_incomplete)
    array = info.array
    shape = tuple(int(n) for n in array.shape)
    ax = _resolve_axes(info.axes, axes, len(shape), path)
    cy, cx = int(array.chunks[-2]), int(array.chunks[-1])
    chunk_plan = plan(
        shape,
        ax,
        np.dtype(array.dtype),
        budget,
        purpose=purpose,
        whole=whole,
        y_align=cy,
        x_align=cx,
        segment_bytes=int(np.prod(array.chunks)) * np.dtype(array.dtype).itemsize,
    )
    checked = _zarr.CheckedArray(array, path)
    data = da.from_array(
        checked,
        chunks=chunk_plan.chunks,
        name="zchunk-zarr-" + tokenize(os.path.abspath(path), array.path, shape, chunk_plan.chunks),
        meta=np.empty((0,) * len(shape), dtype=checked.dtype),
        asarray=False,
    )
    scale, units = _calibration(ax, info.scale, info.units)
    return Stack(
        data,
        axes=ax,
        scale=scale,
        units=units,
        name=Path(path).name,
        attrs={
            "source": path,
            "source_paths": (os.path.abspath(path),),
            "layout": info.layout,
            "channel_names": info.channel_names,
        },
        plan=chunk_plan,
    ), checked  # checked[slices] reads a region, halo included


def _open_array(
    array: np.ndarray | da.Array, axes: str | None, budget: Budget, purpose: Purpose, whole: str
) -> tuple[Stack, Any]:
    if np.dtype(array.dtype).kind not in "uif":
        msg = f"unsupported pixel type {array.dtype}: zchunk reads integer and float images"
        raise StackFormatError(msg)
    ax = _resolve_axes(None, axes, array.ndim, "the array")
    chunk_plan = plan(
        tuple(array.shape), ax, np.dtype(array.dtype), budget, purpose=purpose, whole=whole
    )
    if isinstance(array, da.Array):
        data = array.rechunk(chunk_plan.chunks)
    else:
        data = da.from_array(array, chunks=chunk_plan.chunks)
    return Stack(
        data, axes=ax, name="array", attrs={"layout": {"format": "array"}}, plan=chunk_plan
    ), None


def open(
    source: SourceLike,
    /,
    *,
    axes: str | None = None,
    memory_limit: MemoryLike | Budget = None,
    whole: str = "z",
    allow_incomplete: bool = False,
    scale: dict[str, float] | None = None,
) -> Stack:
    """Open an image stack lazily, chunked with the whole z axis in every chunk.

    Parameters
    ----------
    source : path, glob, list of paths, numpy or dask array
        A multi-page TIFF (plain, ImageJ hyperstack, OME-TIFF, BigTIFF; raw, striped, tiled or
        compressed); a folder, glob or list of single-page TIFFs (natural order: ``z2`` before
        ``z10``); a zarr array (v2 or v3) or an OME-Zarr image (level 0); an array.
    axes : str, optional
        Axis letters of ``"tczyx"`` overriding the file's metadata. Without metadata a 3-D
        stack is ``"zyx"`` and a 4-D one ``"tzyx"``.
    memory_limit : int, str or Budget, optional
        Memory budget for all workers, e.g. ``"2GiB"``; default the smaller of 1 GiB and a
        quarter of RAM. Sets the chunk size (planned for projections; ``zchunk.filter``
        re-plans for itself).
    whole : str
        Axes held whole in every chunk: ``"z"`` (default) for z-projections and filters, ``"t"``
        for projections over time.
    scale : dict of str to float, optional
        Pixel sizes in micrometers (seconds for ``"t"``) by axis letter, e.g.
        ``{"z": 1.0, "y": 0.2, "x": 0.2}``, for inputs without calibration (a folder of plain
        TIFFs); they replace what the metadata says for those axes.
    allow_incomplete : bool
        Read incomplete data anyway: the partial output of an interrupted zchunk run
        (``.<name>.zchunk-partial``), or a zarr array with missing chunks (written sparsely on
        purpose, with zarr's ``write_empty_chunks=False``). Missing blocks and chunks read as
        the fill value (zeros).

    Returns
    -------
    Stack
        Lazy: nothing is read until a result is computed or saved. Only the bytes each chunk
        needs are read, per task, with no file held open between tasks.

    Raises
    ------
    SourceNotFoundError
        If the path, folder or glob does not exist or holds no TIFF.
    StackFormatError
        If the input is not an image stack zchunk reads, or files of a sequence differ.
    CorruptDataError
        If the file is truncated or damaged, or a zarr array misses chunks (now, or when
        computing: damaged pages or chunks are found when they are read).
    IncompleteOutputError
        If the input is the partial output of an interrupted run (unless `allow_incomplete`).
    InputChangedError
        When computing, if an input file changed on disk after it was opened.

    Examples
    --------
    >>> s = open(np.zeros((4, 32, 32), dtype="uint16"))
    >>> s.axes, s.shape, s.data.chunks[0]
    ('zyx', (4, 32, 32), (4,))
    """
    return open_planned(
        source,
        axes=axes,
        budget=Budget.parse(memory_limit),
        whole=whole,
        purpose=PROJECTION,
        allow_incomplete=allow_incomplete,
        scale=scale,
    )


def open_planned(
    source: SourceLike,
    /,
    *,
    axes: str | None,
    budget: Budget,
    whole: str,
    purpose: Purpose,
    allow_incomplete: bool,
    scale: dict[str, float] | None,
) -> Stack:
    """Open `source` as :func:`open` does, with chunks planned for `purpose` within `budget`."""
    if isinstance(source, (np.ndarray, da.Array)):
        stack, reader = _open_array(source, axes, budget, purpose, whole)
    else:
        kind, paths = _list_sources(source)
        reason = incomplete_reason(paths[0]) if kind in ("zarr", "file") else None
        if reason is not None and not allow_incomplete:
            msg = (
                f"{reason}: finish it with --resume / resume=True, or pass "
                "allow_incomplete=True to read it anyway (missing blocks read as zeros)"
            )
            raise IncompleteOutputError(msg)
        if kind == "zarr":
            stack, reader = _open_zarr(paths[0], axes, budget, purpose, whole, allow_incomplete)
        else:
            bad = [p for p in paths if _zarr.is_zarr(p)]
            if bad:
                msg = f"{bad[0]} is a zarr store: open it on its own"
                raise StackFormatError(msg)
            stack, reader = _open_tiff(kind, paths, axes, budget, purpose, whole)
    if scale:
        stack = _calibrate(stack, scale)
    args = OpenArgs(source, axes, budget, allow_incomplete, scale)
    return stack.replace(source=OpenedSource(stack.data.name, args, reader))


def _calibrate(stack: Stack, scale: dict[str, float]) -> Stack:
    """Set the pixel size of the axes named in `scale` (micrometers; seconds for t)."""
    unknown = set(scale) - set(stack.axes)
    if unknown:
        msg = f"scale names axes {sorted(unknown)} that the stack (axes {stack.axes!r}) lacks"
        raise StackFormatError(msg)
    sizes = list(stack.scale)
    units = list(stack.units)
    for letter, value in scale.items():
        i = stack.axis(letter)
        sizes[i] = float(value)
        units[i] = "second" if letter == "t" else "micrometer"
    return stack.replace(scale=tuple(sizes), units=tuple(units))


def parse_scale(text: str, axes: str = "zyx") -> dict[str, float]:
    """Parse ``"1,0.2,0.2"`` (z,y,x) or ``"y=0.2,x=0.2"`` into pixel sizes by axis.

    Examples
    --------
    >>> parse_scale("1,0.2,0.2"), parse_scale("x=0.1,y=0.1")
    ({'z': 1.0, 'y': 0.2, 'x': 0.2}, {'x': 0.1, 'y': 0.1})
    """
    from zchunk.errors import OptionError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            out = {k.strip().lower(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        else:
            if len(parts) > len(axes):
                raise ValueError
            out = dict(zip(axes[-len(parts) :], map(float, parts), strict=True))
    except ValueError:
        msg = f"--scale {text!r}: give z,y,x pixel sizes like 1,0.2,0.2 or x=0.2,y=0.2"
        raise OptionError(msg) from None
    if not out or any(not v > 0 for v in out.values()):
        msg = f"--scale {text!r}: pixel sizes must be positive numbers"
        raise OptionError(msg)
    return out
