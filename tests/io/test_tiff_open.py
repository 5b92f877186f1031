"""Which tifffile log messages refuse a file: every logging site of the installed tifffile.

tifffile reports damage by logging; zchunk decides by the function that logged (and the tag it
names) whether the message can mean wrong pixels. These tests read tifffile's own source, so a
tifffile upgrade that logs from a new function, or names tags differently, fails here instead of
silently changing which files are refused.
"""

from __future__ import annotations

import ast
import io
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

import zchunk
from zchunk.errors import CorruptDataError
from zchunk.io._tiff_open import _RULES, _Rule, about_description, origin, refuses
from zchunk.testing import blobs

_LEVELS = {"warning", "error", "critical", "exception"}
_REPRS = {  # what {self!r} / {tif!r} print, by class (a file name with a parenthesis on purpose)
    "TiffPage": "<tifffile.TiffPage 0 @8>",
    "TiffFrame": "<tifffile.TiffFrame 1 @2466>",
    "TiffPages": "<tifffile.TiffPages @8>",
}
_FILE = "<tifffile.TiffFile 'stack (1).tif'>"


def _render(node: ast.expr, assigned: dict[str, ast.expr], cls: str, code: str) -> str:
    """A logged message as tifffile would print it, with `code` for any tag number."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(_render(v, assigned, cls, code) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _render(node.left, assigned, cls, code) + _render(node.right, assigned, cls, code)
    if isinstance(node, ast.Name) and node.id in assigned:
        return _render(assigned[node.id], assigned, cls, code)
    if isinstance(node, ast.FormattedValue):
        name = ast.unparse(node.value)
        if name == "self":
            return _REPRS.get(cls, f"<tifffile.{cls} 'stack (1).tif'>")
        if name in ("tif", "arg"):
            return _FILE
        if name == "exc":
            return "ValueError('7 is not a valid RESUNIT')"
        if name == "code":
            return code
        return "'IDEAS'" if node.conversion == ord("r") else "1"
    pytest.fail(f"cannot render {ast.unparse(node)}")


Site = tuple[str, str, int, str, ast.expr, dict[str, ast.expr]]


def _is_logger_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "logger"
    )


def _walk(node: ast.AST, file: str, func: str, cls: str, assigned: dict, out: list) -> int:
    """Append the warning/error sites under `node` to `out`; return how many logger calls."""
    calls = 0
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            calls += _walk(child, file, func, child.name, {}, out)
            continue
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            calls += _walk(child, file, child.name, cls, {}, out)
            continue
        if isinstance(child, ast.Assign) and isinstance(child.targets[0], ast.Name):
            assigned[child.targets[0].id] = child.value
        if _is_logger_call(child):
            calls += 1
            if child.func.attr in _LEVELS:
                out.append((file, func, child.lineno, cls, child.args[0], dict(assigned)))
        calls += _walk(child, file, func, cls, assigned, out)
    return calls


def _sites() -> list[Site]:
    """Every warning/error logging call of the installed tifffile package.

    (file, function name as LogRecord.funcName gives it, line, enclosing class, message node,
    names assigned earlier in the function).
    """
    sites: list[Site] = []
    for path in sorted(Path(tifffile.__file__).parent.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        calls = _walk(ast.parse(text), path.name, "<module>", "", {}, sites)
        # every "logger()." in the code is a call the walk found: no logging form is missed
        lines = text.splitlines()
        code = sum(line.count("logger().") for line in lines if not line.lstrip().startswith("#"))
        assert calls == code, path.name
    return sites


SITES = _sites()


def _id(site: tuple[object, ...]) -> str:
    return f"{site[0]}:{site[2]}:{site[1]}"


def test_the_installed_tifffile_logs_from_many_places():
    assert len(SITES) > 100  # the walk finds tifffile's logging calls at all


@pytest.mark.parametrize("site", SITES, ids=_id)
def test_every_logging_function_of_tifffile_has_a_rule(site):
    _, func, line, cls, node, assigned = site
    message = _render(node, assigned, cls, "256")
    assert origin(func, message) in _RULES, (
        f"tifffile.py:{line} logs from {func!r} ({message!r}), which has no rule in "
        "zchunk/io/_tiff_open.py: decide whether it can mean wrong pixels, and add it"
    )


#: tag-rule messages naming no tag by number whose own tag is not a pixel tag: accepted
_ACCEPTED_WITHOUT_NUMBER = {"invalid self.subfiletype=", "parsing GDAL_NODATA tag raised"}


def _rule(site: Site) -> _Rule | None:
    _, func, _, cls, node, assigned = site
    return _RULES.get(origin(func, _render(node, assigned, cls, "256")))


TAG_SITES = [s for s in SITES if _rule(s) in (_Rule.TAG, _Rule.TAG_KEPT)]


def test_some_messages_are_about_one_tag():
    assert len(TAG_SITES) > 10


@pytest.mark.parametrize("site", TAG_SITES, ids=_id)
def test_a_tag_message_refuses_by_its_tag(site):
    _, func, _, cls, node, assigned = site
    width = _render(node, assigned, cls, "256")  # ImageWidth
    software = _render(node, assigned, cls, "305")  # Software
    own = any(text in width for text in _ACCEPTED_WITHOUT_NUMBER)
    assert refuses(func, width) is not own, width
    if width != software:  # the message names its tag by number
        assert not refuses(func, software), software


def _tiff(**kw: object) -> bytearray:
    buf = io.BytesIO()
    tifffile.imwrite(buf, blobs((3, 20, 24), "uint16", seed=2), photometric="minisblack", **kw)
    return bytearray(buf.getvalue())


def _every_page(data: bytearray, code: int, patch) -> bytearray:
    """Patch the directory entry of tag `code` on every page holding it (classic TIFF)."""
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tif.pages.useframes = False
        entries = [int(p.tags[code].offset) for p in tif.pages if code in p.tags]
    assert entries
    for offset in entries:
        patch(data, offset)
    return data


def _logged(path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        tifffile.TiffFile(path).close()
    return [r.getMessage() for r in caplog.records]


def test_a_non_ascii_description_opens(tmp_path, caplog):
    path = tmp_path / "desc.tif"
    # bytes neither UTF-8 nor cp1252 can decode: tifffile keeps the description as bytes
    path.write_bytes(bytes(_tiff(description=b"caf\x81 \x8d sample", metadata=None)))
    assert any("coercing invalid ASCII" in m for m in _logged(path, caplog))
    np.testing.assert_array_equal(zchunk.open(path).data.compute(), tifffile.imread(path))


def test_an_invalid_resolution_unit_opens_with_an_unknown_pixel_size(tmp_path, caplog):
    path = tmp_path / "unit.tif"
    data = _tiff(resolution=(2.0, 2.0), resolutionunit=3)
    path.write_bytes(
        bytes(_every_page(data, 296, lambda d, o: struct.pack_into("<H", d, o + 8, 7)))
    )
    assert any("296" in m for m in _logged(path, caplog))
    stack = zchunk.open(path)
    np.testing.assert_array_equal(stack.data.compute(), tifffile.imread(path))
    assert stack.scale[-2:] == (None, None)  # y, x: the unit is unknown, so is the pixel size


def test_a_metadata_tag_of_invalid_type_opens(tmp_path, caplog):
    path = tmp_path / "software.tif"
    data = _tiff(software="zchunk test")
    path.write_bytes(
        bytes(_every_page(data, 305, lambda d, o: struct.pack_into("<H", d, o + 2, 99)))
    )
    assert any("invalid data type" in m for m in _logged(path, caplog))
    np.testing.assert_array_equal(zchunk.open(path).data.compute(), tifffile.imread(path))


@pytest.mark.parametrize(
    ("code", "how"),
    [
        (273, "value offset"),  # StripOffsets stored beyond the end of the file
        (279, "value offset"),  # StripByteCounts likewise
        (273, "data type"),  # StripOffsets of an invalid type: dropped
        (279, "data type"),
    ],
)
def test_damaged_strip_offsets_or_byte_counts_are_refused(tmp_path, caplog, code, how):
    path = tmp_path / "strips.tif"
    data = _tiff(rowsperstrip=4)  # 5 strips a page: offsets and counts stored out of line

    def patch(d: bytearray, o: int) -> None:
        if how == "value offset":
            struct.pack_into("<I", d, o + 8, len(d) + 1000)
        else:
            struct.pack_into("<H", d, o + 2, 99)

    path.write_bytes(bytes(_every_page(data, code, patch)))
    assert _logged(path, caplog)
    with pytest.raises(CorruptDataError, match="damaged"):
        zchunk.open(path).data.compute()


def test_description_misfit_is_told_by_the_series_functions():
    record = logging.LogRecord("tifffile", logging.WARNING, "", 1, "x", None, None, "series_imagej")
    record.msg = f"{_FILE} ImageJ series metadata invalid or corrupted file"
    assert about_description(record)
    record.funcName = "_seek"
    record.msg = f"{_FILE} invalid page offset 5"
    assert not about_description(record)
