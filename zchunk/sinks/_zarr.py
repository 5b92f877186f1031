"""Zarr v3 output: one shard per dask block, inner chunks of one plane (or a few small ones).

The array is created first, then every dask block is computed once and written to exactly
the shard it covers (``dask.array.store`` with ``lock=False``). Writes are shard-aligned by
construction: zarr-python writes unaligned regions of a shard with a read-modify-write that
silently loses data when two tasks touch the same shard.

Codec: Blosc with LZ4 (level 5) and bit shuffling. On filtered uint16 stacks (the 100 x 1024 x
1024 benchmark stack, one thread) it encodes at 0.9-1.9 GB/s where Blosc-zstd level 3 with
byte shuffling encoded at 0.1-0.35 GB/s, and compresses about as well (a 3-D gaussian: 3.0x
against 4.4x; sobel magnitudes: 1.7x against 1.7x; raw noisy input: 1.8x against 1.8x). Saving
that gaussian (210 MB) through this module took 0.43-0.78 s against 2.2-2.8 s (figures in
``benchmarks/RESULTS.md``): zstd's encode cost more than the filter itself. LZ4 and bit
shuffling are in every Blosc build (c-blosc >= 1.8: numcodecs for zarr-python and napari,
jblosc for Fiji's n5-zarr, tensorstore), so every reader of zstd-Blosc zarr reads these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import dask.array as da
import numpy as np

from zchunk.errors import PartialOutputError
from zchunk.sinks._atomic import GuardedTarget
from zchunk.sinks._lock import fence_of
from zchunk.sinks._write import SCRATCH_LEVEL, check_writable, native_order, regular_grid, write

if TYPE_CHECKING:
    from pathlib import Path

    import zarr
    from zarr.storage import StoreLike

    from zchunk._types import PathLike
    from zchunk.stack import Stack

__all__ = [
    "check_writable",
    "create_aligned_array",
    "create_scratch",
    "native_order",
    "open_aligned_array",
    "regular_grid",
    "stack_attributes",
    "store_blocks",
    "to_zarr",
]

#: Compressor of zarr outputs: LZ4 level 5 inside Blosc, with bit shuffling (see above).
DEFAULT_CODEC: Final = "lz4"
DEFAULT_COMPRESSION_LEVEL = 5

#: Inner chunks hold this many bytes at least, as whole planes of the block: zarr-python encodes
#: and indexes each inner chunk of a shard through its async machinery (30-300 us per chunk, up
#: to 1 ms with two writers), so a 954-plane block of 32 x 586 pixels written as 954 plane
#: chunks of 37 KB took 0.29 s, and as 18 chunks of 53 planes 0.05 s (zarr 3.4, one thread; a
#: 32 GB stack filtered with the default budget is 896 such blocks); the 210 MB demo stack
#: converted to zarr in 0.57 s with 1 MiB chunks (one plane), 0.34 s with 2 MiB and 0.30 s with
#: 4 MiB, and filtered 10-15% faster (RESULTS.md). A viewer that shows one plane decodes 4 MiB
#: per chunk it touches: a few ms of LZ4.
MIN_INNER_BYTES = 4 * 2**20


def _plane_axes(axes: str) -> tuple[int, int]:
    if "y" in axes and "x" in axes:
        return axes.index("y"), axes.index("x")
    return len(axes) - 2, len(axes) - 1


def plane_chunks(
    block: tuple[int, ...], axes: str, itemsize: int = 1, *, group: bool = True
) -> tuple[int, ...]:
    """Return the inner chunk of a shard `block`: whole (y, x) planes of it for ndim >= 3.

    One plane per chunk, so a viewer reads a plane without decoding the whole z range; planes
    smaller than :data:`MIN_INNER_BYTES` (`itemsize` bytes per pixel) are grouped along the
    axis before y (z, for zyx) into chunks of the fewest planes that reach it and divide the
    block's extent (a shard holds whole inner chunks), or of all its planes when they do not
    reach it; when only a divisor over 4x that many planes reaches it, the most planes that
    divide the extent and do not (one, for a prime plane count). With `group` false, always one
    plane per chunk. A 2-D block is its own
    single chunk: the result of a projection is small, read whole, and only one plane deep, so
    splitting it buys nothing.

    Examples
    --------
    >>> plane_chunks((16, 1024, 2048), "zyx", 2), plane_chunks((1, 16, 1024, 2048), "tzyx", 2)
    ((1, 1024, 2048), (1, 1, 1024, 2048))
    >>> plane_chunks((16, 512, 1024), "zyx", 2)  # 1 MiB planes: 4 to a chunk
    (4, 512, 1024)
    >>> plane_chunks((954, 32, 586), "zyx", 2), plane_chunks((953, 32, 586), "zyx", 2)
    ((159, 32, 586), (1, 32, 586))
    >>> plane_chunks((955, 32, 586), "zyx", 2)  # 955 = 5 x 191: 191 planes of 37 KB
    (191, 32, 586)
    >>> plane_chunks((6, 10, 29), "zyx", 1)
    (6, 10, 29)
    >>> plane_chunks((64, 128), "yx")
    (64, 128)
    """
    if len(block) < 3:
        return block
    keep = _plane_axes(axes)
    inner = [n if i in keep else 1 for i, n in enumerate(block)]
    axis = min(keep) - 1  # the axis before the plane's
    plane_bytes = max(1, block[keep[0]] * block[keep[1]] * itemsize)
    want = -(-MIN_INNER_BYTES // plane_bytes)
    if group and want > 1 and axis >= 0:
        n = block[axis]
        # the fewest planes that reach it and divide n, or all n when they do not reach it
        k = min((d for d in range(want, n + 1) if n % d == 0), default=n)
        if k > 4 * want:  # a far larger divisor only: the most planes below it that divide n
            k = max(d for d in range(1, want) if n % d == 0)
        inner[axis] = k
    return tuple(inner)


def create_aligned_array(
    store: StoreLike,
    data: da.Array,
    /,
    *,
    axes: str,
    name: str | None = None,
    attributes: dict[str, Any] | None = None,
    zarr_format: Literal[2, 3] = 3,
    level: int = DEFAULT_COMPRESSION_LEVEL,
    dimension_names: bool = True,
    group_planes: bool = True,
) -> zarr.Array[Any]:
    """Create an empty zarr array whose write units are the blocks of `data`.

    Parameters
    ----------
    store : StoreLike
        Where to create the array (a folder path, a store or a group's store).
    data : dask.array.Array
        The array to be written; its chunks must be a regular grid (see :func:`regular_grid`).
    axes : str
        Axis letters of `data`, used as dimension names and to find the plane axes.
    name : str, optional
        Path of the array inside `store` (``"0"`` for an OME-Zarr level).
    attributes : dict, optional
        JSON attributes of the array.
    zarr_format : {3, 2}
        Zarr v3 writes one shard per block with one inner chunk per plane of the block; zarr
        v2 has no shards and uses the plane chunks directly, which every block covers whole.
    level : int
        LZ4 compression level (Blosc, bit shuffle).
    dimension_names : bool
        Write the axes as dimension names (zarr v3 only).
    group_planes : bool
        Group small planes into inner chunks (see :func:`plane_chunks`); false for an array
        read back plane by plane.

    Returns
    -------
    zarr.Array
        The new array, filled with zeros; every chunk is written even if all zero.
    """
    block = tuple(int(c[0]) for c in data.chunks)
    inner = plane_chunks(block, axes, np.dtype(data.dtype).itemsize, group=group_planes)
    common: dict[str, Any] = {
        "name": name,
        "shape": tuple(int(n) for n in data.shape),
        "dtype": np.dtype(data.dtype),
        "fill_value": 0,
        "attributes": attributes,
        "zarr_format": zarr_format,
        # every chunk exists on disk, so a reader can tell a missing chunk from zeros
        "config": {"write_empty_chunks": True},
    }
    import zarr  # here, not at import: a TIFF output needs none of it (0.3 s)
    from zarr.codecs import BloscCodec

    if zarr_format == 3:
        array = zarr.create_array(
            store,
            chunks=inner,
            shards=block,
            compressors=BloscCodec(cname=DEFAULT_CODEC, clevel=level, shuffle="bitshuffle"),
            dimension_names=list(axes) if dimension_names else None,
            **common,
        )
    else:
        compressor: dict[str, Any] = {
            "id": "blosc",
            "cname": DEFAULT_CODEC,
            "clevel": level,
            "shuffle": 2,  # bit shuffle
        }
        array = zarr.create_array(
            store,
            chunks=inner,
            compressors=compressor,
            chunk_key_encoding={"name": "v2", "separator": "/"},
            **common,
        )
    return array


def create_scratch(path: Path, data: da.Array, /, *, axes: str) -> zarr.Array[Any]:
    """Create the scratch array of `data` at `path`: read back once, so fast to compress.

    One plane per inner chunk: the TIFF export reads it page by page, and a page read from
    chunks of k planes decodes k (a review measured a 200-page export 1.46 -> 4.21 s at k=20).
    """
    return create_aligned_array(
        os.fspath(path),
        data,
        axes=axes,
        level=SCRATCH_LEVEL,
        dimension_names=False,
        group_planes=False,
    )


def open_aligned_array(
    store: StoreLike, data: da.Array, /, *, name: str | None = None
) -> zarr.Array[Any]:
    """Open the array :func:`create_aligned_array` made for `data`, to write its other blocks.

    Raises
    ------
    PartialOutputError
        If the array is not the one `data` needs (shape, dtype or shards differ).
    """
    import zarr

    try:
        array = zarr.open_array(
            store, path=name or "", mode="r+", config={"write_empty_chunks": True}
        )
    except Exception as exc:
        msg = f"the partial output {store!r} cannot be read back ({exc}); it was deleted: run again"
        raise PartialOutputError(msg) from exc
    block = tuple(int(c[0]) for c in data.chunks)
    units = array.shards if array.shards is not None else block  # v2: plane chunks, any block
    if (
        tuple(array.shape) != tuple(data.shape)
        or np.dtype(array.dtype) != np.dtype(data.dtype)
        or tuple(units) != block
    ):
        msg = (
            f"the partial output {store!r} does not hold the expected array "
            f"(shape {array.shape}, dtype {array.dtype}, shards {array.shards}); it was "
            "deleted: run again"
        )
        raise PartialOutputError(msg)
    return array


def store_blocks(data: da.Array, target: Any, root: Path) -> None:
    """Compute every block of `data` once and write it to the same region of `target`.

    Uses the dask scheduler of the caller (``dask.config``), so progress bars and distributed
    clusters apply. The regions of `target` that blocks write must not overlap its write units
    partially (zarr shards, chunks), which :func:`create_aligned_array` guarantees. `root` is
    the temporary file or folder `target` writes into (see :class:`GuardedTarget`).
    """
    guarded: Any = GuardedTarget(target, root, fence_of(root))  # dask: targets are ArrayLike
    da.store(data, guarded, lock=False, compute=True)


def _json_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def stack_attributes(stack: Stack) -> dict[str, Any]:
    """Return the calibration of `stack` as JSON-ready zchunk metadata.

    Examples
    --------
    >>> from zchunk.stack import Stack
    >>> s = Stack(np.zeros((2, 3, 4), "uint8"), scale=(2.0, 0.5, 0.5), units=("micrometer",) * 3)
    >>> stack_attributes(s)["scale"], stack_attributes(s)["axes"]
    ([2.0, 0.5, 0.5], 'zyx')
    """
    channel_names = stack.attrs.get("channel_names")
    return {
        "axes": stack.axes,
        "scale": [_json_float(s) for s in stack.scale],
        "units": list(stack.units),
        "name": stack.name,
        "channel_names": None if channel_names is None else [str(c) for c in channel_names],
    }


@dataclass(frozen=True, slots=True)
class ZarrWriter:
    """A zarr v3 array, one shard per block (see :class:`zchunk.sinks._write.Writer`)."""

    stack: Stack
    format: str = "zarr"
    folder: bool = True
    compressed: bool = True

    def settings(self, data: da.Array, /) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return the metadata and writer options a partial output is resumed under."""
        attributes = {"zchunk": stack_attributes(self.stack)}
        return attributes, {
            "zarr_format": 3,
            "codec": DEFAULT_CODEC,
            "level": DEFAULT_COMPRESSION_LEVEL,
        }

    def create(self, partial: Path, data: da.Array, /) -> Any:
        """Create the empty array."""
        attributes = {"zchunk": stack_attributes(self.stack)}
        return create_aligned_array(
            os.fspath(partial), data, axes=self.stack.axes, attributes=attributes
        )

    def reopen(self, partial: Path, data: da.Array, /) -> Any:
        """Open the array of an interrupted run."""
        return open_aligned_array(os.fspath(partial), data)

    def finish(self, partial: Path, data: da.Array, /) -> None:
        """Nothing to add: the array is complete."""


def to_zarr(
    stack: Stack,
    path: PathLike,
    /,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write `stack` to a zarr v3 array, block by block, resumably.

    Every dask block is computed once and written to its own shard: shards are the block
    shape (the last shard along an axis may be cut by the array edge) and inner chunks are one
    (y, x) plane of a block for 3-D and larger stacks, so a viewer reads a plane without
    decoding the whole z range (small planes are grouped, see :func:`plane_chunks`). A 2-D
    stack (a projection) has one inner chunk per shard. When the dask chunks are not a regular
    grid, the data are first rechunked to one (see
    :func:`regular_grid`: the first chunk size along each axis; the first axis of a volume is
    never split, only merged). Peak memory is about one block per dask worker thread.

    The array is written as ``.<name>.zchunk-partial`` next to `path`, with a record of the
    settings and of every finished block (see :mod:`zchunk.sinks._resume`), and renamed onto
    `path` when complete. If the run is interrupted (Ctrl-C, a kill, a crash, a full disk),
    the partial output stays and ``resume=True`` continues it; any other error deletes it.

    Parameters
    ----------
    stack : Stack
        Pixels and calibration; dtype is kept as is (integers or floats).
    path : str or os.PathLike
        Output folder, conventionally ending in ``.zarr``. Missing parent folders are created.
    overwrite : bool
        Replace an existing `path`, and discard a partial output that is not resumed. An
        input of `stack` (``stack.attrs["source_paths"]``) is never replaced.
    resume : bool
        Continue the partial output of an interrupted run: the blocks it holds are skipped
        (neither read nor computed) if it was started with the same settings (inputs
        unchanged, same operation, parameters, dtype, shape and calibration). Without a
        partial output, a normal write.

    Returns
    -------
    Path
        The absolute output path.

    Raises
    ------
    OutputExistsError
        If `path` exists and `overwrite` is false, or if `path` is (or is inside, or holds) an
        input of the stack.
    PartialOutputError
        If an interrupted run left a partial output and neither `resume` nor `overwrite` is
        given.
    ResumeMismatchError
        If `resume` is given but the partial output has other settings (and not `overwrite`).
    DiskSpaceError
        If the output folder has less free space than the uncompressed size of the output
        (of its missing blocks, when resuming).
    StackFormatError
        If the dtype is not an integer or float type (bool, complex, object...).

    Notes
    -----
    The array attributes hold the calibration as ``{"zchunk": {"axes": "zyx", "scale": [...],
    "units": [...], "name": ..., "channel_names": ...}}`` (unknown values are ``null``); the
    dimension names are the axis letters and the fill value is 0. Every chunk is written even
    when it is all zeros, so that a missing chunk always means damaged data.

    Examples
    --------
    >>> import tempfile
    >>> from zchunk.stack import Stack
    >>> s = Stack(da.ones((4, 6, 8), dtype="uint16", chunks=(4, 3, 8)), scale=(2.0, 0.5, 0.5))
    >>> import zarr
    >>> out = to_zarr(s, os.path.join(tempfile.mkdtemp(), "a.zarr"))
    >>> z = zarr.open_array(out, mode="r")
    >>> z.shards, z.chunks, int(z[:].sum()), z.attrs["zchunk"]["scale"]
    ((4, 3, 8), (4, 3, 8), 192, [2.0, 0.5, 0.5])
    """
    return write(ZarrWriter(stack), stack, path, overwrite=overwrite, resume=resume)
