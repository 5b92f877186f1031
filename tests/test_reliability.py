"""Every bad input gets a one-line ZChunkError naming the file and the fault; nothing is written."""

from __future__ import annotations

import os
import shutil
import struct

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

import zchunk
from zchunk.cli import main
from zchunk.errors import (
    CorruptDataError,
    DiskSpaceError,
    IncompleteOutputError,
    InputChangedError,
    OptionError,
    OutputExistsError,
    SourceNotFoundError,
    StackFormatError,
    ZChunkError,
)
from zchunk.sinks import to_ome_zarr
from zchunk.testing import blobs, write_tiff_sequence

SHAPE = (6, 40, 30)


def one_line(exc: BaseException, *names: str) -> None:
    """The message is one line and names every one of `names` (file names)."""
    text = str(exc)
    assert "\n" not in text
    for name in names:
        assert name in text


def tiff(path, data=None, **kw):
    kw.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, blobs(SHAPE, "uint16", seed=2) if data is None else data, **kw)
    return path


def first_ifd_entry(path, page: int = 0) -> int:
    with tifffile.TiffFile(path) as tif:
        return tif.pages[page].offset + 2


def patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# --- inputs refused by zchunk.open ------------------------------------------------------------


def _missing(tmp_path):
    return tmp_path / "nope.tif", SourceNotFoundError, "does not exist"


def _missing_glob(tmp_path):
    return str(tmp_path / "z*.tif"), SourceNotFoundError, "no file matches"


def _empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("x")
    return tmp_path / "data", SourceNotFoundError, "without TIFF files"


def _png(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(imagecodecs.png_encode(np.zeros((8, 8), np.uint8)))
    return path, StackFormatError, "not a readable TIFF"


def _png_named_tif(tmp_path):
    path = tmp_path / "image.tif"
    path.write_bytes(imagecodecs.png_encode(np.zeros((8, 8), np.uint8)))
    return path, StackFormatError, r"not a readable TIFF.*PNG"


def _text_named_tif(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not an image\n" * 20)
    return path, StackFormatError, "not a readable TIFF"


def _truncated_raw(tmp_path):
    path = tiff(tmp_path / "raw.tif")
    os.truncate(path, os.path.getsize(path) - 500)
    return path, CorruptDataError, "truncated|damaged"


def _truncated_zlib(tmp_path):
    path = tiff(tmp_path / "zlib.tif", compression="zlib", rowsperstrip=8)
    os.truncate(path, os.path.getsize(path) - 300)
    return path, CorruptDataError, "truncated|damaged"


def _truncated_imagej_zlib(tmp_path):
    path = tiff(tmp_path / "ij.tif", imagej=True, compression="zlib")
    os.truncate(path, os.path.getsize(path) // 2)
    return path, CorruptDataError, "truncated|damaged"


def _first_ifd_beyond_the_end(tmp_path):
    path = tiff(tmp_path / "ifd.tif")
    patch(path, 4, struct.pack("<I", os.path.getsize(path) + 1000))
    return path, CorruptDataError, "damaged.*offset"


def _ifd_entry_count(tmp_path):
    path = tiff(tmp_path / "ifd.tif", compression="zlib")
    patch(path, first_ifd_entry(path, 1) - 2, struct.pack("<H", 0xFFFF))
    return path, CorruptDataError, "truncated or damaged"


def _ifd_tag_types(tmp_path):
    path = tiff(tmp_path / "ifd.tif", compression="zlib")
    entry = first_ifd_entry(path)
    for k in range(3):
        patch(path, entry + 12 * k + 2, struct.pack("<H", 99))
    return path, CorruptDataError, "damaged"


def _strip_count(tmp_path):
    path = tiff(tmp_path / "strips.tif", compression="zlib", rowsperstrip=8)
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["StripOffsets"]
        entry = tag.offset
    patch(path, entry + 4, struct.pack("<I", 2))  # 2 strip offsets where 5 are needed
    return path, CorruptDataError, "damaged|strip"


def _folder_other_shape(tmp_path):
    write_tiff_sequence(str(tmp_path / "seq"), (5, 20, 20), "uint16")
    tifffile.imwrite(tmp_path / "seq" / "z3.tif", blobs((21, 20), "uint16"))
    return tmp_path / "seq", StackFormatError, r"z3\.tif.*\(21, 20\)"


def _folder_other_dtype(tmp_path):
    write_tiff_sequence(str(tmp_path / "seq"), (5, 20, 20), "uint16")
    tifffile.imwrite(tmp_path / "seq" / "z4.tif", blobs((20, 20), "float32"))
    return tmp_path / "seq", StackFormatError, r"z4\.tif holds float32"


def _complex_tiff(tmp_path):
    path = tiff(tmp_path / "c.tif", np.zeros((3, 8, 8), np.complex64))
    return path, StackFormatError, "unsupported pixel type complex64"


def _bool_tiff(tmp_path):
    path = tiff(tmp_path / "b.tif", np.zeros((3, 8, 8), bool))
    return path, StackFormatError, "unsupported pixel type bool"


def _rgb_tiff(tmp_path):
    path = tiff(tmp_path / "rgb.tif", np.zeros((3, 8, 8, 3), np.uint8), photometric="rgb")
    return path, StackFormatError, "RGB"


def _zchunk_zarr(tmp_path, name="m.zarr", **kw):
    stack = zchunk.open(blobs((4, 40, 20), "uint16"), memory_limit="5KB")
    return zchunk.save(stack, tmp_path / name, **kw)


def _zarr_missing_shard(tmp_path):
    path = _zchunk_zarr(tmp_path)
    os.remove(path / "c" / "0" / "1" / "0")
    return path, CorruptDataError, r"m\.zarr.*chunk 'c/0/1/0' is missing"


def _ome_zarr_missing_shard(tmp_path):
    path = _zchunk_zarr(tmp_path, "m.ome.zarr")
    os.remove(path / "0" / "c" / "0" / "2" / "0")
    return path, CorruptDataError, r"m\.ome\.zarr/0 .*chunk 'c/0/2/0' is missing"


def _ome_zarr_v2_missing_chunk(tmp_path):
    stack = zchunk.open(blobs((4, 40, 20), "uint16"), memory_limit="5KB")
    path = to_ome_zarr(stack, tmp_path / "m.ome.zarr", ngff_version="0.4")
    os.remove(path / "0" / "0" / "1" / "0")  # chunks of all 4 planes (small planes, grouped)
    return path, CorruptDataError, r"chunk '0/1/0' is missing"


def _sparse_zarr(tmp_path):
    # zarr's default (write_empty_chunks=False) stores no chunk equal to the fill value
    path = tmp_path / "sparse.zarr"
    z = zarr.create_array(path, shape=(4, 20, 20), chunks=(4, 10, 20), dtype="uint16")
    z[:, :10] = 1
    return path, CorruptDataError, r"chunk 'c/0/1/0' is missing.*allow_incomplete=True"


def _bool_zarr(tmp_path):
    path = tmp_path / "b.zarr"
    zarr.create_array(path, shape=(4, 20, 20), chunks=(4, 20, 20), dtype=bool)[...] = True
    return path, StackFormatError, "unsupported pixel type bool"


def _partial_output(tmp_path):
    path = tmp_path / ".out.zarr.zchunk-partial"
    _zchunk_zarr(tmp_path, "done.zarr").rename(path)
    return path, IncompleteOutputError, "partial output of an interrupted"


OPEN_ERRORS = {f.__name__[1:]: f for f in [
    _missing, _missing_glob, _empty_folder, _png, _png_named_tif, _text_named_tif,
    _truncated_raw, _truncated_zlib, _truncated_imagej_zlib, _first_ifd_beyond_the_end,
    _ifd_entry_count, _ifd_tag_types, _strip_count, _folder_other_shape, _folder_other_dtype,
    _complex_tiff, _bool_tiff, _rgb_tiff, _zarr_missing_shard, _ome_zarr_missing_shard,
    _ome_zarr_v2_missing_chunk, _sparse_zarr, _bool_zarr, _partial_output,
]}  # fmt: skip


@pytest.mark.parametrize("case", list(OPEN_ERRORS))
def test_bad_input_is_refused_in_one_line(tmp_path, case):
    source, error, match = OPEN_ERRORS[case](tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(error, match=match) as info:
        zchunk.open(str(source))
    one_line(info.value, os.path.basename(str(source)))
    # and through the whole API: nothing is written
    out = tmp_path / "out"
    with pytest.raises(ZChunkError):
        zchunk.save(zchunk.project(zchunk.open(str(source)), "max"), out / "max.tif")
    assert sorted(tmp_path.rglob("*")) == before


def test_sparse_zarr_opens_with_allow_incomplete(tmp_path):
    path, _, _ = _sparse_zarr(tmp_path)
    s = zchunk.open(path, allow_incomplete=True)
    assert int(s.data[:, 10:].sum().compute()) == 0


def test_array_inputs_of_unsupported_types(tmp_path):
    for dtype in (bool, np.complex64, object):
        with pytest.raises(StackFormatError, match="unsupported pixel type"):
            zchunk.open(np.zeros((3, 4, 4), dtype=dtype))


def test_axes_that_do_not_exist(tmp_path):
    path = tiff(tmp_path / "s.tif")
    with pytest.raises(StackFormatError, match=r"axes='qyx'.*'tczyx'"):
        zchunk.open(path, axes="qyx")
    with pytest.raises(StackFormatError, match="2 letters"):
        zchunk.open(path, axes="yx")
    s = zchunk.open(path)
    with pytest.raises(
        StackFormatError, match=r"axis 't' is not in .*s\.tif, whose axes are 'zyx'"
    ):
        zchunk.project(s, "max", axis="t")


# --- faults found while computing: nothing is written ---------------------------------------


def _save_fails(stack, out, error, match):
    folder = out.parent
    before = sorted(folder.iterdir())
    with pytest.raises(error, match=match) as info:
        zchunk.save(stack, out)
    one_line(info.value)
    assert sorted(folder.iterdir()) == before  # no output, no partial output, no temporary
    return info.value


@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_input_changed_between_open_and_compute(tmp_path, name):
    path = tiff(tmp_path / "s.tif")
    stack = zchunk.filter(zchunk.open(path), "gaussian", sigma=1)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    exc = _save_fails(stack, tmp_path / name, InputChangedError, "changed on disk")
    one_line(exc, "s.tif")


def test_input_deleted_between_open_and_compute(tmp_path):
    path = tiff(tmp_path / "s.tif")
    stack = zchunk.project(zchunk.open(path), "max")
    os.remove(path)
    _save_fails(stack, tmp_path / "max.tif", InputChangedError, r"s\.tif was deleted or moved")


def test_damaged_strip_found_while_computing(tmp_path):
    path = tiff(tmp_path / "s.tif", compression="zlib", rowsperstrip=8)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[3]
        offset, count = page.dataoffsets[2], page.databytecounts[2]
    patch(path, offset + count // 2, b"\xff" * 8)
    stack = zchunk.open(path)  # the header is fine
    exc = _save_fails(stack, tmp_path / "out.zarr", CorruptDataError, "cannot decode segment 2")
    one_line(exc, "s.tif")


def test_damaged_zarr_shard_found_while_computing(tmp_path):
    path = _zchunk_zarr(tmp_path)
    shard = path / "c" / "0" / "1" / "0"
    shard.write_bytes(shard.read_bytes()[:40])
    stack = zchunk.open(path)
    exc = _save_fails(stack, tmp_path / "copy.zarr", CorruptDataError, "cannot read the zarr")
    one_line(exc, "m.zarr")


# --- bad options ------------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path):
    return zchunk.open(tiff(tmp_path / "s.tif"))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: zchunk.filter(s, "gaussian", sigma=-1), "sigma=-1 is invalid"),
        (lambda s: zchunk.filter(s, "gaussian", sigma=0), "sigma=0 is invalid"),
        (lambda s: zchunk.filter(s, "gaussian", sigma="big"), "sigma='big' is invalid"),
        (lambda s: zchunk.filter(s, "gaussian", sigma=(1, 2)), "has 2 values"),
        (lambda s: zchunk.filter(s, "gaussian"), "needs sigma"),
        (lambda s: zchunk.filter(s, "median", size=0), "size=0 is invalid"),
        (lambda s: zchunk.filter(s, "median", size=2.5), "size=2.5 is invalid"),
        (lambda s: zchunk.filter(s, "blur", sigma=1), "filter 'blur' is not one of"),
        (lambda s: zchunk.project(s, "percentile", q=101), "q between 0 and 100"),
        (lambda s: zchunk.project(s, "percentile"), "q between 0 and 100"),
        (lambda s: zchunk.project(s, "mode"), "method='mode' is not one of"),
        (lambda s: zchunk.project(s, "max", q=5), "only for method='percentile'"),
        (lambda s: zchunk.open(s.data, memory_limit="lots"), "'lots' is not a size"),
        (lambda s: zchunk.open(s.data, memory_limit=-5), "must be positive"),
        (lambda s: zchunk.open(s.data, memory_limit="0GiB"), "must be positive"),
        (lambda s: zchunk.compare(s, s, atol=-1), "atol must be"),
    ],
)
def test_invalid_options(stack, call, match):
    with pytest.raises(OptionError, match=match) as info:
        call(stack)
    assert isinstance(info.value, ValueError)  # and still a ValueError
    one_line(info.value)


@pytest.mark.parametrize(
    ("name", "kw", "error", "match"),
    [
        ("out.png", {}, OptionError, "cannot tell the output format"),
        ("out.tif", {"compression": "jpeg"}, OptionError, "compression='jpeg' is not supported"),
        ("out.zarr", {"compression": "zlib"}, OptionError, "applies to TIFF outputs only"),
    ],
)
def test_invalid_output_options_write_nothing(stack, tmp_path, name, kw, error, match):
    before = sorted(tmp_path.iterdir())
    with pytest.raises(error, match=match):
        zchunk.save(stack, tmp_path / name, **kw)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("dtype", [bool, np.complex64])
def test_unwritable_dtype(tmp_path, dtype):
    s = zchunk.Stack(np.zeros((2, 4, 4), dtype=dtype))
    with pytest.raises(StackFormatError, match="cannot write pixels"):
        zchunk.save(s, tmp_path / "a.zarr")
    assert list(tmp_path.iterdir()) == []


# --- outputs ----------------------------------------------------------------------------------


def test_output_equal_to_an_input(tmp_path):
    path = tiff(tmp_path / "s.tif")
    data = path.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"would overwrite the input.*s\.tif"):
            zchunk.save(zchunk.open(path), path, overwrite=overwrite)
    assert path.read_bytes() == data


def test_output_exists_without_overwrite(tmp_path, stack):
    out = tmp_path / "max.tif"
    out.write_text("precious")
    with pytest.raises(OutputExistsError, match=r"max\.tif' already exists.*--overwrite"):
        zchunk.save(zchunk.project(stack, "max"), out)
    assert out.read_text() == "precious"


@pytest.mark.parametrize("name", ["out.tif", "out.zarr", "out.ome.zarr"])
def test_not_enough_disk_space(tmp_path, monkeypatch, stack, name):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(DiskSpaceError, match=r"needs about 28\.12 kiB.*9\.77 kiB free") as info:
        zchunk.save(zchunk.filter(stack, "gaussian", sigma=1), tmp_path / name)
    one_line(info.value, name)
    assert sorted(tmp_path.iterdir()) == before
    zchunk.save(zchunk.project(stack, "max"), tmp_path / name)  # 2.3 KiB fits


# --- the command line: exit code 2, one line on stderr, nothing written ------------------------


def _cli_fails(argv, capsys, *names):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zchunk: error: ")
    for name in names:
        assert name in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "case",
    ["missing", "png_named_tif", "truncated_zlib", "ifd_tag_types", "folder_other_shape",
     "zarr_missing_shard", "partial_output"],
)  # fmt: skip
def test_cli_bad_input(tmp_path, capsys, case):
    source, _, _ = OPEN_ERRORS[case](tmp_path)
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "out.tif"
    _cli_fails(["project", str(source), "-o", str(out), "--quiet"], capsys, source.name)
    _cli_fails(["info", str(source)], capsys, source.name)
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_bad_options(tmp_path, capsys):
    src = str(tiff(tmp_path / "s.tif"))
    out = str(tmp_path / "o.tif")
    _cli_fails(["filter", src, "gaussian", "--sigma", "-1", "-o", out], capsys, "sigma")
    _cli_fails(["filter", src, "median", "--size", "0", "-o", out], capsys, "size")
    _cli_fails(["project", src, "-m", "percentile", "--q", "120", "-o", out], capsys, "q")
    _cli_fails(["project", src, "-o", out, "--memory-limit", "lots"], capsys, "lots")
    _cli_fails(["project", src, "--axis", "t", "-o", out], capsys, "axis 't'")
    assert sorted(os.listdir(tmp_path)) == ["s.tif"]


def test_cli_output_problems(tmp_path, capsys, monkeypatch):
    src = tiff(tmp_path / "s.tif")
    _cli_fails(["project", str(src), "-o", str(src)], capsys, "s.tif")
    (tmp_path / "max.tif").write_text("keep")
    _cli_fails(["project", str(src), "-o", str(tmp_path / "max.tif")], capsys, "--overwrite")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100))
    out = str(tmp_path / "g.zarr")
    _cli_fails(["filter", str(src), "gaussian", "--sigma", "1", "-o", out], capsys, "disk space")
    assert sorted(os.listdir(tmp_path)) == ["max.tif", "s.tif"]
