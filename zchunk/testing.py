"""Helpers for tests and benchmarks: synthetic stacks and the files that hold them.

Never imported by library code.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from zchunk.sample import blobs, iter_blob_planes, write_tiff_sequence, write_tiff_stack

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "KILL_AFTER_MARKERS",
    "LATE_LOCK",
    "TIFF_LAYOUTS",
    "blobs",
    "imwrite",
    "iter_blob_planes",
    "takes_o_direct",
    "write_tiff_sequence",
    "write_tiff_stack",
]

#: ``tifffile.imwrite`` options for every TIFF layout zchunk reads differently.
TIFF_LAYOUTS: dict[str, dict[str, Any]] = {
    "contiguous": {},
    "bigtiff": {"bigtiff": True},
    "striped-raw": {"rowsperstrip": 7},
    "zlib": {"compression": "zlib", "rowsperstrip": 8},
    "zlib-predictor": {"compression": "zlib", "predictor": True, "rowsperstrip": 5},
    "zstd": {"compression": "zstd", "rowsperstrip": 16},
    "lzw": {"compression": "lzw", "rowsperstrip": 4},
    "single-strip-deflate": {"compression": "deflate", "rowsperstrip": 45},
    "tiled-raw": {"tile": (16, 16)},
    "tiled-zstd": {"compression": "zstd", "tile": (32, 16)},
    "big-endian": {"byteorder": ">"},
    "big-endian-zlib": {"byteorder": ">", "compression": "zlib", "rowsperstrip": 9},
}


def imwrite(path: str | os.PathLike[str], data: np.ndarray, **kwargs: Any) -> str:
    """Write `data` with ``tifffile.imwrite`` (grey pages by default); return the path."""
    import tifffile

    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, **kwargs)
    return os.fspath(path)


#: ``python -c LATE_LOCK ARGS...`` runs ``zchunk ARGS...`` stopped just before it takes its
#: output's lock: it creates the file ``$ZCHUNK_TEST_READY`` there and waits until the file
#: ``$ZCHUNK_TEST_GO`` exists. Tests use it to make a race between two runs deterministic.
LATE_LOCK = """
import contextlib, os, sys, time
from zchunk.sinks import _resume
lock = _resume.output_lock
@contextlib.contextmanager
def late_lock(final):
    open(os.environ["ZCHUNK_TEST_READY"], "w").close()
    while not os.path.exists(os.environ["ZCHUNK_TEST_GO"]):
        time.sleep(0.01)
    with lock(final):
        yield
_resume.output_lock = late_lock
from zchunk.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: ``python -c KILL_AFTER_MARKERS ARGS...`` runs ``zchunk ARGS...`` and kills it (SIGKILL, from
#: inside) right after it has recorded ``$ZCHUNK_TEST_KILL_AFTER`` finished blocks: a kill at a
#: known point, which a test polling the record folder from outside cannot promise (under load
#: the run may finish, and commit, before the test's kill lands).
KILL_AFTER_MARKERS = """
import os, signal, sys, threading
from zchunk.sinks import _resume
write, done, guard = _resume.write_marker, [0], threading.Lock()
def write_then_kill(*args, **kwargs):
    write(*args, **kwargs)
    with guard:
        done[0] += 1
        if done[0] >= int(os.environ["ZCHUNK_TEST_KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
_resume.write_marker = write_then_kill
from zchunk.cli import main
sys.exit(main(sys.argv[1:]))
"""


def takes_o_direct(folder: str | os.PathLike[str]) -> bool:
    """Whether files in `folder` can be opened with O_DIRECT (tmpfs and some mounts refuse)."""
    from zchunk._direct import set_direct

    probe = os.path.join(folder, ".o_direct_probe")
    with open(probe, "wb"):
        pass
    fd = os.open(probe, os.O_RDONLY)
    try:
        return set_direct([fd])
    finally:
        os.close(fd)
        os.unlink(probe)
