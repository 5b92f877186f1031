"""Opening a TIFF file strictly: tifffile's header errors and logged damage as zchunk errors.

tifffile reports many damaged files by logging, not raising; :func:`strict` turns such a log
record into :class:`CorruptDataError`. Both the header parser (:mod:`zchunk.io._tiff_parse`) and
the block reader (:mod:`zchunk.io._tiff`) open files through here, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import tifffile

from zchunk.errors import CorruptDataError, StackFormatError
from zchunk.io._tiff_damage import describe, plain

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["open_tiff", "strict"]


class _TiffLogCapture(logging.Handler):
    """Collect tifffile's log records: it reports damaged files there, not by raising.

    Only records of the thread that installed it are kept, so that a file parsed in one
    thread is not blamed for a message about another file.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.records.append(record)

    @property
    def messages(self) -> list[str]:
        """The messages collected so far."""
        return [r.getMessage() for r in self.records]

    def damage(self) -> str | None:
        """Return the first message that signals a damaged file, or None."""
        return next((r.getMessage() for r in self.records if _is_damage(r)), None)


@contextlib.contextmanager
def strict(path: str) -> Iterator[_TiffLogCapture]:
    """Raise CorruptDataError after the block if tifffile logged damage of `path` in it."""
    capture = _TiffLogCapture()
    logger = logging.getLogger("tifffile")
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
    damage = capture.damage()
    if damage is not None:
        msg = f"{path} is damaged: {plain(damage)}"
        raise CorruptDataError(msg)


def open_tiff(path: str) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except tifffile.TiffFileError as exc:
        msg = f"{path} is not a readable TIFF file ({describe(exc)})"
        raise StackFormatError(msg) from exc
    except Exception as exc:  # a damaged header can make tifffile raise anything
        msg = f"{path} is not a readable TIFF file: it is damaged ({describe(exc)})"
        raise CorruptDataError(msg) from exc


#: tifffile warnings about metadata zchunk does not use, or that do not change the pixels.
_BENIGN = (
    "coercing invalid ascii",
    "<get_resolution>",
    "gdal_nodata",
    "geokey",
    "geotiff",
    "stk datetime",
    "fluoview",
    "nuvu",
    "andor",
    "epics",
    "ndpi_tags",
    "eer_xml",
    "invalid self.subfiletype",
    "not writing extratag",
)


def _is_damage(record: logging.LogRecord) -> bool:
    """Whether a tifffile log record signals a damaged file.

    Every error does; a warning does unless it is about metadata zchunk does not read.
    """
    if record.levelno >= logging.ERROR:
        return True
    message = record.getMessage().lower()
    return not any(b in message for b in _BENIGN)
