"""TIFF output: ImageJ hyperstacks, OME-TIFF and tifffile's shaped TIFF, in bounded memory.

Uncompressed data are written in place: the file is laid out first (header, description,
contiguous image data), then every dask block is computed once and written to its bytes.
Compressed pages must be written in order, one after the other, so they go through a scratch
zarr array next to the output: blocks are computed once into it (one shard per block, one
inner chunk per plane of a block), then pages are read back one at a time and encoded.

Both are resumable (see :mod:`zchunk.sinks._resume`): the laid-out file, or the scratch
array, is ``.<name>.zchunk-partial`` with a record of its settings and finished blocks. What
the TIFF says besides its pixels (ImageJ or OME metadata, resolution) is
:mod:`zchunk.sinks._tiff_meta`'s.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from zchunk.errors import OptionError, PartialOutputError, StackFormatError
from zchunk.sinks._done import start_writeback
from zchunk.sinks._tiff_meta import (
    OME_DTYPES,
    Layout,
    imagej_metadata,
    kind_arg,
    layout_record,
    ome_metadata,
    tag_resolution,
)
from zchunk.sinks._write import write
from zchunk.sinks._zarr import (
    check_writable,
    create_scratch,
    open_aligned_array,
    stack_attributes,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import dask.array as da
    import zarr

    from zchunk._types import PathLike
    from zchunk.stack import Stack

__all__ = ["BIGTIFF_THRESHOLD", "COMPRESSIONS", "IMAGEJ_DTYPES", "to_tiff"]

#: Uncompressed image size in bytes above which a BigTIFF is written (4 GB less 32 MB for the
#: metadata, as tifffile does). Module-level so that tests can lower it.
BIGTIFF_THRESHOLD = 2**32 - 2**25

#: Pixel types that ImageJ stores natively (8-bit, 16-bit and 32-bit float images).
IMAGEJ_DTYPES = frozenset({np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32")})

#: Lossless compression names accepted by :func:`to_tiff` (tifffile's names).
COMPRESSIONS = ("zlib", "deflate", "lzw", "zstd", "lzma", "packbits")

#: Axis order of TIFF outputs: the order ImageJ requires (TZCYX), a subset for fewer axes.
TIFF_AXES = "tzcyx"


def _normalize_compression(compression: str | None) -> str | None:
    if compression is None or compression.lower() in {"", "none"}:
        return None
    name = compression.lower()
    if name not in COMPRESSIONS:
        msg = (
            f"compression={compression!r} is not supported for TIFF: use None or one of "
            f"{', '.join(map(repr, COMPRESSIONS))}"
        )
        raise OptionError(msg)
    return name


def _tiff_order(stack: Stack) -> Stack:
    """Return `stack` with its axes in TZCYX order (lazily transposed when needed)."""
    if "y" not in stack.axes or "x" not in stack.axes:
        msg = (
            f"a TIFF holds (y, x) planes, but the stack's axes are {stack.axes!r}: "
            "write it to .zarr instead"
        )
        raise StackFormatError(msg)
    return stack.in_order(TIFF_AXES)


def _layout(stack: Stack, *, ome: bool) -> Layout:
    dtype = stack.dtype.newbyteorder("=")
    shape = stack.shape
    bigtiff = math.prod(shape) * dtype.itemsize > BIGTIFF_THRESHOLD
    if ome:
        if dtype not in OME_DTYPES:
            msg = (
                f"OME-TIFF cannot store pixels of dtype {dtype}: write a .tif or .zarr, "
                "or cast the stack to a 32-bit type"
            )
            raise StackFormatError(msg)
        resolution, unit = tag_resolution(stack)
        return Layout("ome", bigtiff, shape, dtype, ome_metadata(stack), resolution, unit)
    if dtype in IMAGEJ_DTYPES and not bigtiff:
        metadata, resolution = imagej_metadata(stack)
        return Layout("imagej", False, shape, dtype, metadata, resolution)
    metadata = {"axes": stack.axes.upper(), "zchunk": stack_attributes(stack)}
    resolution, unit = tag_resolution(stack)
    return Layout("shaped", bigtiff, shape, dtype, metadata, resolution, unit)


class _FileRegions:
    """A ``dask.array.store`` target writing regions of a C-ordered array inside a file.

    Picklable (it holds a path, not an open file or a memory map), so it works with the
    process and distributed schedulers; each write opens the file, writes the contiguous runs
    of its region with seek + write, and closes it, so no mapped pages accumulate.
    """

    def __init__(
        self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> None:
        self.path = path
        self.offset = offset
        self.shape = shape
        self.dtype = dtype
        self._written: dict[tuple[tuple[int, int], ...], tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the layout only (a copy in a worker keeps its own digests)."""
        return {k: v for k, v in self.__dict__.items() if k != "_written"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore with no digest kept."""
        self.__dict__.update(state)
        self._written = {}

    def _bounds(self, key: tuple[slice, ...]) -> tuple[tuple[int, int], ...]:
        return tuple(k.indices(n)[:2] for k, n in zip(key, self.shape, strict=True))

    def _runs(self, key: tuple[slice, ...]) -> Iterator[tuple[tuple[int, ...], int]]:
        """(index into the region, file offset) of each contiguous run of region `key`."""
        bounds = [k.indices(n)[:2] for k, n in zip(key, self.shape, strict=True)]
        starts = [b[0] for b in bounds]
        lengths = [b[1] - b[0] for b in bounds]
        ndim = len(self.shape)
        # first axis after which the region spans whole rows: runs are contiguous from there
        split = ndim - 1
        while split > 0 and lengths[split] == self.shape[split]:
            split -= 1
        strides = [math.prod(self.shape[i + 1 :]) for i in range(ndim)]
        base = sum(starts[i] * strides[i] for i in range(split, ndim))
        for index in np.ndindex(*lengths[:split]):
            element = base + sum((starts[i] + j) * strides[i] for i, j in enumerate(index))
            yield index, self.offset + element * self.dtype.itemsize

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray[Any, Any]) -> None:
        value = np.ascontiguousarray(value, dtype=self.dtype)
        crc = nbytes = 0
        runs = list(self._runs(key))  # in file order
        with open(self.path, "r+b") as fh:
            for index, offset in runs:
                run = memoryview(value[index]).cast("B")
                fh.seek(offset)
                fh.write(run)
                crc = zlib.crc32(run, crc)
                nbytes += run.nbytes
            fh.flush()
            if runs:  # the block's span, from its first run to the end of its last
                start_writeback(fh.fileno(), runs[0][1], runs[-1][1] + run.nbytes - runs[0][1])
        self._written[self._bounds(key)] = (nbytes, crc)

    def written_digest(self, key: tuple[slice, ...]) -> tuple[int, int] | None:
        """(bytes, crc32) of what the last write of region `key` wrote, taken once; or None.

        The same bytes, in the same order, as :meth:`stored_digest` reads back from the file.
        """
        return self._written.pop(self._bounds(key), None)

    def stored_digest(self, key: tuple[slice, ...]) -> tuple[int, int] | None:
        """(bytes, crc32) of the pixels of region `key` as the file holds them, in C order."""
        run = math.prod(
            k.indices(n)[1] - k.indices(n)[0] for k, n in zip(key, self.shape, strict=True)
        )
        crc = nbytes = 0
        with open(self.path, "rb") as fh:
            runs = list(self._runs(key))
            size = run * self.dtype.itemsize // max(len(runs), 1)
            for _, offset in runs:
                piece = os.pread(fh.fileno(), size, offset)
                if len(piece) != size:
                    return None
                crc = zlib.crc32(piece, crc)
                nbytes += size
        return nbytes, crc


def _data_offset(path: Path, layout: Layout) -> int:
    """Offset of the pixels in a laid-out (partial) TIFF; PartialOutputError if unusable."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            offset = series.dataoffset
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
        size = os.path.getsize(path)
    except Exception as exc:
        msg = f"the partial output {os.fspath(path)!r} cannot be read back ({exc})"
        raise PartialOutputError(msg) from exc
    nbytes = math.prod(layout.shape) * layout.dtype.itemsize
    if (
        offset is None
        or math.prod(shape) != math.prod(layout.shape)
        or dtype != layout.dtype
        or size < offset + nbytes
    ):
        msg = f"the partial output {os.fspath(path)!r} is not laid out as expected"
        raise PartialOutputError(msg)
    return int(offset)


def _lay_out(path: Path, layout: Layout) -> _FileRegions:
    """Write the header and page directories of an uncompressed TIFF; return its pixels."""
    located = tifffile.imwrite(
        path,
        None,
        bigtiff=layout.bigtiff,
        returnoffset=True,
        **kind_arg(layout.kind),
        **layout.write_args(),
    )
    if located is None:  # pragma: no cover - tifffile lays raw strips out contiguously
        msg = f"tifffile did not write {path} contiguously"
        raise RuntimeError(msg)
    return _FileRegions(os.fspath(path), int(located[0]), layout.shape, layout.dtype)


def _pages(array: zarr.Array[Any], shape: tuple[int, ...]) -> Iterator[np.ndarray[Any, Any]]:
    for index in np.ndindex(*shape[:-2]):
        yield np.asarray(array[index])


@dataclass(frozen=True, slots=True)
class TiffWriter:
    """A TIFF output (see :class:`zchunk.sinks._write.Writer`).

    Uncompressed, the partial output is the TIFF itself, laid out first and filled block by
    block in place. Compressed, it is a scratch zarr array (one shard per block) from which
    :meth:`export` encodes the pages in order once every block is there.
    """

    stack: Stack
    layout: Layout
    compression: str | None = None
    format: str = "tiff"

    @property
    def folder(self) -> bool:
        """Compressed: the partial output is a (scratch) zarr folder."""
        return self.compression is not None

    @property
    def compressed(self) -> bool:
        """Whether the pages are compressed."""
        return self.compression is not None

    @property
    def scratch(self) -> bool:
        """Compressed: the pages are exported from a scratch array."""
        return self.compression is not None

    def settings(self, data: da.Array, /) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return what the TIFF holds besides its pixels, and its compression."""
        options = {"compression": self.compression} if self.compression else {}
        return layout_record(self.layout), options

    def create(self, partial: Path, data: da.Array, /) -> Any:
        """Lay the TIFF out (uncompressed), or create the scratch array (compressed)."""
        if self.compression:
            return create_scratch(partial, data, axes=self.stack.axes)
        return _lay_out(partial, self.layout)

    def reopen(self, partial: Path, data: da.Array, /) -> Any:
        """Open the partial TIFF or scratch array of an interrupted run.

        A partial TIFF that cannot be read back (killed while tifffile wrote its header, or
        cut short by a power cut) is laid out again: the markers of its blocks then no longer
        match what it stores, so every block is computed again.
        """
        if self.compression:
            return open_aligned_array(os.fspath(partial), data)
        try:
            offset = _data_offset(partial, self.layout)
        except PartialOutputError:
            return _lay_out(partial, self.layout)
        return _FileRegions(os.fspath(partial), offset, self.layout.shape, self.layout.dtype)

    def finish(self, partial: Path, data: da.Array, /) -> None:
        """Nothing to add: the pixels are all there is."""

    def export(self, scratch: Path, data: da.Array, tmp: Path, /) -> None:
        """Encode the pages of the compressed TIFF `tmp` in order, one at a time, from `scratch`."""
        layout = self.layout
        array = open_aligned_array(os.fspath(scratch), data)
        write_args = {
            "compression": self.compression,
            # strips are encoded in parallel a batch at a time: one page's worth (default 512 MB)
            "buffersize": math.prod(layout.shape[-2:]) * layout.dtype.itemsize,
            **layout.write_args(),
        }
        with tifffile.TiffWriter(tmp, bigtiff=layout.bigtiff, **kind_arg(layout.kind)) as tiff:
            if data.ndim == 2:
                tiff.write(np.asarray(array[...]), **write_args)
            else:
                tiff.write(_pages(array, layout.shape), **write_args)


def to_tiff(
    stack: Stack,
    path: PathLike,
    /,
    *,
    overwrite: bool = False,
    compression: str | None = None,
    ome: bool = False,
    resume: bool = False,
) -> Path:
    """Write `stack` to a multi-page TIFF in bounded memory, resumably.

    The format depends on what ImageJ (Fiji) can read:

    - uint8, uint16 and float32 stacks up to :data:`BIGTIFF_THRESHOLD` bytes (4 GB less
      32 MB) become ImageJ hyperstacks, with the calibration in ImageJ's terms: pixel width
      and height in the X/YResolution tags, ``unit`` (``um``, ``nm``...), z ``spacing`` and
      the frame interval ``finterval`` (in seconds) in the description.
    - Other dtypes (float64, int8, int16, int32, uint32, int64, float16...), which ImageJ
      cannot store as such, become tifffile "shaped" TIFFs: the axes and the full calibration
      go in the JSON description (``{"axes": "ZYX", "zchunk": {"scale": [...], ...}}``,
      read by tifffile as ``TiffFile.shaped_metadata``) and the pixel size in the
      X/YResolution tags in pixels per centimeter, which Fiji reads.
    - Above the threshold the file is a BigTIFF with tifffile's shaped metadata (or OME
      with ``ome=True``), never ImageJ: ImageJ does not read ImageJ-flavoured BigTIFF, and
      tifffile's alternative (a classic TIFF with one IFD and the pages stored contiguously
      past 4 GB, ImageJ's own layout) shows a single page to every standard TIFF reader and
      cannot be compressed. A BigTIFF opens in tifffile and in Fiji through Bio-Formats;
      write ``.ome.tif`` to keep the z and t calibration visible to Fiji there.
    - ``ome=True`` writes OME-TIFF (BigTIFF when large) with ``PhysicalSizeX/Y/Z`` and
      ``TimeIncrement`` with their units and the channel names.

    Axes are written in TZCYX order (a subset of it), as ImageJ requires; stacks in another
    order are transposed lazily. Unknown pixel sizes are not written (never 1.0); a size
    without a unit is written without one (OME: unit "pixel"), and a frame interval without a
    time unit is not written.

    Memory: uncompressed output is laid out first and every dask block is computed once and
    written to its bytes in any order (about one block per worker thread). Compressed pages
    must be written in order: the stack is first computed block by block into a scratch zarr
    array next to the output (one shard per block, one chunk per plane of it), then written
    page by page from there, so memory is one page plus one chunk, and the scratch array is
    deleted afterwards. It needs free disk space for about the compressed size of the data.

    Resume: the laid-out file (uncompressed) or the scratch array (compressed) is
    ``.<name>.zchunk-partial`` next to `path`, with a record of the settings and of every
    finished block; an interrupted run (Ctrl-C, a kill, a crash, a full disk) leaves it, and
    ``resume=True`` computes only the missing blocks (then, when compressed, writes the
    pages). The file appears under `path` only when complete.

    Parameters
    ----------
    stack : Stack
        Pixels and calibration; must have y and x axes. The dtype is written as is.
    path : str or os.PathLike
        Output file (``.tif``, ``.tiff``; ``.ome.tif`` goes with ``ome=True``). Missing parent
        folders are created.
    overwrite : bool
        Replace an existing `path`, and discard a partial output that is not resumed. An
        input of `stack` (``stack.attrs["source_paths"]``) is never replaced.
    compression : str, optional
        None (default, fastest, readable by every program) or a lossless codec: ``"zlib"``,
        ``"deflate"``, ``"lzw"``, ``"zstd"``, ``"lzma"``, ``"packbits"``. ImageJ reads zlib,
        deflate, lzw and packbits, not zstd or lzma.
    ome : bool
        Write OME-TIFF metadata instead of ImageJ's.
    resume : bool
        Continue the partial output of an interrupted run started with the same settings
        (see :func:`~zchunk.sinks.to_zarr`); without one, a normal write.

    Returns
    -------
    Path
        The absolute output path.

    Raises
    ------
    OutputExistsError
        If `path` exists and `overwrite` is false, or if `path` is (or is inside) an input.
    PartialOutputError, ResumeMismatchError, DiskSpaceError
        As :func:`~zchunk.sinks.to_zarr`.
    StackFormatError
        If the dtype is not an integer or float type, if OME-TIFF cannot store it (64-bit
        integers, float16), or if the stack has no y or x axis.
    OptionError
        If `compression` is unknown.

    Examples
    --------
    >>> import tempfile
    >>> from zchunk.stack import Stack
    >>> s = Stack(
    ...     da.ones((3, 4, 5), dtype="uint16", chunks=(3, 2, 5)),
    ...     scale=(2.0, 0.5, 0.5),
    ...     units=("micrometer",) * 3,
    ... )
    >>> out = to_tiff(s, os.path.join(tempfile.mkdtemp(), "a.tif"))
    >>> with tifffile.TiffFile(out) as tif:
    ...     tif.series[0].axes, tif.imagej_metadata["spacing"], tif.imagej_metadata["unit"]
    ('ZYX', 2.0, 'um')
    """
    check_writable(stack)
    codec = _normalize_compression(compression)
    stack = _tiff_order(stack)
    writer = TiffWriter(stack, _layout(stack, ome=ome), codec)
    return write(writer, stack, path, overwrite=overwrite, resume=resume)
