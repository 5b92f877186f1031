"""The bytes a block write handed to a local zarr store, kept until its marker is made.

A block marker (:mod:`zchunk.sinks._markers`) holds the size and crc32 of the files that store
the block. They are taken from the bytes this process gave the store for those files, not read
back from disk: :class:`WrittenStore` wraps the array's store for the run's writes and keeps each
file's bytes (a reference: no copy) until :func:`take_written` digests them. On resume, the
marker is checked against the files as they are on disk, so a marker vouches for what was
computed and encoded, and a stored file that differs from it (a short write, a write from
another process, damage) is caught there. A file the store wrote by another route (a partial
write) has no kept bytes; its block is then read back from disk, as before.

Files of at least :data:`DIRECT_MIN_BYTES` (the shards of blocks) are written with O_DIRECT
(:func:`write_direct`): the disk reads them from the process's buffer, the kernel copies nothing
into its page cache (on the 2-core VM such copies cost 14.7 s of kernel CPU per 4.4 GB: a 32 GB
Gaussian to zarr spent 12% of its CPU there). Smaller files, and every file on a file system
without O_DIRECT, go through zarr's store, which writes them through the page cache; the store
then starts each one's write to disk at once (:func:`~zchunk.sinks._done.start_writeback`), so
that the disk writes of a run overlap its computation instead of all following it in the
commit's fsync.

Imported only for zarr outputs (zarr costs 0.3 s to import).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.storage import LocalStore, WrapperStore

from zchunk._direct import ALIGN, aligned_empty, refused, set_direct
from zchunk.sinks._atomic import store_temporary
from zchunk.sinks._done import start_writeback

if TYPE_CHECKING:
    from collections.abc import Sequence

    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer

__all__ = ["WrittenStore", "recording", "take_written"]


class WrittenStore(WrapperStore["Store"]):
    """A store that keeps the bytes of every file it writes until :meth:`take` is called.

    Each file it writes is handed to the disk at once (:func:`_hand_to_disk`).

    Picklable: a copy in another process (a dask worker) starts with nothing kept, and the
    task that writes a block also takes its bytes, in the same process.
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._kept: dict[str, Buffer] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the wrapped store only."""
        return {"_store": self._store}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore with nothing kept."""
        self._store = state["_store"]
        self._kept = {}

    @property
    def root(self) -> Any:
        """The wrapped local store's folder (for the files a block is stored in)."""
        return getattr(self._store, "root", None)

    async def set(self, key: str, value: Buffer) -> None:
        """Write `value` under `key`, keep it, and have it written to disk (see above)."""
        path = None if self.root is None else os.path.join(self.root, key)
        data = value.as_buffer_like()
        if path is None or memoryview(data).nbytes < DIRECT_MIN_BYTES or not DIRECT_WRITES:
            written = False
        else:
            written = await asyncio.to_thread(write_direct, path, data)
        if not written:
            await self._store.set(key, value)
        self._kept[key] = value
        if path is not None and not written:
            await asyncio.to_thread(_hand_to_disk, path)

    def set_sync(self, key: str, value: Buffer) -> None:
        """Write `value` under `key` (synchronously), then keep it."""
        super().set_sync(key, value)
        self._kept[key] = value

    async def delete(self, key: str) -> None:
        """Delete `key`, and what was kept of it."""
        self._kept.pop(key, None)
        await self._store.delete(key)

    def take(self, key: str) -> Buffer | None:
        """Return the bytes last written under `key` and forget them; None if none were kept."""
        return self._kept.pop(key, None)


#: Whether files of at least DIRECT_MIN_BYTES are written with O_DIRECT (a switch for tests).
DIRECT_WRITES = True

#: Smaller files go through the page cache: a write with O_DIRECT waits for the disk, and for
#: a small file that wait costs more than the copy it saves.
DIRECT_MIN_BYTES = 256 * 2**10


def write_direct(path: str, data: Any) -> bool:
    """Write bytes `data` as file `path` with O_DIRECT, atomically; False if O_DIRECT is refused.

    As zarr's local store does, the bytes go to a new file beside `path` that then replaces it,
    so a reader (or a resumed run) never finds a file half written. The bytes are copied into
    an aligned buffer padded to :data:`~zchunk._direct.ALIGN`, written, and the file cut back to
    its length. A refused O_DIRECT (a file system without it) leaves nothing behind; a
    write refused after the flag was taken (EINVAL) goes on through the page cache.
    """
    view = memoryview(data).cast("B")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = store_temporary(path)  # a killed run's is deleted on --resume
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    is_open = True
    try:
        direct = set_direct([fd])
        if direct:
            size = view.nbytes
            buffer = aligned_empty(-(-size // ALIGN) * ALIGN)
            buffer[:size] = np.frombuffer(view, np.uint8)
            buffer[size:] = 0
            done = 0
            while done < len(buffer):
                try:
                    done += os.pwrite(fd, buffer[done:], done)
                except OSError as exc:
                    if not refused(fd, exc):  # else: on through the page cache
                        raise
            os.ftruncate(fd, size)
        is_open = False  # never closed twice: the number may be another file's by then
        os.close(fd)
        if direct:
            os.replace(tmp, path)
        else:
            os.unlink(tmp)
    except BaseException:
        if is_open:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return direct


def _hand_to_disk(path: str) -> None:
    """Start writing file `path` to disk (:func:`~zchunk.sinks._done.start_writeback`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # deleted since (a discarded partial output): nothing to hand over
        return
    try:
        start_writeback(fd)
    finally:
        os.close(fd)


def recording(target: Any) -> Any:
    """Return zarr array `target` opened on a :class:`WrittenStore`, if it is on a local store.

    Any other target is returned as it is.
    """
    if not isinstance(target, zarr.Array) or not isinstance(target.store, LocalStore):
        return target
    return zarr.open_array(
        WrittenStore(target.store),
        path=target.path,
        mode="r+",
        zarr_format=target.metadata.zarr_format,
        config={"write_empty_chunks": True},  # as every zchunk output (create_aligned_array)
    )


def take_written(array: Any, keys: Sequence[str]) -> tuple[int, int] | None:
    """Return (bytes, crc32) of files `keys` end to end as written through `array`'s store.

    None if `array` is not on a :class:`WrittenStore`, or if a file's bytes were not kept (then
    read the files back). Taking forgets the bytes of every key.
    """
    store = getattr(array, "store", None)
    if not isinstance(store, WrittenStore):
        return None
    buffers = [store.take(key) for key in keys]
    if any(b is None for b in buffers):
        return None
    crc = nbytes = 0
    for buffer in buffers:
        assert buffer is not None  # for mypy: checked above
        view = memoryview(buffer.as_buffer_like())
        crc = zlib.crc32(view, crc)
        nbytes += view.nbytes
    return nbytes, crc
