import os

import dask
import numpy as np
import pytest
import tifffile

import zchunk
from zchunk.errors import CorruptDataError, InputChangedError, SourceNotFoundError, StackFormatError
from zchunk.io import _tiff
from zchunk.testing import TIFF_LAYOUTS, blobs, imwrite, write_tiff_sequence

SHAPE = (9, 45, 61)  # odd sizes: bands and tiles do not divide them


def _assert_full_z(stack, axis="z"):
    i = stack.axes.index(axis)
    assert stack.data.numblocks[i] == 1


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("layout", list(TIFF_LAYOUTS))
def test_layouts_equal_tifffile(tmp_path, layout, dtype):
    data = blobs(SHAPE, dtype, seed=3)
    path = imwrite(tmp_path / "s.tif", data, **TIFF_LAYOUTS[layout])
    s = zchunk.open(path, memory_limit="60KB")  # small budget: several bands
    assert s.axes == "zyx"
    assert s.dtype == np.dtype(dtype)
    _assert_full_z(s)
    # single-strip pages make every band a whole page (each page decoded once per pass)
    assert (s.data.numblocks[1] > 1) == (layout != "single-strip-deflate")
    np.testing.assert_array_equal(s.data.compute(), tifffile.imread(path))


def test_tiled_budget_splits_x(tmp_path):
    data = blobs((20, 64, 256), "uint16", seed=1)
    path = imwrite(tmp_path / "t.tif", data, tile=(16, 32), compression="zlib")
    s = zchunk.open(path, memory_limit="200KB")
    assert s.data.numblocks[2] > 1
    assert all(c % 32 == 0 for c in s.data.chunks[2][:-1])
    assert all(c % 16 == 0 for c in s.data.chunks[1][:-1])
    np.testing.assert_array_equal(s.data.compute(), data)


@pytest.mark.parametrize(
    ("axes", "shape"),
    [("TZYX", (3, 5, 30, 40)), ("ZCYX", (5, 2, 30, 40)), ("TZCYX", (2, 4, 3, 30, 40))],
)
def test_imagej_hyperstacks_keep_axes(tmp_path, axes, shape):
    data = blobs(shape, "uint16", seed=2)
    path = imwrite(
        tmp_path / "h.tif",
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"axes": axes, "spacing": 1.5, "unit": "micron", "finterval": 2.0},
    )
    s = zchunk.open(path, memory_limit="50KB")
    assert s.axes == axes.lower()
    assert s.shape == shape
    _assert_full_z(s)
    for letter in "tc":
        if letter in s.axes:
            assert set(s.data.chunks[s.axes.index(letter)]) == {1}
    assert s.scale[s.axis("x")] == pytest.approx(0.25)
    assert s.scale[s.axis("y")] == pytest.approx(0.25)
    assert s.scale[s.axis("z")] == pytest.approx(1.5)
    assert s.units[s.axis("x")] == "micrometer"
    if "t" in s.axes:
        assert s.scale[s.axis("t")] == pytest.approx(2.0)
        assert s.units[s.axis("t")] == "second"
    if "c" in s.axes:
        assert s.scale[s.axis("c")] is None
    np.testing.assert_array_equal(s.data.compute(), data)


def test_ome_tiff(tmp_path):
    data = blobs((2, 3, 6, 30, 40), "uint16", seed=4)
    path = imwrite(
        tmp_path / "s.ome.tif",
        data,
        metadata={
            "axes": "TCZYX",
            "PhysicalSizeX": 0.1,
            "PhysicalSizeY": 0.1,
            "PhysicalSizeZ": 0.5,
            "PhysicalSizeZUnit": "µm",
            "TimeIncrement": 30,
            "Channel": {"Name": ["DAPI", "GFP", "RFP"]},
        },
        compression="zlib",
        tile=(16, 16),
    )
    s = zchunk.open(path)
    assert s.axes == "tczyx"
    assert s.scale == (30.0, None, 0.5, 0.1, 0.1)
    assert s.units == ("second", None, "micrometer", "micrometer", "micrometer")
    assert tuple(s.attrs["channel_names"]) == ("DAPI", "GFP", "RFP")
    _assert_full_z(s)
    np.testing.assert_array_equal(s.data.compute(), data)


def test_plain_4d_defaults_to_tzyx_and_axes_override(tmp_path):
    data = blobs((2, 4, 20, 30), "uint8")
    path = imwrite(tmp_path / "s.tif", data)
    s = zchunk.open(path)
    assert s.axes == "tzyx"
    assert s.scale == (None,) * 4  # unknown stays unknown
    s2 = zchunk.open(path, axes="czyx")
    assert s2.axes == "czyx"
    with pytest.raises(StackFormatError, match="3 letters"):
        zchunk.open(path, axes="zyx")


def test_folder_natural_order(tmp_path):
    shape = (12, 25, 33)
    write_tiff_sequence(str(tmp_path / "seq"), shape, "uint16", seed=5)
    s = zchunk.open(str(tmp_path / "seq"), memory_limit="20KB")
    assert s.axes == "zyx"
    _assert_full_z(s)
    np.testing.assert_array_equal(s.data.compute(), blobs(shape, "uint16", seed=5))
    assert [os.path.basename(p) for p in s.attrs["source_paths"][:3]] == [
        "z1.tif",
        "z2.tif",
        "z3.tif",
    ]
    # glob and list give the same
    g = zchunk.open(str(tmp_path / "seq" / "z*.tif"))
    np.testing.assert_array_equal(g.data.compute(), s.data.compute())
    files = list(reversed(s.attrs["source_paths"]))
    rev = zchunk.open(files)  # an explicit list keeps the caller's order
    np.testing.assert_array_equal(rev.data.compute(), s.data.compute()[::-1])


def test_folder_compressed(tmp_path):
    shape = (7, 40, 30)
    write_tiff_sequence(str(tmp_path / "seq"), shape, "uint16", compression="zlib", rowsperstrip=8)
    s = zchunk.open(str(tmp_path / "seq"), memory_limit="10KB")
    assert s.data.numblocks[1] > 1
    np.testing.assert_array_equal(s.data.compute(), blobs(shape, "uint16"))


def test_folder_mismatch_names_first_odd_file(tmp_path):
    write_tiff_sequence(str(tmp_path), (4, 20, 20), "uint16")
    tifffile.imwrite(tmp_path / "z3.tif", blobs((21, 20), "uint16"))
    with pytest.raises(StackFormatError, match=r"z3\.tif.*\(21, 20\)"):
        zchunk.open(str(tmp_path))
    tifffile.imwrite(tmp_path / "z3.tif", blobs((20, 20), "uint8"))
    with pytest.raises(StackFormatError, match=r"z3\.tif holds uint8"):
        zchunk.open(str(tmp_path))


def test_processes_scheduler(tmp_path):
    data = blobs((6, 40, 50), "uint16")
    raw = imwrite(tmp_path / "raw.tif", data)
    comp = imwrite(tmp_path / "c.tif", data, compression="zstd", rowsperstrip=8)
    for path in (raw, comp):
        s = zchunk.open(path, memory_limit="30KB")
        with dask.config.set(scheduler="processes", num_workers=2):
            out = s.data.sum(axis=0).compute()
        np.testing.assert_array_equal(out, data.sum(axis=0))


@pytest.mark.parametrize("layout", ["contiguous", "striped-raw"])
def test_band_reads_only_its_bytes(tmp_path, layout):
    data = blobs((8, 100, 64), "uint16")
    path = imwrite(tmp_path / "s.tif", data, **TIFF_LAYOUTS[layout])
    s = zchunk.open(path, memory_limit="50KB")
    assert s.data.numblocks[1] >= 3
    band = s.data.blocks[0, 1, 0]
    _tiff.READ_STATS.reset()
    got = band.compute(scheduler="synchronous")
    assert _tiff.READ_STATS.bytes_read == got.nbytes  # exactly the band's rows, nothing else
    rows = s.data.chunks[1][0]
    np.testing.assert_array_equal(got, data[:, rows : rows + s.data.chunks[1][1]])


def test_compressed_pass_decodes_each_segment_once(tmp_path):
    data = blobs((8, 100, 64), "uint16")
    path = imwrite(tmp_path / "s.tif", data, compression="zlib", rowsperstrip=8)
    s = zchunk.open(path, memory_limit="40KB")
    assert s.data.numblocks[1] >= 3
    _tiff.READ_STATS.reset()
    s.data.sum().compute()
    assert _tiff.READ_STATS.segments_decoded == 8 * 13  # 8 pages x ceil(100 / 8) strips
    assert _tiff.READ_STATS.bytes_read == os.path.getsize(path) - _header_bytes(path)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_read_stats_are_added_once_per_task_not_per_segment(tmp_path, monkeypatch, compression):
    data = blobs((8, 100, 64), "uint16")
    path = imwrite(tmp_path / "s.tif", data, compression=compression, rowsperstrip=8)
    s = zchunk.open(path, memory_limit="40KB")
    calls = []
    real_add = _tiff.READ_STATS.add
    monkeypatch.setattr(_tiff.READ_STATS, "add", lambda **kw: calls.append(kw) or real_add(**kw))
    _tiff.READ_STATS.reset()
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(s.data.compute(), data)
    assert len(calls) == s.data.npartitions  # one lock-guarded add per block, none per strip
    assert _tiff.READ_STATS.bytes_read == sum(c["read"] for c in calls) > 0


def _header_bytes(path):
    with tifffile.TiffFile(path) as tif:
        stored = sum(sum(p.databytecounts) for p in tif.pages)
    return os.path.getsize(path) - stored


def test_arrays(rng):
    a = blobs((5, 30, 20), "float32")
    s = zchunk.open(a, memory_limit="10KB")
    _assert_full_z(s)
    np.testing.assert_array_equal(s.data.compute(), a)
    d = zchunk.open(dask.array.from_array(a, chunks=(1, 30, 20)))
    _assert_full_z(d)
    with pytest.raises(StackFormatError, match="unsupported pixel type"):
        zchunk.open(np.zeros((3, 4, 4), dtype=bool))


# errors ----------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        zchunk.open(str(tmp_path / "nope.tif"))
    with pytest.raises(SourceNotFoundError, match="no file matches"):
        zchunk.open(str(tmp_path / "*.tif"))


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceNotFoundError, match="without TIFF files"):
        zchunk.open(str(tmp_path))


def test_not_a_tiff(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(StackFormatError, match="not a readable TIFF"):
        zchunk.open(str(path))


def test_truncated_uncompressed(tmp_path):
    path = imwrite(tmp_path / "s.tif", blobs((6, 40, 50), "uint16"))
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(CorruptDataError, match="truncated"):
        zchunk.open(path)


def test_truncated_imagej_uncompressed(tmp_path):
    path = imwrite(tmp_path / "s.tif", blobs((6, 40, 50), "uint16"), imagej=True)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CorruptDataError, match="truncated"):
        zchunk.open(path)


def test_truncated_compressed_imagej_declares_more_pages(tmp_path):
    data = blobs((10, 40, 50), "uint16")
    path = imwrite(tmp_path / "s.tif", data, imagej=True, compression="zlib")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CorruptDataError, match=r"truncated|damaged"):
        zchunk.open(path)


def test_truncated_compressed_plain(tmp_path):
    path = imwrite(tmp_path / "s.tif", blobs((10, 40, 50), "uint16"), compression="zlib")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 300)
    with pytest.raises(CorruptDataError):
        zchunk.open(path)


def test_input_changed_between_open_and_compute(tmp_path):
    path = imwrite(tmp_path / "s.tif", blobs((4, 20, 20), "uint16"))
    s = zchunk.open(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(InputChangedError, match="changed on disk"):
        s.data.compute()


def test_rgb_is_refused(tmp_path):
    path = imwrite(tmp_path / "rgb.tif", np.zeros((20, 20, 3), dtype=np.uint8), photometric="rgb")
    with pytest.raises(StackFormatError, match="RGB"):
        zchunk.open(path)


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [
        ((1e4 / 0.5, 1e4 / 0.25), "CENTIMETER", (0.5, 0.25)),  # pixel size in micrometres
        ((1e3 / 2.0, 1e3 / 2.0), "MILLIMETER", None),  # plain TIFF: only centimetres trusted
        ((72.0, 72.0), "INCH", None),  # a screen DPI, not a pixel size
        (None, None, None),  # no resolution tags: unknown, never 1.0
    ],
)
def test_plain_tiff_pixel_size_only_from_centimetre_resolution(
    tmp_path, resolution, unit, expected
):
    kw = {} if resolution is None else {"resolution": resolution, "resolutionunit": unit}
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, blobs((3, 8, 8), "uint8"), photometric="minisblack", **kw)
    s = zchunk.open(path)
    yx = (s.scale[s.axis("x")], s.scale[s.axis("y")])
    if expected is None:
        assert yx == (None, None)
    else:
        assert yx == pytest.approx(expected, rel=1e-6)
        assert s.units[s.axis("x")] == s.units[s.axis("y")] == "micrometer"
