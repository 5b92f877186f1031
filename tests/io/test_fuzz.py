"""Damaged TIFFs: zchunk returns what tifffile.imread returns, or raises a ZChunkError.

Small files in several layouts get bytes flipped or overwritten in their header, their IFDs,
their tag values or their pixel data, or are truncated. For every damaged file zchunk must
either read exactly what ``tifffile.imread`` reads, or raise a :class:`ZChunkError`: never
another exception, never a hang, never fewer planes than the metadata declares.

What this cannot check: a flipped byte in the pixels of an uncompressed file is just another
pixel value. TIFF has no checksums, so no reader can notice it; for such files the test only
asks for the same values as tifffile (which reads the same wrong pixel). Compressed strips are
different: zlib and zstd frames carry checksums or structure that a decoder may reject, and
then zchunk must raise rather than return zeros.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import warnings
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zchunk
from zchunk.errors import ZChunkError
from zchunk.testing import blobs

LAYOUTS: dict[str, tuple[tuple[int, ...], str, dict[str, Any]]] = {
    "raw-contiguous": ((4, 20, 24), "uint16", {}),
    "raw-strips": ((3, 20, 24), "uint8", {"rowsperstrip": 6}),
    "raw-bigtiff-big-endian": ((3, 16, 20), "float32", {"bigtiff": True, "byteorder": ">"}),
    "zlib-strips": ((4, 20, 24), "uint16", {"compression": "zlib", "rowsperstrip": 6}),
    "zlib-predictor": (
        (3, 20, 24),
        "uint16",
        {"compression": "zlib", "predictor": True, "rowsperstrip": 8},
    ),
    "lzw": ((3, 20, 24), "uint8", {"compression": "lzw", "rowsperstrip": 10}),
    "packbits": ((3, 20, 24), "uint8", {"compression": "packbits", "rowsperstrip": 7}),
    "zstd-tiled": ((3, 32, 32), "uint16", {"compression": "zstd", "tile": (16, 16)}),
    "imagej-zlib": ((4, 16, 20), "uint16", {"imagej": True, "compression": "zlib"}),
    "imagej-raw": ((4, 16, 20), "float32", {"imagej": True}),
}


def _clean(layout: str) -> tuple[bytes, dict[str, list[tuple[int, int]]]]:
    """Bytes of an undamaged file and its regions: (offset, length) of each part."""
    shape, dtype, kw = LAYOUTS[layout]
    buf = io.BytesIO()
    tifffile.imwrite(buf, blobs(shape, dtype, seed=4), photometric="minisblack", **kw)
    data = buf.getvalue()
    regions: dict[str, list[tuple[int, int]]] = {"header": [(0, 16)], "ifd": [], "data": []}
    values = []
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        entry = 20 if tif.is_bigtiff else 12
        count = 8 if tif.is_bigtiff else 2
        for page in tif.pages:
            n = len(page.tags)
            regions["ifd"].append((page.offset, count + n * entry + count * 2))
            for tag in page.tags:
                if tag.valueoffset != tag.offset + count + 4 and tag.valuebytecount > 4:
                    values.append((tag.valueoffset, tag.valuebytecount))
            offsets, counts = page.dataoffsets, page.databytecounts
            regions["data"] += [(int(o), int(c)) for o, c in zip(offsets, counts, strict=True)]
    regions["tag values"] = values or [(0, 16)]
    return data, regions


CLEAN = {name: _clean(name) for name in LAYOUTS}
_names = itertools.count()


def _declared_planes(path: str) -> int | None:
    """Planes the file's own metadata (ImageJ ``images=``, tifffile's shape) declares."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with tifffile.TiffFile(path) as tif:
                desc = tif.pages.first.description
        except Exception:  # noqa: BLE001 - a damaged file may make tifffile raise anything
            return None
    if desc.startswith("ImageJ="):
        match = re.search(r"^images=(\d+)$", desc, re.MULTILINE)
        return int(match.group(1)) if match else None
    try:
        shape = json.loads(desc)["shape"]
    except (ValueError, KeyError, TypeError):
        return None
    try:
        return int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    except (TypeError, ValueError):
        return None


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes, str]:
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    data, regions = CLEAN[layout]
    how = draw(st.sampled_from(["flip", "overwrite", "truncate"]))
    if how == "truncate":
        size = draw(st.integers(0, len(data) - 1))
        return layout, data[:size], f"truncated to {size}"
    part = draw(st.sampled_from(["header", "ifd", "tag values", "data", "data"]))
    buf = bytearray(data)
    changes = []
    for _ in range(draw(st.integers(1, 4))):
        start, length = draw(st.sampled_from(regions[part]))
        offset = min(start + draw(st.integers(0, max(length - 1, 0))), len(buf) - 1)
        if how == "flip":
            buf[offset] ^= 1 << draw(st.integers(0, 7))
        else:
            buf[offset] = draw(st.integers(0, 255))
        changes.append(offset)
    return layout, bytes(buf), f"{how} {part} at {changes}"


def _oracle(path: str) -> np.ndarray | None:
    """What tifffile.imread returns for `path`, or None when it raises."""
    return _oracle_logged(path)[0]


def _oracle_logged(path: str) -> tuple[np.ndarray | None, int]:
    """What tifffile.imread returns for `path` (None when it raises), and how many warnings
    and errors tifffile logged while reading it."""
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append  # type: ignore[method-assign]
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return np.asarray(tifffile.imread(path)), len(logged)
            except Exception:  # noqa: BLE001 - a damaged file may make tifffile raise anything
                return None, len(logged)
    finally:
        logger.removeHandler(handler)


@pytest.mark.timeout(120)
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same 150 files on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=damaged())
def test_damaged_tiff_reads_as_tifffile_or_raises_zchunk_error(tmp_path_factory, case):
    layout, data, what = case
    folder = tmp_path_factory.getbasetemp() / "fuzz"
    folder.mkdir(exist_ok=True)
    path = str(folder / f"f{next(_names)}.tif")  # a new name: no cached decoder applies
    with open(path, "wb") as f:
        f.write(data)
    try:
        stack = zchunk.open(path, memory_limit="8KB")
        if stack.data.nbytes > 2**26:
            return  # a damaged header claiming a huge image: opened lazily, not read here
        got = stack.data.compute(scheduler="synchronous")
    except ZChunkError as exc:
        # refusing is right only for visible damage: a file tifffile reads as the undamaged
        # image without a single warning (a flipped bit in an unused byte) must be read
        expected, logged = _oracle_logged(path)
        shape, dtype, _ = LAYOUTS[layout]
        intact = blobs(shape, dtype, seed=4)
        if expected is not None and not logged and expected.shape == intact.shape:
            refused = f"{layout}, {what}: refused ({exc})"
            assert not np.array_equal(expected, intact), refused
        return
    except Exception as exc:  # noqa: BLE001 - anything but a ZChunkError is a bug
        pytest.fail(f"{layout}, {what}: {type(exc).__name__}: {exc}")
    expected = _oracle(path)
    assert expected is not None, f"{layout}, {what}: zchunk read a file tifffile cannot"
    assert got.shape == expected.shape, f"{layout}, {what}"
    assert got.dtype == expected.dtype.newbyteorder("="), f"{layout}, {what}"
    np.testing.assert_array_equal(got, expected, err_msg=f"{layout}, {what}")
    declared = _declared_planes(path)
    planes = int(np.prod(got.shape[:-2])) if got.ndim > 2 else 1
    assert declared is None or planes >= declared, f"{layout}, {what}"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_undamaged_layouts_read_as_tifffile(tmp_path, layout):
    data, _ = CLEAN[layout]
    path = tmp_path / "clean.tif"
    path.write_bytes(data)
    np.testing.assert_array_equal(zchunk.open(path).data.compute(), tifffile.imread(path))
