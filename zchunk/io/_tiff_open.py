"""Opening a TIFF file strictly: tifffile's header errors and logged damage as zchunk errors.

tifffile reports many damaged files by logging, not raising; :func:`strict` turns such a log
record into :class:`CorruptDataError` when it can mean wrong pixels. That is decided by where
tifffile logged, not by the wording: every tifffile function that logs has a rule here (decoding,
segment tables, the IFD chain and series detection refuse; metadata parsers do not; a message
about one tag refuses when the tag locates, encodes or shapes the pixels). Both the header parser (:mod:`zchunk.io._tiff_parse`) and
the block reader (:mod:`zchunk.io._tiff`) open files through here, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import threading
from typing import TYPE_CHECKING

import tifffile

from zchunk.errors import CorruptDataError, StackFormatError
from zchunk.io._tiff_damage import describe, plain

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["about_description", "open_tiff", "refuses", "strict"]


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


class _Rule(enum.Enum):
    """What a tifffile log record can mean, by the tifffile function that logged it."""

    PIXELS = "pixels"  # the pixels may be wrong, missing or misplaced, or their shape unknown
    METADATA = "metadata"  # metadata zchunk does not read, or can do without
    TAG = "tag"  # one tag's value is lost, replaced or truncated: depends on the tag
    TAG_KEPT = "tag kept"  # one tag's value is kept as stored, only not named: depends on the tag


#: The rule of every function of tifffile (2026.11) that logs a warning or an error, by the
#: function's name or, when the message names the function that failed (``<tifffile.read_uic1tag>``,
#: ``<TiffTag.fromfile>``), by that name. tests/io/test_tiff_open.py fails when the installed
#: tifffile logs from a function missing here, so that an upgrade cannot change what is refused.
_RULES: dict[str, _Rule] = {
    # decoding, the segment tables, the IFD chain: the pixels themselves
    "decode": _Rule.PIXELS,  # a predictor ignored, Sony raw left packed
    "asarray": _Rule.PIXELS,  # tifffile's own reshape of decoded pixels failed
    "read_segments": _Rule.PIXELS,  # fewer strips/tiles read than asked
    "_seek": _Rule.PIXELS,  # the IFD chain: a page's tag directory is unreadable or circular
    "_load_virtual_frames": _Rule.PIXELS,
    "_ndpi_load_pages": _Rule.PIXELS,
    "ndpi_jpeg_tile": _Rule.PIXELS,  # NDPI tile geometry
    "_lsm_fix_strip_offsets": _Rule.PIXELS,  # an LSM file written incompletely
    "_fix_lsm_bitspersample": _Rule.PIXELS,  # a guessed sample size
    "reorient": _Rule.PIXELS,  # an orientation tifffile could not apply
    # series detection: which pages form the image and its shape; a description declaring more
    # planes than stored is how a truncated file shows (and what ImageJ's check catches);
    # "append" and "detect_series" are nested in series_shaped, the last two say where the
    # pages of MMStack and NDTiff series are
    **dict.fromkeys(
        """series_generic series_geotiff series_ome series_imagej series_eer series_scanimage
        series_lsm series_mmstack series_ndtiff series_avs series_trestle series_svs series_huron
        series_bif series_philips series_indica append detect_series
        read_micromanager_metadata read_ndtiff_index""".split(),  # noqa: SIM905
        _Rule.PIXELS,
    ),
    # parsers of metadata zchunk does not read (or reads and can do without: the resolution,
    # ImageJ's IJMetadata tag with its ranges, LUTs and labels), of private tags (read_bytes ...
    # read_colormap) and of the EXIF, GPS, Interoperability and Dectris sub-directories
    # (read_tags); none of them touches the pixels. TiffWriter.write never logs while reading.
    **dict.fromkeys(
        """get_resolution imagej_metadata stk_metadata fluoview_metadata read_uic1tag read_uic_tag
        eer_tags nuvu_tags andor_tags epics_tags ndpi_tags geotiff_tags read_lsm_timestamps
        read_lsm_channelcolors read_lsm_lookuptable read_lsm_scaninfo read_sis_ini
        olympus_ini_metadata read_tvips_header scanimage_artist_metadata
        astrotiff_description_metadata read_bytes read_utf8 read_json read_colormap read_tags
        write""".split(),  # noqa: SIM905
        _Rule.METADATA,
    ),
    # one tag of a page's directory; the named tag decides
    "fromfile": _Rule.TAG,  # an invalid data type or value offset: the tag is dropped
    "_read_value": _Rule.TAG,  # a value read short, or raw after its reader failed
    "_process_value": _Rule.TAG_KEPT,  # invalid ASCII kept as bytes, an unknown enum as an int
    # TiffFile, TiffPages, TiffPage and TiffFrame construction: a page without strip offsets or
    # byte counts, a wrong number of them, no pages (no tag named: refused); an invalid
    # NewSubfileType or GDAL_NODATA (a named tag that is not a pixel tag: replaced, accepted)
    "__init__": _Rule.TAG,
}

#: Tags that say where a page's pixels are, how they are encoded, or the page's shape.
_PIXEL_TAGS = frozenset(
    tifffile.TIFF.TAGS[name]
    for name in """ImageWidth ImageLength BitsPerSample Compression PhotometricInterpretation
    FillOrder StripOffsets SamplesPerPixel RowsPerStrip StripByteCounts PlanarConfiguration
    T4Options T6Options Predictor TileWidth TileLength TileOffsets TileByteCounts SubIFDs
    ExtraSamples SampleFormat JPEGTables JPEGInterchangeFormat JPEGInterchangeFormatLength
    YCbCrSubSampling ImageDepth TileDepth""".split()  # noqa: SIM905
)
#: Tags whose loss also changes the image's shape: ImageJ's, OME's and tifffile's own
#: descriptions declare the axes and how many planes there are.
_SHAPE_TAGS = _PIXEL_TAGS | {tifffile.TIFF.TAGS["ImageDescription"]}

#: an object's repr (it may hold a file name): <tifffile.TiffPage 0 @8>, <tifffile.TiffFile 'a.tif'>
_OBJECT = re.compile(r"<tifffile\.\w+ [^<>]*>")
_FUNCTION = re.compile(
    r"<(?:tifffile\.)?(?:\w+\.)?(\w+)>"
)  # <tifffile.read_tags>, <TiffTag.fromfile>
_EXCEPTION = re.compile(r"\b[A-Za-z_]\w*\(")  # where an exception's repr starts: ValueError(...)
_TAG_CODE = re.compile(r"<(?:tifffile\.)?TiffTag (\d+)\b[^<>@]*@|\btag #(\d+)")
_ATTRIBUTES = {name: code for code, name in tifffile.TIFF.TAG_ATTRIBUTES.items()}


def _own_words(message: str) -> str:
    """Return a tifffile log message in its own words: no object reprs, no exception."""
    text = _OBJECT.sub(" ", message)
    match = _EXCEPTION.search(text)
    return text[: match.start()] if match else text


def origin(func_name: str, message: str) -> str:
    """Return the tifffile function a message is about: the one it names, else the logging one.

    Examples
    --------
    >>> origin("__init__", "<tifffile.TiffPage 0 @8> <tifffile.read_uic1tag> raised KeyError(1)")
    'read_uic1tag'
    >>> origin("_process_value", "<tifffile.TiffTag 270 @70> coercing invalid ASCII to bytes")
    '_process_value'
    """
    match = _FUNCTION.search(_own_words(message))
    return match.group(1) if match else func_name


def named_tags(message: str) -> set[int]:
    """Codes of the tags a tifffile log message names (by number, name or page attribute).

    Numbers are taken from the whole message (an exception can carry the tag that failed);
    names and attributes only from tifffile's own words, not from what an exception said.

    Examples
    --------
    >>> sorted(named_tags("<tifffile.TiffTag 296 @154> raised ValueError('7 is not valid')"))
    [296]
    >>> sorted(named_tags("<tifffile.TiffPage 0 @8> parsing GDAL_NODATA tag raised ValueError"))
    [42113]
    >>> sorted(named_tags("<tifffile.TiffPage 0 @8> invalid self.subfiletype='IDEAS'"))
    [254]
    """
    codes = {int(a or b) for a, b in _TAG_CODE.findall(message)}
    words = _own_words(message)
    for word in re.findall(r"\w+", words):
        code = None if word.isdigit() else tifffile.TIFF.TAGS.get(word)
        if isinstance(code, int):
            codes.add(code)
    codes.update(_ATTRIBUTES[a] for a in re.findall(r"\bself\.(\w+)=", words) if a in _ATTRIBUTES)
    return codes


def refuses(func_name: str, message: str) -> bool:
    """Whether a tifffile log message, logged by `func_name`, means the file must be refused.

    Raises
    ------
    KeyError
        If `func_name` (or the function the message names) has no rule: a tifffile newer than
        the one the rules were written for (the test enumerating tifffile's log calls fails first).
    """
    rule = _RULES[origin(func_name, message)]
    if rule is _Rule.PIXELS or rule is _Rule.METADATA:
        return rule is _Rule.PIXELS
    tags = named_tags(message)
    if not tags:
        return True  # what is wrong cannot be told: never guess that it is harmless
    return bool(tags & (_PIXEL_TAGS if rule is _Rule.TAG_KEPT else _SHAPE_TAGS))


#: The functions fitting ImageJ's and tifffile's descriptions (axes, number of planes) to the
#: pages: in one file of a sequence, a description of the whole stack is expected to misfit.
_DESCRIPTION_FIT = frozenset({"series_imagej", "append", "detect_series"})


def about_description(record: logging.LogRecord) -> bool:
    """Whether a tifffile log record says the file's description does not fit its pages."""
    return origin(record.funcName or "", record.getMessage()) in _DESCRIPTION_FIT


def _is_damage(record: logging.LogRecord) -> bool:
    """Whether a tifffile log record signals a damaged file; see :func:`refuses`."""
    try:
        return refuses(record.funcName or "", record.getMessage())
    except KeyError:  # a function of a newer tifffile: refuse rather than guess
        return True
