"""Early write-back: every block's files are flushed by a background thread as they are stored."""

import os
import signal
import time

import dask.array as da
import numpy as np
import pytest

from zchunk.sinks import _flush, to_ome_zarr, to_zarr
from zchunk.stack import Stack


@pytest.fixture
def flushed(monkeypatch):
    """The files handed to the background thread, once it reached them (not the commit's)."""
    paths: list[str] = []
    fsync = _flush._fsync

    def recording_fsync(path):
        paths.append(path)  # then flush it (or skip it, if it is gone: renamed by the commit)
        fsync(path)

    assert _flush.wait_flushed(10)
    monkeypatch.setattr(_flush, "_fsync", recording_fsync)
    yield paths
    assert _flush.wait_flushed(10)


@pytest.mark.parametrize("writer", ["zarr", "ome-zarr-0.4"])
def test_every_block_file_is_flushed_as_it_is_stored(tmp_path, writer, flushed, monkeypatch):
    from zchunk.sinks import _zarr

    monkeypatch.setattr(_zarr, "MIN_INNER_BYTES", 1)  # one plane per chunk: 4 files per block
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
    assert flushed == [os.fspath(tmp_path / "gone"), os.fspath(kept)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() of a multi-threaded process
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_flushes_even_if_the_parent_held_the_lock(tmp_path):
    # a fork while another thread of the parent holds the lock: the child must not wait on it
    kept = tmp_path / "kept"
    kept.write_bytes(b"x")
    with _flush._LOCK:
        pid = os.fork()
        if pid == 0:  # the child
            code = 2
            try:
                _flush.flush_soon([os.fspath(kept)])
                code = 0 if _flush.wait_flushed(5) else 1
            finally:
                os._exit(code)
    for _ in range(200):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child waited forever for the parent's lock")
    assert os.waitstatus_to_exitcode(status) == 0
