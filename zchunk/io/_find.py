"""Where the inputs of ``zchunk.open`` are: a file, a folder, a glob or a list of files."""

from __future__ import annotations

import errno
import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tifffile import natural_sorted

from zchunk._partial import partial_path
from zchunk.errors import SourceNotFoundError, StackFormatError
from zchunk.io._readers import READERS, Reader

if TYPE_CHECKING:
    from zchunk._types import SourceLike

__all__ = ["find_inputs"]


def _not_a_file(path: str) -> str:
    """Say what `path` is, when it is not a file or folder to read.

    Examples
    --------
    >>> _not_a_file("/no/such.tif")
    '/no/such.tif does not exist'
    """
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a loop of symbolic links"
        if os.path.islink(path):
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
        return f"{path} does not exist"
    if stat.S_ISFIFO(mode):
        kind = "a named pipe (FIFO)"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "not a regular file"
    target = f" (a symbolic link to {os.path.realpath(path)})" if os.path.islink(path) else ""
    return f"{path} is {kind}{target}, not an image file"


def _sequence_reader(paths: list[str]) -> Reader:
    """Return the reader of a sequence of files: the first whose suffixes match (else TIFF's)."""
    for p in paths:
        for reader in READERS:
            if reader.claims(p):
                msg = f"{p} is a {reader.name} store: open it on its own"
                raise StackFormatError(msg)
    lowered = [p.lower() for p in paths]
    for reader in READERS:
        if reader.suffixes and all(p.endswith(reader.suffixes) for p in lowered):
            return reader
    return READERS[-1]


def find_inputs(source: SourceLike) -> tuple[Reader, str, list[str]]:
    """Return the reader, the kind (``"file"``, ``"files"``, ``"folder"``) and the paths.

    Folders and globs are natural-sorted (``z2`` before ``z10``), hidden files skipped.
    """
    if isinstance(source, (list, tuple)):
        paths = [os.fspath(p) for p in source]
        if not paths:
            msg = "the list of files is empty"
            raise SourceNotFoundError(msg)
        for p in paths:
            if not os.path.isfile(p):
                raise SourceNotFoundError(_not_a_file(p))
        return _sequence_reader(paths), "files", paths
    path = os.fspath(source)  # type: ignore[arg-type]
    if os.path.isdir(path):
        for reader in READERS:
            if reader.claims(path):
                return reader, "folder", [path]
        suffixes = tuple(s for r in READERS for s in r.suffixes)
        names = [n for n in os.listdir(path) if n.lower().endswith(suffixes)]
        names = [n for n in names if not n.startswith(".")]
        if not names:
            msg = f"{path} is a folder without TIFF files (.tif, .tiff)"
            raise SourceNotFoundError(msg)
        paths = natural_sorted(os.path.join(path, n) for n in names)
        return _sequence_reader(paths), "files", paths
    if os.path.isfile(path):
        lowered = path.lower()
        by_suffix = (r for r in READERS if r.suffixes and lowered.endswith(r.suffixes))
        return next(by_suffix, READERS[-1]), "file", [path]
    if glob.has_magic(path):
        matches = natural_sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not matches:
            msg = f"no file matches {path}"
            raise SourceNotFoundError(msg)
        return _sequence_reader(matches), "files", matches
    msg = _not_a_file(path)
    if os.path.lexists(partial_path(Path(os.path.abspath(path)))):
        msg += (
            f" (an interrupted run left {partial_path(Path(path)).name} next to it: "
            "run it again with --resume / resume=True to finish it)"
        )
    raise SourceNotFoundError(msg)
