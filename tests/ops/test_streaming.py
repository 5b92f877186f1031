"""Projections streamed plane by plane from a TIFF: same values as NumPy and ImageJ, bit for
bit, on every layout; every byte read once; tall bands in bounded memory."""

import os

import dask
import numpy as np
import pytest
import tifffile

import zchunk
from zchunk.errors import CorruptDataError
from zchunk.io import _tiff
from zchunk.ops.projection import project, project_many
from zchunk.testing import TIFF_LAYOUTS, blobs, imwrite

SHAPE = (9, 45, 61)  # odd sizes: bands and tiles do not divide them

STREAMED = ["max", "min", "sum", "mean"]


def _streamed(array):
    return any(
        str(k[0] if isinstance(k, tuple) else k).startswith("zchunk-stream-")
        for k in dict(array.__dask_graph__())
    )


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("layout", list(TIFF_LAYOUTS))
def test_streamed_projections_equal_numpy_on_every_layout(tmp_path, layout, dtype):
    data = blobs(SHAPE, dtype, seed=7)
    path = imwrite(tmp_path / "s.tif", data, **TIFF_LAYOUTS[layout])
    s = zchunk.open(path, memory_limit="60KB")  # several bands, tall bands capped by budget
    info = s.attrs["layout"]
    for method in STREAMED:
        out = project(s, method).data
        ref = getattr(np, method)(data, axis=0)
        # float sums may be summed pairwise by NumPy: those stay on the chunked path
        assert _streamed(out) == (method in ("max", "min") or dtype != "float32")
        _tiff.READ_STATS.reset()
        got = out.compute(scheduler="threads")
        if info["compression"] != "none" or info["tiled"]:  # every segment decoded once
            assert _tiff.READ_STATS.segments_decoded == SHAPE[0] * info["segments_per_plane"]
        else:
            assert _tiff.READ_STATS.bytes_read == data.nbytes
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("nz", [1, 6, 7])
def test_streamed_imagej_equals_the_chunked_path(tmp_path, dtype, nz):
    # the chunked path is checked against a pixel-by-pixel ImageJ reference elsewhere
    data = blobs((nz, 33, 20), dtype, seed=nz)
    path = imwrite(tmp_path / "s.tif", data, rowsperstrip=5)
    s = zchunk.open(path, memory_limit="20KB")
    chunked = zchunk.Stack(s.data + 0, axes=s.axes)  # derived: not streamed
    for method in ["max", "min", "sum", "mean"]:
        out = project(s, method, like="imagej")
        # ImageJ 1.54's 32-bit Average needs a count of non-NaN values: not streamed
        assert _streamed(out.data) == (dtype != "float32" or method != "mean")
        ref = project(chunked, method, like="imagej").data
        assert not _streamed(ref)
        got, want = out.data.compute(), ref.compute()
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_dtype_cast_and_nan(tmp_path):
    data = blobs((6, 30, 25), "float32", seed=1) * 100
    data[3, 4, 5] = np.nan
    path = imwrite(tmp_path / "s.tif", data)
    s = zchunk.open(path, memory_limit="20KB")
    got = project(s, "max").data.compute()
    np.testing.assert_array_equal(got, np.max(data, axis=0))  # NaN propagates, as np.max
    assert np.isnan(got[4, 5])
    u16 = blobs((6, 30, 25), "uint16", seed=2)
    s = zchunk.open(imwrite(tmp_path / "u.tif", u16), memory_limit="20KB")
    out = project(s, "mean", dtype="uint8")
    assert _streamed(out.data)
    want = np.clip(np.rint(u16.mean(axis=0)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out.data.compute(), want)


def test_timelapse_along_z_and_t(tmp_path):
    data = blobs((3, 5, 24, 30), "uint16", seed=4)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    s = zchunk.open(str(path), memory_limit="30KB")
    z = project(s, "max", axis="z")
    t = project(s, "sum", axis="t")
    assert _streamed(z.data)
    assert _streamed(t.data)
    assert (z.axes, t.axes) == ("tyx", "zyx")
    np.testing.assert_array_equal(z.data.compute(), data.max(axis=1))
    np.testing.assert_array_equal(t.data.compute(), data.sum(axis=0))


def test_folder_streams(tmp_path):
    from zchunk.testing import write_tiff_sequence

    folder = tmp_path / "seq"
    write_tiff_sequence(str(folder), (11, 40, 33), "uint16", seed=5)
    s = zchunk.open(str(folder), memory_limit="40KB")
    ref = np.stack([tifffile.imread(p) for p in sorted(folder.iterdir())])
    many = project_many(s, ["max", "min", "mean"])
    assert all(_streamed(m.data) for m in many.values())
    got = dask.compute(*(m.data for m in many.values()))
    for method, g in zip(many, got, strict=True):
        np.testing.assert_array_equal(g, getattr(np, method)(ref, axis=0))


def test_each_byte_read_once_for_all_methods(tmp_path):
    data = blobs((8, 200, 64), "uint16", seed=6)
    path = imwrite(tmp_path / "s.tif", data)
    s = zchunk.open(path, memory_limit="200KB")
    many = project_many(s, ["max", "min", "sum", "mean"])
    assert many["max"].data.npartitions > 1
    _tiff.READ_STATS.reset()
    dask.compute(*(m.data for m in many.values()), scheduler="threads")
    assert _tiff.READ_STATS.bytes_read == data.nbytes


def test_bands_are_taller_than_chunks_and_within_budget(tmp_path):
    # 60 planes x 256 rows x 512 columns: chunks of the whole z are a few rows; a running max
    # holds one plane of its band, so its bands are tall, but still several per worker
    data = blobs((60, 256, 512), "uint16", seed=8)
    path = imwrite(tmp_path / "s.tif", data)
    s = zchunk.open(path, memory_limit="4MiB")
    out = project(s, "max").data
    assert max(out.chunks[0]) > 4 * max(s.data.chunks[1])
    assert len(out.chunks[0]) >= 2
    plane_bytes = max(out.chunks[0]) * 512 * 2
    assert plane_bytes * 2 * s.plan.workers * 3 <= 4 * 2**20  # buffer + running max
    np.testing.assert_array_equal(out.compute(), data.max(axis=0))


def test_not_streamed_when_derived_or_not_tiff(tmp_path):
    data = blobs((5, 20, 20), "uint16", seed=9)
    path = imwrite(tmp_path / "s.tif", data)
    s = zchunk.open(path)
    derived = zchunk.Stack(s.data * 2, axes="zyx", attrs=s.attrs, source=s.source)
    assert s.source is not None
    assert derived.source is None  # the source describes the array it opened only
    assert not _streamed(project(derived, "max").data)
    assert not _streamed(project(zchunk.open(data), "max").data)
    assert not _streamed(project_many(s, ["max", "median"])["max"].data)  # one read for both


@pytest.mark.parametrize("method", ["max", "median"])
def test_errors_surface_from_the_stream(tmp_path, method):
    # a strip damaged before the file is opened (size, mtime and header as they are): only
    # decoding it inside the streamed pass can find it
    data = blobs((6, 40, 30), "uint16", seed=10)
    path = imwrite(tmp_path / "s.tif", data, compression="zlib", rowsperstrip=8)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[4]
        at = page.dataoffsets[2] + page.databytecounts[2] // 2
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\xff" * 8)
    s = zchunk.open(path)
    result = project(s, method).data
    assert _streamed(result) or _banded(result)
    with pytest.raises(CorruptDataError, match=r"s\.tif.*cannot decode segment 2"):
        result.compute()


def _banded(array):
    return any(str(k[0]).startswith("zchunk-bands-") for k in dict(array.__dask_graph__()))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("layout", list(TIFF_LAYOUTS))
def test_banded_projections_equal_numpy_on_every_layout(tmp_path, monkeypatch, layout, dtype):
    from zchunk.ops import projection

    monkeypatch.setattr(projection, "BAND_BYTES", 2000)  # several bands in every chunk
    data = blobs(SHAPE, dtype, seed=12)
    path = imwrite(tmp_path / "s.tif", data, **TIFF_LAYOUTS[layout])
    s = zchunk.open(path, memory_limit="60KB")
    many = project_many(s, ["median", "percentile", "max", "std"], q=90)
    assert all(_banded(m.data) for m in many.values())
    _tiff.READ_STATS.reset()
    got = dask.compute(*(m.data for m in many.values()), scheduler="threads")
    layout_info = s.attrs["layout"]
    if layout_info["compression"] != "none" or layout_info["tiled"]:  # each segment decoded once
        assert _tiff.READ_STATS.segments_decoded == SHAPE[0] * layout_info["segments_per_plane"]
    np.testing.assert_array_equal(got[0], np.median(data, axis=0))
    np.testing.assert_array_equal(got[1], np.percentile(data, 90, axis=0))
    np.testing.assert_array_equal(got[2], np.max(data, axis=0))
    np.testing.assert_allclose(got[3], np.std(data, axis=0), rtol=1e-6)


def test_prefetch_probes_until_the_first_uncached_range(tmp_path, monkeypatch):
    # a probe of an uncached page makes the kernel read it: probing must stop at the first miss
    data = blobs((6, 40, 30), "uint16", seed=11)
    path = imwrite(tmp_path / "s.tif", data)
    s = zchunk.open(path)
    reader = s.source.reader
    spec = _tiff.block_reader(reader.layout, reader.lead_shape)(
        (slice(0, 6), slice(0, 40), slice(0, 30))
    )
    probes, asked = [], []
    monkeypatch.setattr(_tiff, "_is_cached", lambda fd, off: probes.append(off) or len(probes) < 3)
    real = os.posix_fadvise
    monkeypatch.setattr(
        _tiff.os,
        "posix_fadvise",
        lambda fd, off, n, advice: (
            asked.append(off) if advice == os.POSIX_FADV_WILLNEED else None,
            real(fd, off, n, advice),
        )[1],
    )
    with _tiff._opened(spec) as fds:
        planes = _tiff._Planes(spec, fds, _tiff._Tally())
        assert planes.prefetch(range(6), probe=True) is False
    assert len(probes) == 3  # two hits, then the miss; no probe after it
    assert len(asked) == 4  # the missed range and every one after it
    asked.clear()
    probes.clear()
    monkeypatch.setattr(_tiff, "_is_cached", lambda fd, off: True)
    with _tiff._opened(spec) as fds:
        assert _tiff._Planes(spec, fds, _tiff._Tally()).prefetch(range(6), probe=True) is True
    assert asked == []  # all cached: nothing asked


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.bool_])
@pytest.mark.parametrize("method", ["sum", "mean"])
def test_integer_sums_add_32_bit_partials_and_widen_once_per_block(dtype, method):
    """A partial sum holds `block` planes; more planes flush it into the 64-bit total."""
    import dataclasses

    from zchunk.ops._methods import _PartialSum, _sum_running

    info = np.iinfo(dtype) if dtype != np.bool_ else None
    rng = np.random.default_rng(5)
    lo, hi = (info.min, info.max) if info else (0, 1)
    planes = rng.integers(lo, hi, (11, 4, 5), endpoint=True).astype(dtype)
    planes[:3] = hi  # the extreme value, as often as a block holds it
    running = _sum_running(method, "numpy", np.dtype(dtype))
    assert running.partial is not None
    assert running.block * max(abs(lo), hi) <= np.iinfo(running.partial).max  # cannot overflow
    for block in (running.block, 3, 1):  # 3 and 1: flushes inside the stack
        r = dataclasses.replace(running, block=block)
        acc = r.start(planes[0])
        assert isinstance(acc, _PartialSum)
        assert acc.partial.dtype.itemsize == 4
        for plane in planes[1:]:
            r.add(acc, plane)
        got = r.finish(acc, len(planes))
        expected = getattr(np, method)(planes, axis=0)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
