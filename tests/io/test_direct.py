"""O_DIRECT plane streams of cold files: the planes the page cache gives, or not taken at all."""

import errno
import fcntl
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

import zchunk
from zchunk._direct import set_direct
from zchunk.errors import CorruptDataError
from zchunk.io import _direct, _tiff
from zchunk.testing import TIFF_LAYOUTS, blobs, imwrite, takes_o_direct

SHAPE = (11, 90, 130)  # odd sizes: bands of several strips, rows not a multiple of a page


@pytest.fixture
def cold(monkeypatch, tmp_path):
    """Every plane stream finds its file uncached; returns the list of streams read directly."""
    if not takes_o_direct(tmp_path):
        pytest.skip("the file system of tmp_path has no O_DIRECT")
    used = []

    class Spy(_direct.DirectRanges):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            used.append(len(self.ranges))

    monkeypatch.setattr(_tiff, "_is_cached", lambda fd, offset: False)
    monkeypatch.setattr(_tiff, "DIRECT_MIN_READ", 1)
    monkeypatch.setattr(_tiff, "DIRECT_MIN_BLOCK_READ", 1)
    monkeypatch.setattr(_tiff, "DirectRanges", Spy)
    return used


@pytest.fixture
def blocks_read(monkeypatch):
    """The blocks (read_block, stream_bands) read with O_DIRECT: their plane counts."""
    read = []
    real = _tiff._Planes.read_direct

    def spy(self, direct, targets):
        read.append(len(self.fds))
        return real(self, direct, targets)

    monkeypatch.setattr(_tiff._Planes, "read_direct", spy)
    return read


def _results(path, budget):
    s = zchunk.open(path, memory_limit=budget)
    top = zchunk.project(s, "max").data.compute()
    smooth = zchunk.filter(s, "gaussian", sigma=1.5, dtype=s.dtype).data.compute()
    edges = zchunk.filter(s, "sobel", per_plane=True).data.compute()
    middle = zchunk.project(s, "median").data.compute()  # bands of whole blocks
    return top, smooth, edges, middle, s.data.compute()


@pytest.mark.parametrize("layout", ["contiguous", "striped-raw"])
@pytest.mark.parametrize("dtype", ["uint8", ">u2", "float32"])
def test_direct_reads_give_the_planes_of_the_page_cache(tmp_path, cold, monkeypatch, layout, dtype):
    data = blobs(SHAPE, np.dtype(dtype).newbyteorder("="), seed=5).astype(dtype)
    path = imwrite(tmp_path / "s.tif", data, **TIFF_LAYOUTS[layout])
    direct = _results(path, "200KB")  # several bands: ranges start inside strips
    assert cold, "no stream was read with O_DIRECT"
    np.testing.assert_array_equal(direct[0], data.max(axis=0))
    np.testing.assert_array_equal(direct[4], data)
    monkeypatch.setattr(_tiff, "DIRECT_READS", False)
    cold.clear()
    cached = _results(path, "200KB")
    assert not cold
    for a, b in zip(direct, cached, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_system_without_o_direct_reads_as_before(tmp_path, cold, monkeypatch):
    data = blobs(SHAPE, "uint16", seed=6)
    path = imwrite(tmp_path / "s.tif", data)
    monkeypatch.setattr(_tiff, "set_direct", lambda fds: False)
    s = zchunk.open(path, memory_limit="200KB")
    np.testing.assert_array_equal(zchunk.project(s, "max").data.compute(), data.max(axis=0))
    assert not cold


def test_a_cached_file_is_read_from_the_cache(tmp_path, monkeypatch):
    data = blobs(SHAPE, "uint16", seed=7)
    path = imwrite(tmp_path / "s.tif", data)  # just written: in the page cache
    monkeypatch.setattr(_tiff, "DIRECT_MIN_READ", 1)
    monkeypatch.setattr(_tiff, "set_direct", lambda fds: pytest.fail("O_DIRECT for cached data"))
    s = zchunk.open(path)
    np.testing.assert_array_equal(zchunk.project(s, "max").data.compute(), data.max(axis=0))


def test_set_direct_changes_no_file_when_one_refuses(tmp_path, monkeypatch):
    fds = []
    for name in "ab":
        (tmp_path / name).write_bytes(b"\0" * 8192)
        fds.append(os.open(tmp_path / name, os.O_RDONLY))
    real = fcntl.fcntl

    def refuse_second(fd, cmd, arg=0):
        if fd == fds[1] and cmd == fcntl.F_SETFL:
            raise OSError(22, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", refuse_second)
    try:
        assert not set_direct(fds)
        assert not any(real(fd, fcntl.F_GETFL) & os.O_DIRECT for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


def _ranges(tmp_path, nbytes):
    path = tmp_path / "raw"
    data = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY)
    if not set_direct([fd]):
        os.close(fd)
        pytest.skip("the file system of tmp_path has no O_DIRECT")
    return fd, data, str(path)


def test_ranges_at_any_offset(tmp_path):
    fd, data, path = _ranges(tmp_path, 50_000)
    ranges = [(0, 10), (1, 4095), (4095, 2), (4096, 4096), (333, 20_000), (49_990, 10)]
    try:
        reader = _direct.DirectRanges([fd] * len(ranges), ranges, [path] * len(ranges), depth=2)
        got = [bytes(r) for r in reader]
    finally:
        os.close(fd)
    assert got == [data[o : o + n].tobytes() for o, n in ranges]


def test_a_range_past_the_end_is_a_truncated_file(tmp_path):
    fd, _, path = _ranges(tmp_path, 10_000)
    ranges = [(0, 100), (9_000, 2_000)]
    try:
        reader = iter(_direct.DirectRanges([fd] * 2, ranges, [path] * 2, depth=2))
        next(reader)
        with pytest.raises(CorruptDataError, match=r"truncated.*ends after 1000"):
            next(reader)
    finally:
        os.close(fd)
    assert not any(t.name == "zchunk-direct-read" for t in threading.enumerate())


def test_closing_the_stream_early_stops_the_reader(tmp_path):
    fd, data, path = _ranges(tmp_path, 1 << 20)
    ranges = [(i * 4096, 4096) for i in range(256)]
    try:
        reader = iter(_direct.DirectRanges([fd] * 256, ranges, [path] * 256, depth=3))
        assert bytes(next(reader)) == data[:4096].tobytes()
        reader.close()
    finally:
        os.close(fd)
    assert not any(t.name == "zchunk-direct-read" for t in threading.enumerate())


def test_a_big_endian_file_streams_native_planes(tmp_path, cold):
    data = blobs(SHAPE, "uint16", seed=8)
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, data.astype(">u2"), byteorder=">", photometric="minisblack")
    s = zchunk.open(path)
    np.testing.assert_array_equal(zchunk.project(s, "max").data.compute(), data.max(axis=0))
    assert cold


def test_the_cache_probe_moves_from_run_to_run(tmp_path, cold, monkeypatch):
    # probing an uncached page reads it into the cache: a probe of a fixed byte would find
    # the page the last run's probe brought in, and a cold file would be read as a warm one
    data = blobs(SHAPE, "uint16", seed=9)
    path = imwrite(tmp_path / "s.tif", data)
    probed = []
    monkeypatch.setattr(_tiff, "_is_cached", lambda fd, offset: probed.append(offset) or False)
    s = zchunk.open(path)
    for _ in range(3):
        np.testing.assert_array_equal(zchunk.project(s, "max").data.compute(), data.max(axis=0))
    assert len(probed) == 3
    assert len(set(probed)) == 3
    assert len(cold) == 3


def test_planes_too_large_to_hold_two_are_read_through_the_cache(tmp_path, cold, monkeypatch):
    data = blobs(SHAPE, "uint16", seed=10)
    path = imwrite(tmp_path / "s.tif", data)
    monkeypatch.setattr(_tiff, "STREAM_AHEAD_BYTES", 2 * SHAPE[1] * SHAPE[2] * 2 - 2)
    s = zchunk.open(path)
    np.testing.assert_array_equal(zchunk.project(s, "max").data.compute(), data.max(axis=0))
    assert not cold


CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"


@pytest.mark.parametrize(
    "name",
    [
        "imagej/stack_uint8.tif",  # ImageJ 1.x: big-endian, planes back to back
        "imagej/stack_uint16.tif",
        "imagej/stack_float32.tif",
        "imagej/hyperstack_tzcyx.tif",
        "bfconvert_z/zsplit_Z0.ome.tif",  # Bio-Formats: one plane per file
        "mmstack/mm_MMStack_Pos0.ome.tif",  # Micro-Manager: split across two files
        "tiffcp/striped_uint16.tif",  # libtiff: raw strips of 3 rows
        "imagemagick_seq",  # ImageMagick: a folder of single-page files, pixels at byte 8
    ],
)
def test_files_of_other_tools_stream_the_same_planes_directly(cold, blocks_read, monkeypatch, name):
    s = zchunk.open(CORPUS / name)
    monkeypatch.setattr(_tiff, "DIRECT_READS", False)
    expected = s.data.compute()  # through the page cache
    monkeypatch.setattr(_tiff, "DIRECT_READS", True)
    z = s.axes.index("z")
    np.testing.assert_array_equal(zchunk.project(s, "max").data.compute(), expected.max(axis=z))
    assert cold, "no stream was read with O_DIRECT"
    np.testing.assert_array_equal(s.data.compute(), expected)
    median = zchunk.project(s, "median", like="numpy").data.compute()
    np.testing.assert_array_equal(median, np.median(expected, axis=z).astype(median.dtype))
    assert blocks_read, "no block was read with O_DIRECT"


def test_blocks_and_median_bands_of_a_cold_file_are_read_directly(tmp_path, cold, blocks_read):
    data = blobs(SHAPE, "uint16", seed=12)
    path = imwrite(tmp_path / "s.tif", data, **TIFF_LAYOUTS["striped-raw"])
    s = zchunk.open(path, memory_limit="300KB")  # several blocks, several bands each
    np.testing.assert_array_equal(s.data.compute(), data)
    assert len(blocks_read) == len(s.data.to_delayed().ravel())
    blocks_read.clear()
    middle = zchunk.project(s, "median").data.compute()
    np.testing.assert_array_equal(middle, np.median(data, axis=0).astype(data.dtype))
    assert blocks_read, "the median's bands were not read with O_DIRECT"


def test_blocks_of_short_plane_ranges_are_read_through_the_cache(
    tmp_path, cold, blocks_read, monkeypatch
):
    data = blobs(SHAPE, "uint16", seed=13)
    path = imwrite(tmp_path / "s.tif", data)
    monkeypatch.setattr(_tiff, "DIRECT_MIN_BLOCK_READ", SHAPE[1] * SHAPE[2] * 2 + 1)
    s = zchunk.open(path)
    np.testing.assert_array_equal(s.data.compute(), data)
    np.testing.assert_array_equal(
        zchunk.project(s, "median").data.compute(), np.median(data, axis=0).astype(data.dtype)
    )
    assert not blocks_read


def _refusing_direct(monkeypatch, name):
    """Make ``os.<name>`` refuse (EINVAL) every call on a descriptor with O_DIRECT on."""
    real, refused = getattr(os, name), []

    def call(fd, *args):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, *args)

    monkeypatch.setattr(os, name, call)
    return refused


def test_reads_refused_after_the_flag_was_taken_go_through_the_cache(tmp_path, monkeypatch):
    # some file systems (FUSE, network mounts, blocks over 4 KiB) take O_DIRECT, then refuse
    fd, data, path = _ranges(tmp_path, 50_000)
    refused = _refusing_direct(monkeypatch, "preadv")
    ranges = [(1, 4095), (333, 20_000), (49_990, 10)]
    try:
        got = [bytes(r) for r in _direct.DirectRanges([fd] * 3, ranges, [path] * 3, depth=2)]
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)
    assert refused == [fd]  # refused once, then read through the cache
    assert got == [data[o : o + n].tobytes() for o, n in ranges]


def test_a_stack_whose_direct_reads_are_refused_projects_exactly(tmp_path, cold, monkeypatch):
    data = blobs(SHAPE, "uint16", seed=10)
    path = imwrite(tmp_path / "s.tif", data)
    refused = _refusing_direct(monkeypatch, "preadv")
    s = zchunk.open(path, memory_limit="200KB")
    np.testing.assert_array_equal(zchunk.project(s, "max").data.compute(), data.max(axis=0))
    assert cold, "no stream was read with O_DIRECT"
    assert refused
