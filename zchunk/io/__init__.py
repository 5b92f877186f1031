"""Open image stacks lazily: TIFF files, folders of TIFFs, zarr and OME-Zarr, arrays."""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

import numpy as np

from zchunk._partial import incomplete_reason
from zchunk.budget import Budget
from zchunk.chunking import PROJECTION, Purpose
from zchunk.errors import IncompleteOutputError, StackFormatError
from zchunk.io._find import find_inputs
from zchunk.io._readers import Found, Request, open_array
from zchunk.io._source import OpenArgs, OpenedSource

if TYPE_CHECKING:
    from zchunk._types import MemoryLike, SourceLike
    from zchunk.stack import Stack

__all__ = ["OpenArgs", "find", "open", "open_planned", "parse_scale"]


def open(
    source: SourceLike,
    /,
    *,
    axes: str | None = None,
    memory_limit: MemoryLike | Budget = None,
    whole: str = "z",
    allow_incomplete: bool = False,
    scale: dict[str, float] | None = None,
    pattern: str | None = None,
) -> Stack:
    """Open an image stack lazily, chunked with the whole z axis in every chunk.

    Parameters
    ----------
    source : path, glob, list of paths, numpy or dask array
        A multi-page TIFF (plain, ImageJ hyperstack, OME-TIFF, BigTIFF; raw, striped, tiled or
        compressed), any file of a multi-file OME-TIFF (Bio-Formats, Micro-Manager); a folder,
        glob or list of TIFFs: arranged on a (t, c, z) grid when their names say so
        (``t0001_c1_z005.tif``, see `pattern`), else in natural order (``z2`` before
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
    pattern : str, optional
        For a folder, glob or list of files: a regular expression finding the axes in the
        file names, as tifffile's ``FileSequence`` takes: (axis name, index) group pairs, e.g.
        ``_(t)([0-9]+)_(c)([0-9]+)``, or named groups ``T(?P<t>[0-9]+)_Z(?P<z>[0-9]+)``; axis
        names t/tp/time, c/ch, z, p/pos/position (one position only). By default tokens
        like ``t0001``, ``TP1``, ``Ch0``, ``z005``, ``Pos0`` between ``_``/``-``/``.``
        separators are recognised in a folder or glob. Every combination must have a file.

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
    args = OpenArgs(source, axes, Budget.parse(memory_limit), allow_incomplete, scale, pattern)
    return open_planned(args, whole=whole, purpose=PROJECTION)


def open_planned(args: OpenArgs, /, *, whole: str, purpose: Purpose) -> Stack:
    """Open an input as :func:`open` does, `whole` held whole in chunks planned for `purpose`."""
    found = find(args, whole=whole, purpose=purpose)
    stack = found.stack()
    return stack.replace(source=OpenedSource(stack.data.name, args, found.reader))


def find(args: OpenArgs, /, *, whole: str, purpose: Purpose) -> Found:
    """Parse the headers of an input and plan its chunks, as :func:`open_planned`, no more.

    What ``zchunk info`` needs: no dask array is built, and dask.array is not imported.
    """
    source = args.source
    listed = isinstance(source, (list, tuple))
    request = Request(
        args.axes, args.budget, purpose, whole, args.allow_incomplete, args.pattern, not listed
    )
    if isinstance(source, np.ndarray) or _is_dask_array(source):
        found = open_array(request, source)  # type: ignore[arg-type]
    else:
        reader, kind, paths = find_inputs(source)
        reason = incomplete_reason(paths[0]) if kind != "files" else None
        if reason is not None and not args.allow_incomplete:
            msg = (
                f"{reason}: finish it with --resume / resume=True, or pass "
                "allow_incomplete=True to read it anyway (missing blocks read as zeros)"
            )
            raise IncompleteOutputError(msg)
        found = reader.find(request, kind, paths)
    return _calibrate(found, args.scale) if args.scale else found


def _is_dask_array(source: object) -> bool:
    dask_array = sys.modules.get("dask.array")  # a dask array means dask.array is imported
    return dask_array is not None and isinstance(source, dask_array.Array)


def _calibrate(found: Found, scale: dict[str, float]) -> Found:
    """Set the pixel size of the axes named in `scale` (micrometers; seconds for t)."""
    unknown = set(scale) - set(found.axes)
    if unknown:
        msg = f"scale names axes {sorted(unknown)} that the stack (axes {found.axes!r}) lacks"
        raise StackFormatError(msg)
    sizes = list(found.scale)
    units = list(found.units)
    for letter, value in scale.items():
        i = found.axes.index(letter)
        sizes[i] = float(value)
        units[i] = "second" if letter == "t" else "micrometer"
    return dataclasses.replace(found, scale=tuple(sizes), units=tuple(units))


def parse_scale(text: str, axes: str = "zyx") -> dict[str, float]:
    """Parse ``"1,0.2,0.2"`` (z,y,x) or ``"y=0.2,x=0.2"`` into pixel sizes by axis.

    Examples
    --------
    >>> parse_scale("1,0.2,0.2"), parse_scale("x=0.1,y=0.1")
    ({'z': 1.0, 'y': 0.2, 'x': 0.2}, {'x': 0.1, 'y': 0.1})
    """
    from zchunk.errors import OptionError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    keyed = all("=" in p for p in parts)
    bad = f"--scale {text!r}: give z,y,x pixel sizes like 1,0.2,0.2 or x=0.2,y=0.2"
    if not keyed and len(parts) > len(axes):
        raise OptionError(bad)
    try:
        if keyed:
            out = {k.strip().lower(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        else:
            out = dict(zip(axes[-len(parts) :], map(float, parts), strict=True))
    except ValueError:  # float() of what is not a number
        raise OptionError(bad) from None
    if not out or any(not v > 0 for v in out.values()):
        msg = f"--scale {text!r}: pixel sizes must be positive numbers"
        raise OptionError(msg)
    return out
