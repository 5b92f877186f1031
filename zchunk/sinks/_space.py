"""Free disk space, checked before anything is written (an output, or all a run writes).

A run is refused up front, with exit 2 and nothing written, when a file system has less free
space than its outputs and scratch arrays need (their uncompressed size: an upper bound for
compressed data); a disk that fills up anyway while writing is a :class:`DiskSpaceError` too,
and the partial output is kept to resume (see :mod:`zchunk.sinks._resume`).
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import TYPE_CHECKING

from zchunk.budget import format_bytes
from zchunk.errors import DiskSpaceError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = ["check_free_space", "check_run_space", "disk_space_error"]


def existing_folder(path: Path) -> Path:
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_free_space(final: Path, nbytes: int, *, compressed: bool, what: str = "") -> None:
    """Raise DiskSpaceError if the folder of `final` has less than `nbytes` free.

    Parameters
    ----------
    final : Path
        The output; its (nearest existing) folder is checked.
    nbytes : int
        Bytes the output needs: its uncompressed size (an upper bound, in practice, for
        compressed output, which the message says).
    compressed : bool
        Whether the output is compressed, for the message.
    what : str, optional
        What needs the space, for the message (default: `final`).

    Raises
    ------
    DiskSpaceError
        If ``shutil.disk_usage`` reports less free space than `nbytes`.
    """
    folder = existing_folder(final.parent)
    free = shutil.disk_usage(folder).free
    if nbytes <= free:
        return
    size = "its uncompressed size; compressed data usually take less" if compressed else "raw"
    msg = (
        f"not enough free disk space for {what or repr(os.fspath(final))}: it needs about "
        f"{format_bytes(nbytes)} ({size}) but {os.fspath(folder)!r} has "
        f"{format_bytes(free)} free; free some space or write elsewhere"
    )
    raise disk_space_error(msg)


def disk_space_error(msg: str) -> DiskSpaceError:
    err = DiskSpaceError(msg)
    err.errno = errno.ENOSPC  # str(err) stays `msg`
    return err


def check_run_space(needs: Sequence[tuple[Path, int]]) -> None:
    """Raise DiskSpaceError unless each file system has room for all it must hold.

    `needs` lists (output, bytes) for everything a run writes, scratch included; the bytes
    are summed per file system before comparing with its free space, once, up front.
    """
    total: dict[int, tuple[Path, int]] = {}
    for final, nbytes in needs:
        folder = existing_folder(final.parent)
        dev = os.stat(folder).st_dev
        first, sum_ = total.get(dev, (final, 0))
        total[dev] = (first, sum_ + nbytes)
    for final, nbytes in total.values():
        check_free_space(final, nbytes, compressed=True, what="this run's outputs and scratch")
