"""Lazy TIFF reading: one multi-page file, or many files of one page (or of equal page counts).

Headers are parsed once, when the stack is opened (:mod:`zchunk.io._tiff_parse`), into a
:class:`~zchunk.io._tiff_layout.TiffLayout`: for every plane
the file it lives in and the offsets and byte counts of its stored segments (strips or tiles).
A dask task then gets a :class:`BlockSpec` holding only the segment table of its own block and

* for uncompressed strips, reads just the rows of its band with ``os.preadv`` straight into the
  output buffer (no mmap: on a cold cache mmap's readahead reads far more than asked);
* for compressed or tiled data, reads the segments that intersect its block (runs of adjacent
  segments in one read) and decodes each exactly once with tifffile's own decoder.

The planner aligns bands to the strip/tile height, so no segment is decoded by two tasks. Pages
stored as one compressed strip make every band a whole page ("tall bands"): each page is still
decoded once per pass, at the cost of chunks of a whole page times z, which ``zchunk info``
reports when they exceed the memory budget.

Projections read without chunks: :func:`stream_planes` feeds running results plane by plane
from tall bands, :func:`stream_bands` feeds column reductions (a median) a band at a time; both
through one reused buffer. A plane stream of an uncompressed file that is not in the page cache
reads with O_DIRECT, a reader thread ahead of the consumer (:mod:`zchunk.io._direct`): the
disk fills the buffers and the kernel copies nothing. Whole blocks of such a file
(:func:`read_block`, and the blocks whose bands a median reduces) are read the same way, each
plane copied once from the reader's buffers into the block.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from zchunk._direct import set_direct
from zchunk.errors import CorruptDataError, InputChangedError
from zchunk.io._direct import DirectRanges
from zchunk.io._tiff_open import open_tiff, strict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from zchunk.io._tiff_layout import BlockSpec, FileId, TiffLayout

__all__ = [
    "READ_STATS",
    "ReadStats",
    "read_block",
    "stream_bands",
    "stream_planes",
]


@dataclass
class ReadStats:
    """Bytes read from disk and decoded by this process's readers (for tests and benchmarks)."""

    bytes_read: int = 0
    bytes_decoded: int = 0
    segments_decoded: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, read: int = 0, decoded: int = 0, segments: int = 0) -> None:
        """Count `read` bytes read, `decoded` bytes decoded from `segments` segments."""
        with self._lock:
            self.bytes_read += read
            self.bytes_decoded += decoded
            self.segments_decoded += segments

    def reset(self) -> None:
        """Set every counter to zero."""
        with self._lock:
            self.bytes_read = self.bytes_decoded = self.segments_decoded = 0


READ_STATS = ReadStats()


@dataclass(slots=True)
class _Tally:
    """One task's read counts: added to :data:`READ_STATS` once, when the task ends.

    A task reads hundreds of segments; taking READ_STATS's lock for each would put a shared
    lock in the per-segment loop of every reading thread.
    """

    read: int = 0
    decoded: int = 0
    segments: int = 0

    @contextlib.contextmanager
    def flushed(self) -> Iterator[_Tally]:
        """Yield this tally; add it to READ_STATS on exit (also after an error)."""
        try:
            yield self
        finally:
            READ_STATS.add(read=self.read, decoded=self.decoded, segments=self.segments)


# ----------------------------------------------------------------------------------------------
# Reading a block (runs inside dask tasks)


def _pread_into(fd: int, buf: memoryview, offset: int, path: str) -> None:
    """Fill `buf` from `offset`, or raise CorruptDataError if the file ends first."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            msg = (
                f"{path} is truncated: expected {len(buf)} bytes at offset {offset}, "
                f"the file ends after {done}"
            )
            raise CorruptDataError(msg)
        done += n


def _runs(offsets: np.ndarray, counts: np.ndarray) -> Iterator[tuple[int, int]]:
    """Yield (first, stop) index ranges of segments stored back to back."""
    start = 0
    for i in range(1, len(offsets) + 1):
        if i == len(offsets) or offsets[i] != offsets[i - 1] + counts[i - 1]:
            yield start, i
            start = i


@lru_cache(maxsize=32)
def _decoder(file: FileId) -> Callable[..., Any]:
    """Tifffile's segment decoder for the pages of `file` (parsed once per process)."""
    with strict(file.path), open_tiff(file.path) as tif:
        decode: Callable[..., Any] = tif.pages.first.decode
        return decode


@contextlib.contextmanager
def _opened(spec: BlockSpec) -> Iterator[dict[int, int]]:
    """Open the block's files (checked against their parsed identity); close them after."""
    fds: dict[int, int] = {}
    try:
        for i, file in enumerate(spec.files):
            try:
                fds[i] = os.open(file.path, os.O_RDONLY)
            except FileNotFoundError as exc:
                msg = f"{file.path} was deleted or moved after it was opened; open it again"
                raise InputChangedError(msg) from exc
            file.check(fds[i])
            if not spec.compressed and not spec.tiled:
                # no readahead beyond the rows asked for: prefetch says what comes next
                os.posix_fadvise(fds[i], 0, 0, os.POSIX_FADV_RANDOM)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def _to_native(spec: BlockSpec, array: np.ndarray) -> None:
    """Swap big-endian raw rows in place (decoded segments are copied in native order)."""
    raw = not spec.compressed and not spec.tiled
    if raw and spec.dtype.byteorder == ">" and spec.dtype.itemsize > 1:
        array.byteswap(inplace=True)


class _Planes:
    """Read the planes of one block from its open files, one at a time.

    The per-plane work is precomputed for the whole block (which file, which byte ranges):
    a plane of a band can be a single 30 KB read, so Python's cost per plane counts.
    """

    def __init__(self, spec: BlockSpec, fds: dict[int, int], tally: _Tally) -> None:
        self.spec = spec
        self.tally = tally
        files = spec.plane_file.tolist()
        self.fds = [fds[i] for i in files]
        self.paths = [spec.files[i].path for i in files]
        self.parts = _raw_parts(spec) if not spec.compressed and not spec.tiled else None

    def read(self, p: int, out: np.ndarray) -> None:
        """Read plane `p` of the block into `out` (rows, columns), in the file's byte order."""
        if self.parts is None:
            _read_segments(self.spec, self.fds[p], self.paths[p], p, out, self.tally)
        else:
            self.tally.read += _read_raw_rows(
                self.spec, self.fds[p], self.paths[p], self.parts[p], out
            )

    def prefetch(self, planes: range, *, probe: bool = False) -> bool:
        """Ask the kernel to start reading every byte range of `planes` at once.

        The reads that follow then find their pages arriving from a deep I/O queue instead
        of waiting for each range in turn (on a cold cache this is most of the speed). With
        `probe`, ranges found in the page cache are skipped (asking for cached pages costs a
        walk over them: a quarter of a warm plane-by-plane max) until the first that is not:
        a probe of an uncached page reads that page, an extra request, so probing stops there
        and everything after is asked for. Returns whether probing may go on.
        """
        spec = self.spec
        row_bytes = spec.width * spec.dtype.itemsize
        for p in planes:
            fd = self.fds[p]
            if self.parts is not None:
                ranges = [(offset, count * row_bytes) for offset, _, count in self.parts[p]]
            else:
                offsets, counts = spec.offsets[p], spec.bytecounts[p]
                ranges = [
                    (int(offsets[a]), int(offsets[b - 1] + counts[b - 1] - offsets[a]))
                    for a, b in _runs(offsets, counts)
                ]
            for offset, size in ranges:
                if not size:
                    continue
                probe = probe and _is_cached(fd, offset + size - 1)
                if not probe:
                    os.posix_fadvise(fd, offset, size, os.POSIX_FADV_WILLNEED)
        return probe

    def direct(self, min_read: int | None = None) -> DirectRanges | None:
        """Return a reader of the planes with O_DIRECT when that is how they are best read.

        That is when each plane is one range of whole rows of `min_read` (default
        :data:`DIRECT_MIN_READ`) to half :data:`STREAM_AHEAD_BYTES` bytes (two are held at
        once), a byte of them is not in the page cache (a cached file is read fastest from
        the cache), and the file system takes O_DIRECT (see :mod:`zchunk.io._direct`).
        """
        spec = self.spec
        if self.parts is None or spec.cols != (0, spec.width) or not DIRECT_READS:
            return None
        row_bytes = spec.width * spec.dtype.itemsize
        ranges = []
        for parts in self.parts:
            if len(parts) != 1:
                return None
            offset, _, count = parts[0]
            ranges.append((offset, count * row_bytes))
        nbytes = ranges[0][1] if ranges else 0
        least = DIRECT_MIN_READ if min_read is None else min_read
        if not least <= nbytes <= STREAM_AHEAD_BYTES // 2:
            return None
        # a byte picked at random: probing reads the page it finds uncached into the cache,
        # so a fixed byte would look cached to the next run over the same file
        p = random.randrange(len(ranges))
        if _is_cached(self.fds[p], ranges[p][0] + random.randrange(nbytes)):
            return None
        if not set_direct(sorted(set(self.fds))):
            return None
        depth = max(2, STREAM_AHEAD_BYTES // 4 // nbytes)
        return DirectRanges(self.fds, ranges, self.paths, depth)

    def read_all(self, out: np.ndarray) -> None:
        """Read every plane into `out` (planes, rows, columns), in the native byte order."""
        for p in range(len(self.fds)):
            self.read(p, out[p])
        _to_native(self.spec, out)

    def read_direct(
        self, direct: DirectRanges, targets: Sequence[tuple[slice, np.ndarray]]
    ) -> None:
        """Read every plane from `direct` (see :meth:`direct`) into `targets`, native order.

        Each target is (rows of the block, array of (planes, those rows, columns)): plane p's
        rows go to ``array[p]``, copied once from the reader's aligned buffer (the copy the
        page cache would make in the kernel, without its cost per page).
        """
        spec = self.spec
        shape = (spec.rows[1] - spec.rows[0], spec.cols[1] - spec.cols[0])
        dtype = spec.dtype.newbyteorder("=")
        for p, raw in enumerate(direct):
            plane = raw.view(dtype).reshape(shape)  # copied from: may be unaligned (ImageJ)
            for rows, array in targets:
                array[p] = plane[rows]
            self.tally.read += raw.nbytes
        for _, array in targets:
            _to_native(spec, array)


def read_block(spec: BlockSpec) -> np.ndarray:
    """Read one block of the stack, in the native byte order."""
    r0, r1 = spec.rows
    c0, c1 = spec.cols
    nplanes = len(spec.plane_file)
    out = np.empty((nplanes, r1 - r0, c1 - c0), dtype=spec.dtype.newbyteorder("="))
    with _Tally().flushed() as tally, _opened(spec) as fds:
        planes = _Planes(spec, fds, tally)
        direct = planes.direct(DIRECT_MIN_BLOCK_READ)
        if direct is not None:
            planes.read_direct(direct, [(slice(None), out)])
        else:
            planes.prefetch(range(nplanes))
            planes.read_all(out)
    return out.reshape(spec.shape)


def stream_bands(spec: BlockSpec, bands: Sequence[BlockSpec]) -> Iterator[np.ndarray]:
    """Yield `bands` (consecutive row ranges of block `spec`) read into one reused buffer.

    Each band is (planes, rows, columns) and valid until the next is asked for. A reduction
    that needs a pixel's whole column (a median) thus works on a band at a time instead of a
    freshly allocated chunk: no page faults, and the kernel's working set stays small. A block
    of a cold, uncompressed file is read instead with O_DIRECT, each plane's rows once into
    the bands, which then hold the whole block (as :func:`read_block` would): through the
    page cache, its many short reads cost more kernel time than the reduction itself
    (:data:`DIRECT_MIN_BLOCK_READ`).
    """
    c0, c1 = spec.cols
    nplanes = len(spec.plane_file)
    native = spec.dtype.newbyteorder("=")
    with _Tally().flushed() as tally, _opened(spec) as fds:
        planes = _Planes(spec, fds, tally)
        direct = planes.direct(DIRECT_MIN_BLOCK_READ)
        if direct is not None:
            r0 = spec.rows[0]
            held = [
                (
                    slice(b.rows[0] - r0, b.rows[1] - r0),
                    np.empty((nplanes, b.rows[1] - b.rows[0], c1 - c0), native),
                )
                for b in bands
            ]
            planes.read_direct(direct, held)
            for _, whole in held:
                yield whole
            return
        rows = max(b.rows[1] - b.rows[0] for b in bands)
        buf = np.empty(nplanes * rows * (c1 - c0), dtype=native)
        planes.prefetch(range(nplanes))
        for band in bands:
            n = band.rows[1] - band.rows[0]
            out = buf[: nplanes * n * (c1 - c0)].reshape(nplanes, n, c1 - c0)
            _Planes(band, fds, tally).read_all(out)
            yield out


#: Bytes a plane stream asks the kernel to read ahead of the plane being reduced: enough to
#: keep a cold disk busy (measured: 8-32 MiB ahead per stream read a 4.2 GB stack 1.4-2x
#: faster than none), little next to the page cache.
STREAM_AHEAD_BYTES = 32 * 2**20


#: Whether plane streams and blocks of uncached, uncompressed files read with O_DIRECT (see
#: :meth:`_Planes.direct`); a switch for tests and comparisons.
DIRECT_READS = True

#: Smallest plane range read with O_DIRECT: the reader thread has one read at a time in
#: flight, and shorter reads would leave the disk waiting between them (the page cache's
#: readahead keeps many in flight).
DIRECT_MIN_READ = 256 * 2**10

#: Smallest plane range of a whole block (:func:`read_block`, :func:`stream_bands`) read with
#: O_DIRECT. Such blocks are read plane after plane in short ranges (a median's chunk of a
#: 954 x 4096 x 4096 stack: 22 rows, 180 KiB per plane) that the page cache serves at a high
#: kernel cost: on the 2-core test VM a 32 GB median spent 71 s of system time against 23 s
#: of its own, and 15 s against 29 s with O_DIRECT (40 s instead of 61). At 64 KiB per plane
#: (a 384 MiB budget) O_DIRECT still ran 60 s against 64 s, with 66 CPU-s against 104
#: (benchmarks/RESULTS.md); below that the reader's cost per range would dominate.
DIRECT_MIN_BLOCK_READ = 64 * 2**10


def stream_planes(spec: BlockSpec) -> Iterator[np.ndarray]:
    """Yield the block's planes in order, each read into one reused buffer.

    A plane is valid until the next one is asked for. Memory is one plane of the block
    (plus a decoded segment), whatever the number of planes: reductions that can be computed
    plane by plane (max, min, sums) read a band of the whole stack this way, in long reads
    that keep the disk's sequential rate. Planes of an uncached, uncompressed file are read
    with O_DIRECT instead (see :meth:`_Planes.direct`), up to a quarter of
    :data:`STREAM_AHEAD_BYTES` ahead in the process's own buffers.
    """
    r0, r1 = spec.rows
    c0, c1 = spec.cols
    nplanes = len(spec.plane_file)
    buf = np.empty((r1 - r0, c1 - c0), dtype=spec.dtype.newbyteorder("="))
    ahead = max(1, STREAM_AHEAD_BYTES // max(buf.nbytes, 1))
    with _Tally().flushed() as tally, _opened(spec) as fds:
        planes = _Planes(spec, fds, tally)
        direct = planes.direct()
        if direct is not None:
            shape = (r1 - r0, c1 - c0)
            for raw in direct:
                plane = raw.view(buf.dtype).reshape(shape)
                if not plane.flags.aligned:  # pixels at an odd offset (ImageJ's files)
                    np.copyto(buf, plane)
                    plane = buf
                tally.read += raw.nbytes
                _to_native(spec, plane)
                yield plane
            return
        warm = planes.prefetch(range(min(ahead, nplanes)), probe=True)
        for p in range(nplanes):
            if p + ahead < nplanes:
                warm = planes.prefetch(range(p + ahead, p + ahead + 1), probe=warm)
            planes.read(p, buf)
            _to_native(spec, buf)
            yield buf


def _raw_parts(spec: BlockSpec) -> list[list[tuple[int, int, int]]]:
    """Per plane: (file offset, first row in block, row count) of its rows, adjacent merged."""
    r0, r1 = spec.rows
    sh = spec.segment_shape[0]
    row_bytes = spec.width * spec.dtype.itemsize
    first = spec.segments * sh
    a, b = np.maximum(r0, first), np.minimum(r1, first + sh)
    starts = (spec.offsets + ((a - first) * row_bytes)[None, :]).tolist()
    rows, counts = (a - r0).tolist(), (b - a).tolist()
    if len(rows) == 1:  # one strip per page, or a band within one strip
        return [[(plane[0], rows[0], counts[0])] for plane in starts]
    table = []
    for plane in starts:
        parts: list[tuple[int, int, int]] = []
        for offset, row, count in zip(plane, rows, counts, strict=True):
            if parts and parts[-1][0] + parts[-1][2] * row_bytes == offset:
                parts[-1] = (parts[-1][0], parts[-1][1], parts[-1][2] + count)
            else:
                parts.append((offset, row, count))
        table.append(parts)
    return table


def _is_cached(fd: int, offset: int) -> bool:
    """Tell whether the byte at `offset` is in the page cache (a read that cannot block).

    When it is not, the kernel starts reading its page (RWF_NOWAIT does not stop that).
    """
    try:
        return os.preadv(fd, [bytearray(1)], offset, os.RWF_NOWAIT) == 1
    except OSError:  # EAGAIN: not cached (or the file system cannot tell)
        return False


def _read_raw_rows(
    spec: BlockSpec, fd: int, path: str, parts: list[tuple[int, int, int]], out: np.ndarray
) -> int:
    """Read rows r0:r1 of one uncompressed, striped plane (its `parts`); return the bytes read."""
    r0, r1 = spec.rows
    c0, c1 = spec.cols
    row_bytes = spec.width * spec.dtype.itemsize
    full_width = c0 == 0 and c1 == spec.width
    target = out if full_width else np.empty((r1 - r0, spec.width), out.dtype)
    flat = memoryview(target).cast("B")
    for offset, row, count in parts:
        _pread_into(fd, flat[row * row_bytes : (row + count) * row_bytes], offset, path)
    if not full_width:
        out[...] = target[:, c0:c1]
    return sum(count for _, _, count in parts) * row_bytes


def _read_segments(
    spec: BlockSpec, fd: int, path: str, p: int, out: np.ndarray, tally: _Tally
) -> None:
    """Read and decode the segments of one plane that intersect the block."""
    r0, r1 = spec.rows
    c0, c1 = spec.cols
    sh, sw = spec.segment_shape
    per_row = math.ceil(spec.width / sw) if spec.tiled else 1
    decode = _decoder(spec.decoder_file)
    # JPEG: the tables shared by the pages (tifffile passes them the same way)
    extra = {} if spec.jpegtables is None else {"jpegtables": spec.jpegtables}
    offsets, counts = spec.offsets[p], spec.bytecounts[p]
    for first, stop in _runs(offsets, counts):
        size = int(offsets[stop - 1] + counts[stop - 1] - offsets[first])
        raw = bytearray(size)
        if size:
            _pread_into(fd, memoryview(raw), int(offsets[first]), path)
            tally.read += size
        for k in range(first, stop):
            seg = int(spec.segments[k])
            y, x = (seg // per_row) * sh, (seg % per_row) * sw
            a = int(offsets[k] - offsets[first])
            data = bytes(raw[a : a + int(counts[k])]) if counts[k] else None
            try:
                array, _, _ = decode(data, seg, **extra)
            except Exception as exc:
                msg = f"{path}: cannot decode segment {seg} of plane {p} ({exc})"
                raise CorruptDataError(msg) from exc
            ya, yb = max(r0, y), min(r1, y + sh, spec.height)
            xa, xb = max(c0, x), min(c1, x + sw, spec.width)
            if array is None:  # an empty (sparse) segment reads as zeros, as in tifffile
                out[ya - r0 : yb - r0, xa - c0 : xb - c0] = 0
                continue
            seg2d = array.reshape(array.shape[-3], array.shape[-2])
            tally.decoded += seg2d.nbytes
            tally.segments += 1
            out[ya - r0 : yb - r0, xa - c0 : xb - c0] = seg2d[ya - y : yb - y, xa - x : xb - x]


def block_reader(
    layout: TiffLayout, lead_shape: tuple[int, ...]
) -> Callable[[tuple[slice, ...]], BlockSpec]:
    """Return ``make_spec(slices)`` for :func:`zchunk.io._blocks.blocks_array`."""

    def make_spec(slices: tuple[slice, ...]) -> BlockSpec:
        lead = slices[:-2]
        if lead:
            grid = np.indices([s.stop - s.start for s in lead]).reshape(len(lead), -1)
            starts = np.array([s.start for s in lead])[:, None]
            planes = np.ravel_multi_index(tuple(grid + starts), lead_shape)
        else:  # a single (y, x) image
            planes = np.zeros(1, dtype=np.int64)
        shape = tuple(s.stop - s.start for s in slices)
        return layout.block_spec(np.asarray(planes, dtype=np.int64), slices[-2], slices[-1], shape)

    return make_spec


@dataclass(frozen=True, slots=True)
class RegionReader:
    """Read any region of a TIFF stack in one task (picklable: the layout, no open file).

    Filters use it to read a chunk together with its halo in the task that filters it, so no
    task holds a neighbour's block waiting for the halo exchange.
    """

    layout: TiffLayout
    lead_shape: tuple[int, ...]

    def __getitem__(self, slices: tuple[slice, ...]) -> np.ndarray:
        """Return the pixels of `slices` (one slice per axis, steps of 1)."""
        return read_block(block_reader(self.layout, self.lead_shape)(slices))

    def planes(self, slices: tuple[slice, ...]) -> Iterator[np.ndarray]:
        """Yield the (rows, columns) planes of `slices` one by one (see :func:`stream_planes`)."""
        return stream_planes(block_reader(self.layout, self.lead_shape)(slices))

    def bands(self, slices: tuple[slice, ...], rows: int) -> Iterator[np.ndarray]:
        """Yield `slices` in bands of `rows` rows, as (planes, rows, columns) arrays.

        `rows` is rounded up to :attr:`row_align` so that no stored segment is decoded twice
        (see :func:`stream_bands`).
        """
        make = block_reader(self.layout, self.lead_shape)
        ys = slices[-2]
        step = -(-max(rows, 1) // self.row_align) * self.row_align
        bands = [
            make((*slices[:-2], slice(a, min(a + step, ys.stop)), slices[-1]))
            for a in range(ys.start, ys.stop, step)
        ]
        return stream_bands(make(slices), bands)

    @property
    def row_align(self) -> int:
        """Band heights that decode no stored segment twice: the strip or tile height."""
        return self.layout.segment_shape[0] if self.layout.compressed or self.layout.tiled else 1
