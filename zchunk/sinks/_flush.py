"""Early write-back: each finished block's files are flushed to disk while later blocks compute.

The commit flushes the whole output to disk (``fsync``, :func:`zchunk.sinks._done.sync_tree`)
before its record vouches for it. Left to the kernel, an output smaller than the dirty-page
threshold (10 % of memory by default) is not written back before that ``fsync``, so the run
ends with a wait for the whole output to reach the disk, with nothing left to overlap it. So
the files of every stored block are handed to one background thread per process that fsyncs
them, in the order written, while the next blocks are computed; the commit's ``fsync`` then
finds them clean. This is an optimisation only: the commit still flushes every file and
folder itself, and a file that is gone (an abandoned output) is skipped.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["flush_soon", "wait_flushed"]

_LOCK = threading.Lock()
_QUEUE: queue.SimpleQueue[str | threading.Event] = queue.SimpleQueue()
_THREAD: threading.Thread | None = None


def _fsync(path: str) -> None:
    with contextlib.suppress(OSError):  # gone (abandoned output), or not flushable here
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _run() -> None:
    while True:
        item = _QUEUE.get()
        if isinstance(item, threading.Event):
            item.set()
        else:
            _fsync(item)


def _reset() -> None:  # in a forked child, the parent's thread does not exist
    global _LOCK, _QUEUE, _THREAD
    _LOCK = threading.Lock()  # another thread of the parent may have held it
    _QUEUE = queue.SimpleQueue()
    _THREAD = None


os.register_at_fork(after_in_child=_reset)


def flush_soon(paths: Iterable[str]) -> None:
    """Have files `paths` flushed to disk (fsync) by this process's background thread.

    A daemon thread: it never holds up the end of the process (the commit flushes anyway).
    """
    global _THREAD
    with _LOCK:
        if _THREAD is None:
            _THREAD = threading.Thread(target=_run, name="zchunk-flush", daemon=True)
            _THREAD.start()
    for path in paths:
        _QUEUE.put(path)


def wait_flushed(timeout: float | None = None) -> bool:
    """Wait until every file handed to :func:`flush_soon` so far is flushed; False on timeout."""
    with _LOCK:
        if _THREAD is None:
            return True
    done = threading.Event()
    _QUEUE.put(done)
    return done.wait(timeout)
