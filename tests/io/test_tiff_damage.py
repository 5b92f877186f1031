"""Hostile TIFF headers: one line saying the file is damaged and where, never Python's words.

Each case patches one IFD entry of a small file written by tifffile (its tag code, count or
value), which makes tifffile raise a ZeroDivisionError, a TypeError, a KeyError, an
AssertionError or "incompatible keyframe", or log a message naming its own classes.
"""

from __future__ import annotations

import io
import re
import struct
import time

import pytest
import tifffile
from hypothesis import HealthCheck, given, settings

import zchunk
from zchunk.cli import main
from zchunk.errors import ZChunkError
from zchunk.testing import blobs

from .test_fuzz import _names, damaged

#: what a message must not contain: exception class names, Python's wording, tifffile's reprs
PYTHON_WORDS = re.compile(
    r"\w(Error|Exception|Warning)\b|truth value|keyframe|Traceback|NoneType|not supported "
    r"between|argument must be|division|modulo|<tifffile|<\w+\.\w+>|raised"
)


def _clean(**kw):
    buf = io.BytesIO()
    data = blobs((3, 20, 24), "uint16", seed=1)
    tifffile.imwrite(buf, data, photometric="minisblack", **kw)
    return bytearray(buf.getvalue())


def _patch(data, page, code, *, newcode=None, count=None, value=None):
    """Overwrite fields of the IFD entry of tag `code` on `page` (classic little-endian TIFF)."""
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tif.pages.useframes = False
        offset = tif.pages[page].tags[code].offset
    if newcode is not None:
        struct.pack_into("<H", data, offset, newcode)
    if count is not None:
        struct.pack_into("<I", data, offset + 4, count)
    if value is not None:
        struct.pack_into("<I", data, offset + 8, value)
    return data


HOSTILE = {
    # tifffile: ZeroDivisionError in detect_series
    "zero width": (lambda: _patch(_clean(), 0, 256, value=0), "page 0"),
    "zero bits per sample": (lambda: _patch(_clean(), 0, 258, value=0), "page 0"),  # assert
    "no width tag": (lambda: _patch(_clean(), 0, 256, newcode=65000), "page 0"),
    "two widths": (lambda: _patch(_clean(), 0, 256, count=2, value=8), "page 0"),  # TypeError
    "two heights": (lambda: _patch(_clean(), 0, 257, count=2, value=8), "page 0"),
    "two samples counts": (lambda: _patch(_clean(), 0, 277, count=2, value=8), "page 0"),
    # tifffile: RuntimeError("incompatible keyframe")
    "page 1 wider": (lambda: _patch(_clean(), 1, 256, value=30), "page 1"),
    "page 1 strips": (lambda: _patch(_clean(rowsperstrip=6), 1, 273, count=2), "page 1"),
    "two compressions": (lambda: _patch(_clean(), 0, 259, count=2, value=8), "Compression"),
    "two predictors": (
        lambda: _patch(_clean(compression="zlib", predictor=True), 0, 317, count=2, value=8),
        "Predictor",
    ),
    "imagej two widths": (lambda: _patch(_clean(imagej=True), 0, 256, count=40), "page 0"),
    # logged by tifffile: "<tifffile.TiffTag 262 @58> raised ValueError(...)"
    "bad photometric": (lambda: _patch(_clean(), 0, 262, count=40, value=8), "tag 262"),
    "bad strip count": (lambda: _patch(_clean(rowsperstrip=6), 0, 273, count=40), "page 0"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_damaged_header_says_where_in_words(tmp_path, capsys, case):
    make, where = HOSTILE[case]
    path = tmp_path / "hostile.tif"
    path.write_bytes(bytes(make()))
    out = tmp_path / "max.tif"
    start = time.perf_counter()
    code = main(["project", str(path), "-m", "max", "-o", str(out), "--quiet"])
    took = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert str(path) in err
    assert "damaged" in err, err
    assert where in err, err
    assert not PYTHON_WORDS.search(err.replace(str(path), "FILE")), err
    assert not out.exists()
    assert took < 5


@pytest.mark.timeout(120)
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=damaged())
def test_random_damage_is_told_in_words(tmp_path, case):
    layout, data, what = case
    path = tmp_path / f"f{next(_names)}.tif"
    path.write_bytes(data)
    message = ""
    try:
        stack = zchunk.open(path, memory_limit="8KB")
        if stack.data.nbytes <= 2**26:
            stack.data.compute(scheduler="synchronous")
    except ZChunkError as exc:
        message = str(exc).replace(str(path), "FILE")
    assert not PYTHON_WORDS.search(message), f"{layout}, {what}: {message}"
