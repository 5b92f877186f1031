"""Parsing TIFF headers into a :class:`~zchunk.io._tiff_layout.TiffLayout` (runs once, in ``open()``).

A multi-page file or a sequence of single-page files: the pages (or files) checked for one shape,
dtype and layout, every plane's segment offsets and byte counts tabled (computed, not read, for
the contiguous pages of big ImageJ files), and damage that tifffile only logs turned into
:class:`~zchunk.errors.CorruptDataError`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from zchunk.errors import CorruptDataError, SourceNotFoundError, StackFormatError, ZChunkError
from zchunk.io._tiff_damage import describe, plain
from zchunk.io._tiff_layout import FileId, TiffLayout
from zchunk.io._tiff_open import _TiffLogCapture, about_description, open_tiff, strict

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["TiffInfo", "parse_tiff", "parse_tiff_files"]


def _page_signature(page: Any) -> tuple[Any, ...]:
    return (
        page.shape,
        page.dtype,
        page.compression,
        page.predictor,
        page.is_tiled,
        page.tilelength,
        page.tilewidth,
        page.rowsperstrip if not page.is_tiled else 0,
        page.planarconfig,
        page.fillorder,
        page.parent.byteorder,
    )


def _check_page(page: Any, path: str) -> None:
    if page.dtype is None:
        msg = (
            f"{path}: unsupported pixel type ({page.bitspersample}-bit, format {page.sampleformat})"
        )
        raise StackFormatError(msg)
    if page.samplesperpixel > 1 or page.imagedepth > 1:
        n = int(page.samplesperpixel)
        what = (
            "RGB"
            if int(page.photometric) in (2, 6) and n >= 3
            else f"{'grey' if int(page.photometric) in (0, 1) else 'samples'} with "
            f"{n - 1} extra sample(s), e.g. alpha"
        )
        msg = (
            f"{path}: pages with {n} samples per pixel ({what}) are not supported; "
            "split the samples into separate planes first"
            if n > 1
            else f"{path}: volumetric pages (image depth {page.imagedepth}) are not supported"
        )
        raise StackFormatError(msg)
    if np.dtype(page.dtype).kind not in "uif":
        msg = f"{path}: unsupported pixel type {page.dtype}"
        raise StackFormatError(msg)
    for name, value in (("Compression", page.compression), ("Predictor", page.predictor)):
        if not isinstance(value, int):  # a count damaged: tifffile gives a tuple
            msg = (
                f"{path} is damaged: the {name} tag of page {page.index} holds "
                f"{len(value)} values where it must hold one"
            )
            raise CorruptDataError(msg)
    try:
        tifffile.COMPRESSION(page.compression)
        tifffile.PREDICTOR(page.predictor)
        page.decode  # noqa: B018 - builds the decoder: fails here for codecs tifffile lacks
    except Exception as exc:  # tifffile raises ValueError, KeyError...
        why = str(exc) if isinstance(exc, ValueError) else "tifffile has no decoder for it"
        msg = (
            f"{path}: cannot decode its pages (compression {page.compression}, predictor "
            f"{page.predictor}): {why}"
        )
        raise StackFormatError(msg) from exc


def _segment_shape(page: Any) -> tuple[int, int]:
    if page.is_tiled:
        return (int(page.tilelength), int(page.tilewidth))
    return (min(int(page.rowsperstrip), int(page.imagelength)), int(page.imagewidth))


def _check_segments(page: Any, path: str, index: int = 0) -> None:
    """Raise CorruptDataError unless `page` has the strips or tiles its size needs."""
    sh, sw = _segment_shape(page)
    if sh <= 0 or sw <= 0:
        msg = f"{path}: page {index} declares strips or tiles of {sh} x {sw} pixels"
        raise CorruptDataError(msg)
    need = math.ceil(page.imagelength / sh) * (
        math.ceil(page.imagewidth / sw) if page.is_tiled else 1
    )
    have = len(page.dataoffsets)
    if have != need or len(page.databytecounts) != need:
        msg = (
            f"{path}: page {index} has {have} strip/tile offsets and "
            f"{len(page.databytecounts)} byte counts where its size needs {need}"
        )
        raise CorruptDataError(msg)


def _tables(pages: Sequence[Any], path: str) -> tuple[np.ndarray, np.ndarray]:
    nseg = len(pages[0].dataoffsets)
    offsets = np.empty((len(pages), nseg), dtype=np.int64)
    counts = np.empty((len(pages), nseg), dtype=np.int64)
    for i, page in enumerate(pages):
        if page is None or len(page.dataoffsets) != nseg or len(page.databytecounts) != nseg:
            msg = f"{path}: page {i} is missing or damaged"
            raise CorruptDataError(msg)
        offsets[i] = page.dataoffsets
        counts[i] = page.databytecounts
    return offsets, counts


def _check_stored_bytes(
    page: Any, counts: np.ndarray, path: str, offsets: np.ndarray | None = None
) -> None:
    """Raise CorruptDataError for segments that cannot hold their pixels.

    Uncompressed strips and tiles must store at least their pixels' bytes, as tifffile
    requires; a segment at offset 0 (the header) with bytes is damaged. Compressed segments
    are checked when decoded; empty ones (offset and count 0) read as zeros, as in tifffile.
    """
    if offsets is not None:
        bad = (offsets == 0) & (counts != 0)
        if bad.any():
            plane, seg = (int(i) for i in np.argwhere(bad)[0])
            msg = f"{path} is damaged: strip/tile {seg} of plane {plane} is at offset 0"
            raise CorruptDataError(msg)
    if page.compression != 1:
        return
    sh, sw = _segment_shape(page)
    itemsize = np.dtype(page.dtype).itemsize
    if page.is_tiled:
        need = np.full(counts.shape[1], sh * sw * itemsize, dtype=np.int64)
    else:
        rows = np.minimum(sh, int(page.imagelength) - np.arange(counts.shape[1]) * sh)
        need = rows.astype(np.int64) * int(page.imagewidth) * itemsize
    short = counts < need[None, :]
    if short.any():
        plane, seg = (int(i) for i in np.argwhere(short)[0])
        msg = (
            f"{path} is damaged: strip/tile {seg} of plane {plane} holds "
            f"{int(counts[plane, seg])} bytes where its pixels need {int(need[seg])}"
        )
        raise CorruptDataError(msg)


def _check_extent(layout: TiffLayout) -> None:
    ends = layout.offsets + layout.bytecounts
    for i, file in enumerate(layout.files):
        mine = ends[layout.plane_file == i]
        if mine.size and int(mine.max()) > file.size:
            plane = int(np.argmax((ends.max(axis=1) > file.size) & (layout.plane_file == i)))
            msg = (
                f"{file.path} is truncated: plane {plane} needs bytes up to "
                f"{int(mine.max())} but the file has {file.size}"
            )
            raise CorruptDataError(msg)


def _check_ome_files(tif: Any, path: str) -> None:
    """Raise SourceNotFoundError if a file the OME-XML puts planes in is missing.

    A multi-file OME-TIFF (Bio-Formats' ``%t``/``%z`` patterns, Micro-Manager's ``_1.ome.tif``
    parts) names the file of every plane in its ``TiffData/UUID FileName`` attributes;
    tifffile reads a missing file's planes as zeros, with only a log message.
    """
    names = set(re.findall(r'<UUID[^>]*?FileName="([^"]+)"', tif.ome_metadata or ""))
    folder = os.path.dirname(os.path.abspath(path))
    for name in sorted(names):
        if not os.path.isfile(os.path.join(folder, name)):
            msg = (
                f"{os.path.join(folder, name)} does not exist, but the OME-XML of {path} puts "
                "planes of its image there: a multi-file OME-TIFF needs all its files, "
                "side by side"
            )
            raise SourceNotFoundError(msg)


def _plane_files(pages: Sequence[Any], path: str) -> tuple[np.ndarray, tuple[FileId, ...]]:
    """Return the file of every page (index into the files, in order of first use).

    Pages of a multi-file OME-TIFF series live in the files its OME-XML names; tifffile's
    series resolves them. Every file must store its pages as the first file does.
    """
    names = [os.path.abspath(p.parent.filehandle.path) for p in pages]
    files = list(dict.fromkeys(names))
    if len(files) > 1:
        ref = _page_signature(pages[0].parent.pages.first)
        for page in pages:
            first = page.parent.pages.first
            if _page_signature(first) != ref:
                msg = (
                    f"{page.parent.filehandle.path} stores its planes unlike {path} (shape, "
                    "dtype or compression): the files of one OME-TIFF image must match"
                )
                raise StackFormatError(msg)
    index = {name: i for i, name in enumerate(files)}
    plane_file = np.array([index[n] for n in names], dtype=np.int32)
    return plane_file, tuple(FileId.of(f) for f in files)


def _jpeg_tables(pages: Sequence[Any], path: str) -> bytes | None:
    """Return the JPEGTables shared by every page (JPEG compression), or None."""
    if pages[0].compression not in (6, 7):
        return None
    tables = {p.jpegtables for p in pages}
    if len(tables) > 1:
        msg = (
            f"{path}: its JPEG-compressed pages use different JPEG tables, which zchunk does "
            "not read; convert it losslessly first (tiffcp -c zip IN OUT)"
        )
        raise StackFormatError(msg)
    table: bytes | None = tables.pop()
    return table


@dataclass(frozen=True, slots=True)
class TiffInfo:
    """A parsed TIFF source: layout, shape, axes (or None when unknown) and calibration."""

    layout: TiffLayout
    shape: tuple[int, ...]
    axes: str | None
    scale: dict[str, float]
    units: dict[str, str]
    channel_names: tuple[str, ...] = ()
    channel_colors: tuple[str, ...] = ()  # "RRGGBB" per channel, where the file says
    metadata: dict[str, Any] = field(default_factory=dict)
    file_axes: str | None = None  # a sequence: the axes of each file's own pages


def parse_tiff(path: str, *, sequence: bool = False) -> TiffInfo:
    """Parse the header of one (multi-page) TIFF file into a TiffInfo.

    A multi-file OME-TIFF is read whole from any of its files (every file must exist). With
    `sequence`, the file is one of a sequence of files: its own pages are the truth, and a
    description that declares the whole stack's planes (ImageMagick copies it into every
    file it splits a stack into) is not a sign of damage.
    """
    from zchunk.io import _metadata

    capture = _TiffLogCapture()
    logger = logging.getLogger("tifffile")
    logger.addHandler(capture)
    try:
        with open_tiff(path) as tif:
            fileid = FileId.of(path)
            files: tuple[FileId, ...] = (fileid,)
            plane_file = None
            jpegtables = None
            if tif.is_ome:
                _check_ome_files(tif, path)
            if not tif.series:
                msg = f"{path} holds no image"
                raise StackFormatError(msg)
            series = tif.series[0]
            page = series.keyframe
            _check_page(page, path)
            _check_segments(page, path)
            shape = tuple(int(n) for n in series.shape)
            nplanes = math.prod(shape[:-2])
            seg_shape = _segment_shape(page)
            if page.compression == 1 and not page.is_tiled and series.dataoffset is not None:
                # contiguous raw planes: no need to parse every IFD of a huge file
                plane_bytes = page.imagelength * page.imagewidth * np.dtype(page.dtype).itemsize
                offsets = series.dataoffset + plane_bytes * np.arange(nplanes, dtype=np.int64)
                offsets, counts = offsets[:, None], np.full((nplanes, 1), plane_bytes, np.int64)
                seg_shape = (int(page.imagelength), int(page.imagewidth))
                # the IFDs say how many bytes each strip holds: check what tifffile parsed
                stored = [page] if series.kind in ("imagej", "shaped") else list(series.pages)
                _check_stored_bytes(page, _tables(stored, path)[1], path)
            else:
                pages = list(series.pages)
                if len(pages) != nplanes:
                    msg = f"{path} is truncated or damaged: {len(pages)} pages for {nplanes} planes"
                    raise CorruptDataError(msg)
                offsets, counts = _tables(pages, path)
                _check_stored_bytes(page, counts, path, offsets)
                plane_file, files = _plane_files(pages, path)
                jpegtables = _jpeg_tables(pages, path)
            kind = "imagej" if tif.is_imagej else "ome" if tif.is_ome else series.kind or "generic"
            layout = TiffLayout(
                files=files,
                plane_file=np.zeros(nplanes, dtype=np.int32) if plane_file is None else plane_file,
                offsets=offsets,
                bytecounts=counts,
                height=int(page.imagelength),
                width=int(page.imagewidth),
                dtype=np.dtype(page.dtype).newbyteorder(tif.byteorder),
                compression=int(page.compression),
                predictor=int(page.predictor),
                segment_shape=seg_shape,
                tiled=bool(page.is_tiled),
                bigtiff=bool(tif.is_bigtiff),
                kind=kind,
                jpegtables=jpegtables,
            )
            meta = _metadata.from_tifffile(tif, series)
            declared = meta.pop("declared_planes", None)
    except ZChunkError as exc:
        damage = None if sequence else capture.damage()
        if damage is None or isinstance(exc, CorruptDataError):
            raise
        # e.g. "holds no image" because the first IFD cannot be read: say why
        msg = f"{path} is damaged: {plain(damage)}"
        raise CorruptDataError(msg) from exc
    except Exception as exc:  # tifffile parsing a damaged header can raise anything
        msg = f"{path} is damaged: {describe(exc)}"
        raise CorruptDataError(msg) from exc
    finally:
        logger.removeHandler(capture)
    if sequence:  # ImageJ's or tifffile's description of the whole stack, in one of its files
        declared = None
        capture.records = [r for r in capture.records if not about_description(r)]
    if declared is not None and declared > nplanes:
        msg = (
            f"{path} is truncated or damaged: its metadata declares {declared} planes, "
            f"{nplanes} are readable"
        )
        if nplanes == 1:
            msg += " (if it is one file of a sequence, open the folder or a glob of its files)"
        raise CorruptDataError(msg)
    damage = capture.damage()
    if damage is not None:
        msg = f"{path} is damaged: {plain(damage)}"
        raise CorruptDataError(msg)
    _check_extent(layout)
    return TiffInfo(
        layout=layout,
        shape=shape,
        axes=meta.pop("axes"),
        scale=meta.pop("scale"),
        units=meta.pop("units"),
        channel_names=tuple(meta.pop("channel_names", ())),
        channel_colors=tuple(meta.pop("channel_colors", ())),
        metadata=meta,
    )


def parse_tiff_files(paths: Sequence[str]) -> TiffInfo:
    """Parse many TIFF files holding equally shaped pages into one TiffInfo.

    Every file must have the same number of pages and the same page shape, dtype and
    encoding; the first that differs is named in the error. One page per file gives a (z, y, x)
    stack; k pages per file give (files, k, y, x).
    """
    first = parse_tiff(paths[0], sequence=True)
    if len(first.layout.files) > 1:  # a multi-file OME-TIFF: its own files make the stack
        mine = {f.path for f in first.layout.files}
        if mine == {os.path.abspath(p) for p in paths}:
            return first
        msg = (
            f"{paths[0]} is part of a multi-file OME-TIFF of {len(mine)} files, but "
            f"{len(paths)} files were given: open one file of the dataset, or give exactly its files"
        )
        raise StackFormatError(msg)
    ref = _reference_signature(paths[0])
    per_file = math.prod(first.shape[:-2])
    files = [first.layout.files[0]]
    offsets = [first.layout.offsets]
    counts = [first.layout.bytecounts]
    for path in paths[1:]:
        off, cnt = _parse_sequence_file(path, paths[0], per_file, ref, first.layout.jpegtables)
        files.append(FileId.of(path))
        offsets.append(off)
        counts.append(cnt)
    layout = first.layout
    merged = TiffLayout(
        files=tuple(files),
        plane_file=np.repeat(np.arange(len(files), dtype=np.int32), per_file),
        offsets=np.concatenate(offsets),
        bytecounts=np.concatenate(counts),
        height=layout.height,
        width=layout.width,
        dtype=layout.dtype,
        compression=layout.compression,
        predictor=layout.predictor,
        segment_shape=layout.segment_shape,
        tiled=layout.tiled,
        bigtiff=layout.bigtiff,
        kind="folder",
        jpegtables=layout.jpegtables,
    )
    _check_extent(merged)
    return TiffInfo(
        layout=merged,
        shape=(len(files), *first.shape),
        axes=None,
        scale=first.scale,
        units=first.units,
        channel_names=first.channel_names,
        channel_colors=first.channel_colors,
        metadata=first.metadata,
        file_axes=first.axes,
    )


def _parse_sequence_file(
    path: str, first: str, per_file: int, ref: tuple[Any, ...], jpegtables: bytes | None
) -> tuple[np.ndarray, np.ndarray]:
    """Check one more file of a sequence against the first; return its segment tables."""
    try:
        with strict(path), open_tiff(path) as tif:
            pages = list(tif.pages)
            if len(pages) != per_file or any(p is None for p in pages):
                msg = (
                    f"{path} has {len(pages)} page(s) where {first} has {per_file}: "
                    "every file of a sequence must have as many"
                )
                raise StackFormatError(msg)
            _check_page(pages[0], path)
            _check_segments(pages[0], path)
            sig = _page_signature(pages[0])
            if sig[:2] != ref[:2]:
                msg = (
                    f"{path} holds {sig[1]} images of shape {sig[0]}, unlike {first} "
                    f"({ref[1]}, {ref[0]}): every file of a sequence must match"
                )
                raise StackFormatError(msg)
            if sig != ref:
                msg = f"{path} is stored with another compression or layout than {first}"
                raise StackFormatError(msg)
            if _jpeg_tables(pages, path) != jpegtables:
                msg = f"{path} uses other JPEG tables than {first}: convert it losslessly first"
                raise StackFormatError(msg)
            off, cnt = _tables(pages, path)
            _check_stored_bytes(pages[0], cnt, path, off)
            return off, cnt
    except ZChunkError:
        raise
    except Exception as exc:  # a damaged header can make tifffile raise anything
        msg = f"{path} is damaged: {describe(exc)}"
        raise CorruptDataError(msg) from exc


def _reference_signature(path: str) -> tuple[Any, ...]:
    with strict(path), open_tiff(path) as tif:
        return _page_signature(tif.pages.first)
