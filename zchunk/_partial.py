"""Names of the partial outputs of interrupted runs, shared by the readers and the writers.

A resumable output is written under ``.<name>.zchunk-partial`` next to its final name (a folder
for zarr, OME-Zarr and the scratch zarr of a compressed TIFF; a file for an uncompressed TIFF)
and renamed onto the final name when complete. Its record (the settings and one marker per
finished block) lives in ``.zchunk-record`` inside a partial folder, or next to a partial file as
``.<name>.zchunk-partial.zchunk-record``. No zchunk imports: :mod:`zchunk.io` and
:mod:`zchunk.sinks` both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PARTIAL_SUFFIX", "RECORD_NAME", "incomplete_reason", "partial_path", "record_path"]

#: Suffix of the name of a partial output (after a leading dot and the final name).
PARTIAL_SUFFIX = ".zchunk-partial"

#: Name of the record folder inside a partial folder, or suffix of it next to a partial file.
RECORD_NAME = ".zchunk-record"


def partial_path(final: Path) -> Path:
    """Return where the partial output of `final` is written: ``.<name>.zchunk-partial``.

    Examples
    --------
    >>> partial_path(Path("results/out.zarr")).as_posix()
    'results/.out.zarr.zchunk-partial'
    """
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


def record_path(partial: Path, *, folder: bool) -> Path:
    """Return the record folder of `partial`: inside it for a folder, next to it for a file.

    Examples
    --------
    >>> record_path(Path(".a.zarr.zchunk-partial"), folder=True).as_posix()
    '.a.zarr.zchunk-partial/.zchunk-record'
    >>> record_path(Path(".a.tif.zchunk-partial"), folder=False).as_posix()
    '.a.tif.zchunk-partial.zchunk-record'
    """
    if folder:
        return partial / RECORD_NAME
    return partial.with_name(partial.name + RECORD_NAME)


def incomplete_reason(path: str) -> str | None:
    """Say why `path` (or the zarr store holding it) is an incomplete zchunk output, else None.

    A path is incomplete when its name, or the name of one of its two parent folders (an
    OME-Zarr level inside a partial group), ends with ``.zchunk-partial``, or when it is a folder
    holding a ``.zchunk-record``.
    """
    p = Path(os.path.abspath(path))
    for candidate in (p, p.parent, p.parent.parent):
        if candidate.name.endswith(PARTIAL_SUFFIX):
            return f"{candidate} is the partial output of an interrupted zchunk run"
        if (candidate / RECORD_NAME).is_dir():
            return f"{candidate} is an incomplete zchunk output (it holds {RECORD_NAME})"
    return None
