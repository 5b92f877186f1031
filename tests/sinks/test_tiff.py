from __future__ import annotations

import os
import threading
from collections import Counter

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile

from zchunk.sinks import _tiff, to_tiff
from zchunk.stack import Stack
from zchunk.testing import blobs

UM = "micrometer"

# (shape, axes, dask chunks): full first axis of a volume, bands and tiles that do not divide
CASES = {
    "yx": ((37, 29), "yx", (10, 29)),
    "yx-tiles": ((37, 29), "yx", (16, 12)),
    "zyx": ((6, 37, 29), "zyx", (6, 10, 29)),
    "zyx-tiles": ((6, 37, 29), "zyx", (6, 16, 12)),
    "tzyx": ((3, 4, 21, 17), "tzyx", (1, 4, 8, 17)),
}


def make_stack(case, dtype, *, seed=0, scale=None, units=None):
    shape, axes, chunks = CASES[case]
    a = blobs(shape, dtype, seed=seed)
    s = Stack(da.from_array(a, chunks=chunks), axes=axes, scale=scale or (), units=units or ())
    return s, a


def calibrated(case, dtype):
    axes = CASES[case][1]
    sizes = {"t": 2.5, "z": 1.5, "y": 0.25, "x": 0.2}
    units = {"t": "second", "z": UM, "y": UM, "x": UM}
    return make_stack(
        case,
        dtype,
        scale=tuple(sizes[a] for a in axes),
        units=tuple(units[a] for a in axes),
    )


def read(path):
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return series.asarray(), series.axes, tif


def resolution(page, tag):
    num, den = page.tags[tag].value
    return num / den


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_imagej_values_round_trip(tmp_path, case, dtype, compression):
    stack, a = make_stack(case, dtype, seed=3)
    out = to_tiff(stack, tmp_path / "out.tif", compression=compression)
    assert out == tmp_path / "out.tif"
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert not tif.is_bigtiff
        assert tif.series[0].axes == stack.axes.upper()
        assert tif.pages[0].compression == (1 if compression is None else 8)
        assert len(tif.pages) == int(np.prod(a.shape[:-2]))
        got = tif.series[0].asarray()
    assert got.dtype == a.dtype
    np.testing.assert_array_equal(got, a)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.tif.zchunk-done",
        "out.tif",
    ]  # no scratch left


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_imagej_calibration_round_trip(tmp_path, compression):
    stack, a = calibrated("tzyx", np.uint16)
    out = to_tiff(stack, tmp_path / "cal.tif", compression=compression)
    with tifffile.TiffFile(out) as tif:
        meta = tif.imagej_metadata
        page = tif.pages[0]
        assert meta["spacing"] == pytest.approx(1.5)
        assert meta["unit"] == "um"
        assert meta["finterval"] == pytest.approx(2.5)
        assert (meta["frames"], meta["slices"]) == (3, 4)
        assert 1 / resolution(page, "XResolution") == pytest.approx(0.2, rel=1e-7)
        assert 1 / resolution(page, "YResolution") == pytest.approx(0.25, rel=1e-7)
        np.testing.assert_array_equal(tif.series[0].asarray(), a)


def test_imagej_time_units_converted_to_seconds_and_other_units_kept(tmp_path):
    a = blobs((2, 3, 16, 16), np.uint8, seed=1)
    stack = Stack(
        da.from_array(a, chunks=(1, 3, 8, 16)),
        axes="tzyx",
        scale=(250.0, 2.0, 0.5, 0.5),
        units=("millisecond", "nanometer", "um", "micron"),
    )
    with tifffile.TiffFile(to_tiff(stack, tmp_path / "a.tif")) as tif:
        meta = tif.imagej_metadata
    assert meta["finterval"] == pytest.approx(0.25)
    assert meta["unit"] == "um"
    assert meta["zunit"] == "nm"
    assert "yunit" not in meta


def test_unknown_scale_writes_no_calibration(tmp_path):
    stack, _ = make_stack("zyx", np.uint16)  # scale () means unknown everywhere
    with tifffile.TiffFile(to_tiff(stack, tmp_path / "a.tif")) as tif:
        meta = tif.imagej_metadata
        page = tif.pages[0]
        assert not {"spacing", "unit", "finterval"} & set(meta)
        assert page.tags["XResolution"].value == (1, 1)


def test_partly_known_scale_writes_only_what_is_known(tmp_path):
    stack, _ = make_stack("tzyx", np.uint16, scale=(None, 2.0, None, None), units=(None, UM) * 2)
    with tifffile.TiffFile(to_tiff(stack, tmp_path / "a.tif")) as tif:
        meta = tif.imagej_metadata
        assert meta["spacing"] == 2.0
        assert meta["unit"] == "um"
        assert "finterval" not in meta
        assert tif.pages[0].tags["XResolution"].value == (1, 1)


def test_scale_without_unit_and_interval_without_time_unit(tmp_path):
    stack, _ = make_stack("tzyx", np.uint8, scale=(3.0, 2.0, 0.5, 0.5))
    with tifffile.TiffFile(to_tiff(stack, tmp_path / "a.tif")) as tif:
        meta = tif.imagej_metadata
        assert meta["spacing"] == 2.0
        assert "unit" not in meta
        assert "finterval" not in meta  # ImageJ would read seconds
        assert resolution(tif.pages[0], "XResolution") == pytest.approx(2.0)


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize(
    "dtype", [np.float64, np.int32, np.int8, np.int16, np.uint32, np.int64, np.float16]
)
def test_dtypes_imagej_cannot_hold_become_shaped_tiff(tmp_path, dtype, compression):
    stack, a = calibrated("zyx-tiles", dtype)
    out = to_tiff(stack, tmp_path / "out.tif", compression=compression)
    with tifffile.TiffFile(out) as tif:
        assert not tif.is_imagej
        assert tif.is_shaped
        meta = tif.shaped_metadata[0]
        page = tif.pages[0]
        got = tif.series[0].asarray()
        assert tif.series[0].axes == "ZYX"
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        # 0.2 um per pixel = 50000 pixels per cm
        assert resolution(page, "XResolution") == pytest.approx(5e4)
        assert resolution(page, "YResolution") == pytest.approx(4e4)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, a)
    assert meta["zchunk"]["axes"] == "zyx"
    assert meta["zchunk"]["scale"] == [1.5, 0.25, 0.2]
    assert meta["zchunk"]["units"] == [UM, UM, UM]


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_ome_tiff_metadata(tmp_path, compression):
    stack, a = calibrated("tzyx", np.uint16)
    stack = stack.replace(name="embryo")
    out = to_tiff(stack, tmp_path / "a.ome.tif", ome=True, compression=compression)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        assert tif.series[0].axes == "TZYX"
        np.testing.assert_array_equal(tif.series[0].asarray(), a)
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        name = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Name"]
    assert name == "embryo"
    assert pixels["PhysicalSizeX"] == pytest.approx(0.2)
    assert pixels["PhysicalSizeY"] == pytest.approx(0.25)
    assert pixels["PhysicalSizeZ"] == pytest.approx(1.5)
    assert pixels["PhysicalSizeXUnit"] == pixels["PhysicalSizeZUnit"] == "µm"
    assert pixels["TimeIncrement"] == pytest.approx(2.5)
    assert pixels["TimeIncrementUnit"] == "s"
    assert (pixels["SizeT"], pixels["SizeZ"]) == (3, 4)


def test_ome_tiff_channels_unknown_units_and_float64(tmp_path):
    a = blobs((2, 3, 16, 20), np.float64, seed=4)
    stack = Stack(
        da.from_array(a, chunks=(1, 3, 8, 20)),
        axes="czyx",
        scale=(None, 2.0, 0.5, 0.5),
        units=(None, None, "furlong", "furlong"),
        attrs={"channel_names": ["GFP", "DAPI"]},
    )
    out = to_tiff(stack, tmp_path / "a.ome.tif", ome=True)
    with tifffile.TiffFile(out) as tif:
        got = tif.series[0].asarray()
        axes = tif.series[0].axes
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert axes == "ZCYX"  # TZCYX order for TIFF
    np.testing.assert_array_equal(got, a.transpose(1, 0, 2, 3))
    assert ome["PhysicalSizeZ"] == 2.0
    assert ome["PhysicalSizeZUnit"] == "pixel"  # known size, unknown unit
    assert "PhysicalSizeX" not in ome  # a unit OME cannot name is not replaced by µm
    assert [c["Name"] for c in ome["Channel"]] == ["GFP", "DAPI"]


def test_ome_tiff_refuses_dtypes_ome_cannot_describe(tmp_path):
    stack, _ = make_stack("zyx", np.int64)
    with pytest.raises(ValueError, match="OME-TIFF cannot store pixels of dtype int64"):
        to_tiff(stack, tmp_path / "a.ome.tif", ome=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("ome", [False, True])
def test_bigtiff_above_threshold(tmp_path, monkeypatch, compression, ome):
    stack, a = calibrated("tzyx", np.uint16)
    monkeypatch.setattr(_tiff, "BIGTIFF_THRESHOLD", a.nbytes - 1)
    out = to_tiff(stack, tmp_path / "big.tif", compression=compression, ome=ome)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff
        assert not tif.is_imagej  # ImageJ cannot read ImageJ-flavoured BigTIFF
        assert tif.is_ome == ome
        assert tif.is_shaped == (not ome)
        assert tif.series[0].axes == "TZYX"
        assert len(tif.pages) == 12
        np.testing.assert_array_equal(tif.series[0].asarray(), a)
        if not ome:
            assert tif.shaped_metadata[0]["zchunk"]["scale"] == [2.5, 1.5, 0.25, 0.2]


def test_at_threshold_stays_classic_imagej(tmp_path, monkeypatch):
    stack, a = make_stack("zyx", np.uint8)
    monkeypatch.setattr(_tiff, "BIGTIFF_THRESHOLD", a.nbytes)
    with tifffile.TiffFile(to_tiff(stack, tmp_path / "a.tif")) as tif:
        assert tif.is_imagej
        assert not tif.is_bigtiff


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_axes_put_in_imagej_order(tmp_path, compression):
    a = blobs((4, 3, 18, 14), np.uint16, seed=2)  # (z, c, y, x)
    stack = Stack(
        da.from_array(a, chunks=(4, 1, 7, 14)).transpose(1, 3, 2, 0),  # c, x, y, z
        axes="cxyz",
        scale=(None, 0.2, 0.25, 1.5),
        units=(None, UM, UM, UM),
    )
    out = to_tiff(stack, tmp_path / "a.tif", compression=compression)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZCYX"
        np.testing.assert_array_equal(tif.series[0].asarray(), a)
        assert tif.imagej_metadata["spacing"] == 1.5
        assert 1 / resolution(tif.pages[0], "XResolution") == pytest.approx(0.2)


def test_last_axis_of_three_is_not_taken_for_rgb(tmp_path):
    a = blobs((5, 7, 3), np.uint8, seed=1)
    stack = Stack(da.from_array(a, chunks=(5, 4, 3)), axes="zyx")
    got, axes, _ = read(to_tiff(stack, tmp_path / "a.tif"))
    assert axes == "ZYX"
    np.testing.assert_array_equal(got, a)


def test_non_native_byte_order_is_written_native(tmp_path):
    a = blobs((3, 10, 12), np.uint16, seed=1)
    stack = Stack(da.from_array(a.astype(">u2"), chunks=(3, 5, 12)))
    got, _, _ = read(to_tiff(stack, tmp_path / "a.tif", compression="zlib"))
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, a)


def counted(stack):
    """Wrap `stack` so that every computation of a block is counted."""
    counts: Counter[tuple[int, ...]] = Counter()
    lock = threading.Lock()

    def count(block, block_info=None):
        with lock:
            counts[tuple(block_info[0]["chunk-location"])] += 1
        return block

    data = stack.data.map_blocks(count, dtype=stack.dtype)
    return stack.replace(data=data), counts


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("case", ["yx-tiles", "zyx-tiles", "tzyx"])
def test_each_block_computed_exactly_once(tmp_path, case, compression):
    stack, a = make_stack(case, np.uint16, seed=5)
    stack, counts = counted(stack)
    to_tiff(stack, tmp_path / "a.tif", compression=compression)
    assert set(counts) == set(np.ndindex(*stack.data.numblocks))
    assert set(counts.values()) == {1}
    got, _, _ = read(tmp_path / "a.tif")
    np.testing.assert_array_equal(got, a)


def test_irregular_chunks_are_regularized_for_compressed_volumes(tmp_path):
    a = blobs((5, 30, 20), np.uint16, seed=6)
    data = da.from_array(a, chunks=((2, 3), (7, 13, 10), (20,)))
    stack, counts = counted(Stack(data))
    got, _, _ = read(to_tiff(stack, tmp_path / "a.tif", compression="zlib"))
    np.testing.assert_array_equal(got, a)
    assert set(counts.values()) == {1}


def test_writes_through_the_callers_scheduler(tmp_path):
    stack, a = make_stack("zyx-tiles", np.float32)
    for name, compression in [("a.tif", None), ("b.tif", "zlib")]:
        with dask.config.set(scheduler="processes", num_workers=2):
            out = to_tiff(stack, tmp_path / name, compression=compression)
        got, _, _ = read(out)
        np.testing.assert_array_equal(got, a)


def test_unknown_compression_is_refused_before_writing(tmp_path):
    stack, _ = make_stack("zyx", np.uint8)
    with pytest.raises(ValueError, match=r"compression='jpeg' is not supported.*'zlib'"):
        to_tiff(stack, tmp_path / "a.tif", compression="jpeg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", ["none", "NONE", ""])
def test_none_compression_spellings(tmp_path, compression):
    stack, _ = make_stack("yx", np.uint8)
    with tifffile.TiffFile(to_tiff(stack, tmp_path / "a.tif", compression=compression)) as tif:
        assert tif.pages[0].compression == 1


@pytest.mark.parametrize("dtype", [bool, np.complex64, object])
def test_unwritable_dtypes(tmp_path, dtype):
    stack = Stack(da.zeros((2, 4, 4), dtype=dtype, chunks=2))
    with pytest.raises(ValueError, match=f"dtype {np.dtype(dtype)}"):
        to_tiff(stack, tmp_path / "a.tif")
    assert list(tmp_path.iterdir()) == []


def test_stack_without_yx_axes_is_refused(tmp_path):
    stack = Stack(da.zeros((2, 4, 4), dtype="uint8"), axes="tzc")
    with pytest.raises(ValueError, match=r"write it to \.zarr instead"):
        to_tiff(stack, tmp_path / "a.tif")


def test_empty_stack_is_refused(tmp_path):
    stack = Stack(da.zeros((0, 4, 4), dtype="uint8"))
    with pytest.raises(ValueError, match="empty stack"):
        to_tiff(stack, tmp_path / "a.tif")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_each_block_is_handed_to_the_disk_when_written(tmp_path, monkeypatch):
    from zchunk.sinks import _done

    spans: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        assert advice == os.POSIX_FADV_DONTNEED
        spans.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(_done.os, "posix_fadvise", record)
    a = blobs((3, 10, 6), np.uint16, seed=2)
    out = to_tiff(Stack(da.from_array(a, chunks=(3, 5, 6))), tmp_path / "a.tif")
    # two blocks of 5 rows: each hint spans its first row of plane 0 to its last of plane 2
    row, plane = 6 * 2, 10 * 6 * 2
    assert sorted(length for _, length in spans) == [2 * plane + 5 * row] * 2
    starts = sorted(offset for offset, _ in spans)
    assert starts[1] - starts[0] == 5 * row
    np.testing.assert_array_equal(tifffile.imread(out), a)
