"""O_DIRECT for the readers and the writers: the flag, and buffers aligned for it.

Through the page cache every byte read or written is copied by the kernel once more, and on
the 2-core test VM that copy is slow: ``dd`` wrote 4.4 GB through the cache in 15.0 s with
14.7 s of kernel CPU, and with O_DIRECT in 2.7 s with 0.6 s (``benchmarks/RESULTS.md``).
O_DIRECT needs file offsets, lengths and buffer addresses aligned to the device's block:
:data:`ALIGN` (a page) is a multiple of every block size.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ALIGN", "aligned_empty", "refused", "set_direct"]

#: Alignment of O_DIRECT offsets, lengths and buffers: a page, a multiple of every block size.
ALIGN = 4096


def set_direct(fds: Sequence[int]) -> bool:
    """Turn O_DIRECT on for every one of `fds`; False (and left as they were) if one refuses."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    done = []
    try:
        for fd in fds:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | direct)
            done.append((fd, flags))
    except OSError:  # EINVAL: this file system has no O_DIRECT
        for fd, flags in done:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return False
    return True


def refused(fd: int, exc: OSError) -> bool:
    """Whether `exc`, raised by a read or write of `fd`, is O_DIRECT refused; if so, turn it off.

    A file system can take the flag and still refuse the I/O (EINVAL: a device block larger
    than :data:`ALIGN`, some FUSE and network file systems). The same aligned buffer and
    offsets are then read or written through the page cache: the bytes are the same.
    """
    direct = getattr(os, "O_DIRECT", 0)
    if exc.errno != errno.EINVAL or not direct:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & direct:
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~direct)
    return True


def aligned_empty(nbytes: int) -> np.ndarray:
    """Return an uninitialised uint8 array of `nbytes` whose address is a multiple of ALIGN."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    first = (-raw.ctypes.data) % ALIGN
    return raw[first : first + nbytes]
