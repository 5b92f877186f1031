"""Early write-back: every block's files are flushed by a background thread as they are stored."""

import os

import dask.array as da
import numpy as np
import pytest

from zchunk.sinks import _flush, to_ome_zarr, to_zarr
from zchunk.stack import Stack


@pytest.fixture
def flushed(monkeypatch):
    """The files the background thread flushed (not the commit's own fsyncs)."""
    paths: list[str] = []
    fsync = _flush._fsync

    def recording_fsync(path):
        if os.path.exists(path):
            paths.append(path)
        fsync(path)

    assert _flush.wait_flushed(10)
    monkeypatch.setattr(_flush, "_fsync", recording_fsync)
    yield paths
    assert _flush.wait_flushed(10)


@pytest.mark.parametrize("writer", ["zarr", "ome-zarr-0.4"])
def test_every_block_file_is_flushed_as_it_is_stored(tmp_path, writer, flushed):
    stack = Stack(
        da.from_array(np.arange(4 * 40 * 20, dtype="uint16").reshape(4, 40, 20), chunks=(4, 8, 20))
    )
    if writer == "zarr":
        out = to_zarr(stack, tmp_path / "a.zarr")
        array_dir = out / "c"
    else:
        out = to_ome_zarr(stack, tmp_path / "a.ome.zarr", ngff_version="0.4")
        array_dir = out / "0"
    assert _flush.wait_flushed(10)
    stored = {
        p.relative_to(out).as_posix()
        for p in array_dir.rglob("*")
        if p.is_file() and not p.name.startswith(".z")
    }
    partial = tmp_path / f".{out.name}.zchunk-partial"
    seen = {os.path.relpath(p, partial) for p in flushed if p.startswith(os.fspath(partial))}
    assert len(stored) == (5 if writer == "zarr" else 20)  # 5 shards; 5 x 4 plane chunks
    assert stored <= seen


def test_a_file_that_is_gone_does_not_stop_the_flushes(tmp_path, flushed):
    kept = tmp_path / "kept"
    kept.write_bytes(b"x")
    _flush.flush_soon([os.fspath(tmp_path / "gone"), os.fspath(kept)])
    assert _flush.wait_flushed(10)
    assert flushed == [os.fspath(kept)]
