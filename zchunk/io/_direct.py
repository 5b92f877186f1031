"""Cold planes read with O_DIRECT by a reader thread, past the page cache.

A stream of planes (:func:`zchunk.io._tiff.stream_planes`) of an uncompressed file that is not
in the page cache spends much of its kernel time copying: each ``pread`` copies the pages the
disk just filled from the page cache into the buffer, with the kernel's own memory traffic on
top of the filter's. On the 2-core test VM a Gaussian of a 32 GB stack to zarr spent 66 of its
171 CPU-seconds in the kernel, a quarter of all samples in ``_copy_to_iter`` alone
(``perf record``); the same run reading its planes with O_DIRECT spent 38 s there
(``benchmarks/RESULTS.md``). With O_DIRECT the disk writes straight into the buffer, but a read
waits for the disk (no readahead), so a reader thread reads the next planes into a ring of
aligned buffers while the consumer works on the current one. Whole blocks (a chunk, a median's
block of bands) are read by the same reader and copied into place: their plane ranges are
short (180 KiB for a 32 GB median's chunk), and through the page cache a 32 GB median spent 71 s
in the kernel against 21 s of its own, with O_DIRECT 15 s.

O_DIRECT needs the file offset, the length and the buffer aligned (:mod:`zchunk._direct`): a
plane's byte range is read from the aligned offset below it to the aligned end above it (at
most a page more on each side), and the plane is a view into the buffer. Files on file systems
without O_DIRECT (tmpfs, some network mounts) are read as before, and so is the rest of a
file whose file system takes the flag but then refuses a read.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import TYPE_CHECKING

from zchunk._direct import ALIGN, aligned_empty, refused
from zchunk.errors import CorruptDataError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import numpy as np

__all__ = ["DirectRanges"]


class DirectRanges:
    """Read one byte range per item, in order, with O_DIRECT, `depth` items ahead of the consumer.

    Iterating yields each range as a uint8 array: a view into a reused aligned buffer, valid
    until the next one is asked for. A read error or a file that ends early is raised to the
    consumer at that item; closing the iterator early stops the reader thread.
    """

    def __init__(
        self,
        fds: Sequence[int],
        ranges: Sequence[tuple[int, int]],
        paths: Sequence[str],
        depth: int,
    ) -> None:
        self.fds = fds
        self.ranges = ranges
        self.paths = paths
        span = max((_span(o, n)[1] - _span(o, n)[0] for o, n in ranges), default=0)
        self.slot = span
        self.depth = max(1, min(depth, len(ranges)))
        self.buffer = aligned_empty(self.depth * span)

    def __iter__(self) -> Iterator[np.ndarray]:
        free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        ready: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()
        for s in range(self.depth):
            free.put(s)
        reader = threading.Thread(
            target=self._read_all, args=(free, ready), name="zchunk-direct-read", daemon=True
        )
        reader.start()
        held = None
        try:
            for offset, nbytes in self.ranges:
                if held is not None:
                    free.put(held)
                    held = None
                slot, error = ready.get()
                if error is not None:
                    raise error
                held = slot
                start = slot * self.slot + offset - _span(offset, nbytes)[0]
                yield self.buffer[start : start + nbytes]
        finally:
            free.put(None)  # a reader waiting for a free slot stops
            reader.join()

    def _read_all(
        self,
        free: queue.SimpleQueue[int | None],
        ready: queue.SimpleQueue[tuple[int, BaseException | None]],
    ) -> None:
        for fd, (offset, nbytes), path in zip(self.fds, self.ranges, self.paths, strict=True):
            slot = free.get()
            if slot is None:
                return
            try:
                self._read(fd, offset, nbytes, path, slot)
            except BaseException as exc:  # noqa: BLE001 - any failure: the consumer must not wait
                # for a range that never comes; it raises this instead
                ready.put((slot, exc))
                return
            ready.put((slot, None))

    def _read(self, fd: int, offset: int, nbytes: int, path: str, slot: int) -> None:
        start, stop = _span(offset, nbytes)
        need = offset + nbytes - start
        view = memoryview(self.buffer)[slot * self.slot : slot * self.slot + stop - start]
        done = 0
        while done < need:
            try:
                n = os.preadv(fd, [view[done:]], start + done)
            except OSError as exc:
                if refused(fd, exc):  # read on through the page cache
                    continue
                raise
            if n == 0:
                got = max(0, done - (offset - start))
                msg = (
                    f"{path} is truncated: expected {nbytes} bytes at offset {offset}, "
                    f"the file ends after {got}"
                )
                raise CorruptDataError(msg)
            done += n


def _span(offset: int, nbytes: int) -> tuple[int, int]:
    """Return the aligned byte range that holds ``offset .. offset + nbytes``."""
    start = offset - offset % ALIGN
    stop = -(-(offset + nbytes) // ALIGN) * ALIGN
    return start, stop
