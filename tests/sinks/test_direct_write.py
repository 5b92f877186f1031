"""Zarr shards written with O_DIRECT: the same files as zarr's own writes, atomic, resumable."""

import errno
import fcntl
import os

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

import zchunk
from zchunk.errors import DiskSpaceError
from zchunk.sinks import _written, to_zarr
from zchunk.stack import Stack
from zchunk.testing import blobs, takes_o_direct


@pytest.fixture
def direct(tmp_path, monkeypatch):
    """Every stored file of a zarr output is written with O_DIRECT; the paths written so."""
    if not takes_o_direct(tmp_path):
        pytest.skip("the file system of tmp_path has no O_DIRECT")
    written = []
    real = _written.write_direct

    def spy(path, data):
        done = real(path, data)
        if done:
            written.append(path)
        return done

    monkeypatch.setattr(_written, "DIRECT_MIN_BYTES", 0)
    monkeypatch.setattr(_written, "write_direct", spy)
    return written


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_write_direct_writes_the_bytes_and_replaces_the_file(tmp_path):
    if not takes_o_direct(tmp_path):
        pytest.skip("the file system of tmp_path has no O_DIRECT")
    path = str(tmp_path / "a" / "b" / "shard")
    for size in (1, 4095, 4096, 4097, 100_000):
        data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
        assert _written.write_direct(path, data)
        with open(path, "rb") as f:
            assert f.read() == data  # cut back to its length: no padding left
    assert os.listdir(tmp_path / "a" / "b") == ["shard"]  # no temporary file left


def test_a_zarr_output_written_directly_is_the_same_and_resumes_as_finished(
    tmp_path, direct, monkeypatch
):
    a = blobs((6, 70, 50), "uint16", seed=2)
    stack = Stack(da.from_array(a, chunks=(6, 20, 50)))
    out = to_zarr(stack, tmp_path / "d.zarr")
    assert direct, "no file was written with O_DIRECT"
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], a)
    monkeypatch.setattr(_written, "DIRECT_WRITES", False)
    ref = to_zarr(stack, tmp_path / "c.zarr")
    assert _files(out) == _files(ref)
    for name in _files(out):
        if "zarr.json" not in name:
            with open(os.path.join(out, name), "rb") as f, open(os.path.join(ref, name), "rb") as g:
                assert f.read() == g.read(), name
    # the markers of the finished output match the files on disk (sizes and crc32)
    before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in _files(out)}
    assert to_zarr(stack, tmp_path / "d.zarr", resume=True) == out
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in _files(out)} == before


def test_a_failed_direct_write_keeps_the_partial_output_and_resumes(tmp_path, direct, monkeypatch):
    a = blobs((4, 80, 30), "uint16", seed=4)
    stack = Stack(da.from_array(a, chunks=(4, 10, 30)))
    real, calls = os.pwrite, []

    def full_after_three(fd, data, offset):
        calls.append(fd)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_after_three)
    with dask.config.set(scheduler="synchronous"), pytest.raises(DiskSpaceError):
        to_zarr(stack, tmp_path / "a.zarr")
    leftovers = [n for n in _files(tmp_path) if n.endswith(".partial") and "/c/" in n]
    assert leftovers == []  # the failed shard's temporary file is gone
    monkeypatch.setattr(os, "pwrite", real)
    out = to_zarr(stack, tmp_path / "a.zarr", resume=True)
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], a)


def test_a_file_system_without_o_direct_writes_through_zarr(tmp_path, monkeypatch):
    monkeypatch.setattr(_written, "DIRECT_MIN_BYTES", 0)
    monkeypatch.setattr(_written, "set_direct", lambda fds: False)
    a = blobs((4, 40, 30), "uint16", seed=5)
    out = zchunk.save(Stack(da.from_array(a, chunks=(4, 10, 30))), tmp_path / "a.zarr")
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], a)
    assert not [n for n in _files(out) if n.endswith(".partial")]


def test_a_killed_direct_write_leaves_a_file_that_resume_deletes(tmp_path):
    from zchunk.sinks._atomic import store_temporary
    from zchunk.sinks._stale import remove_store_temporaries

    shard = tmp_path / "c" / "0" / "0"
    shard.parent.mkdir(parents=True)
    left = store_temporary(os.fspath(shard))  # the name write_direct writes under
    with open(left, "wb") as f:
        f.write(b"half a shard")
    remove_store_temporaries(tmp_path)
    assert list(shard.parent.iterdir()) == []


def test_writes_refused_after_the_flag_was_taken_go_through_the_cache(
    tmp_path, direct, monkeypatch
):
    # some file systems (FUSE, network mounts, blocks over 4 KiB) take O_DIRECT, then refuse
    real, refused = os.pwrite, []

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    path = str(tmp_path / "x" / "shard")
    data = np.random.default_rng(1).integers(0, 256, 10_001, dtype=np.uint8).tobytes()
    assert _written.write_direct(path, data)
    with open(path, "rb") as f:
        assert f.read() == data
    a = blobs((4, 40, 30), "uint16", seed=6)
    out = to_zarr(Stack(da.from_array(a, chunks=(4, 10, 30))), tmp_path / "a.zarr")
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], a)
    assert refused
    assert direct
    assert not [n for n in _files(tmp_path) if n.endswith(".partial")]
