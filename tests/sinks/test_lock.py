"""One run per output: a second run on the same output is refused while the first one lives."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from zchunk._partial import partial_path
from zchunk.cli import main
from zchunk.errors import OutputInUseError
from zchunk.sinks._lock import fence_of, lock_path, output_lock
from zchunk.testing import blobs

ARGS = ["gaussian", "--memory-limit", "100KB", "--workers", "1", "--quiet"]


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src.tif"
    tifffile.imwrite(path, blobs((8, 1024, 64), "uint16", seed=5), photometric="minisblack")
    return path


def _cli(*argv):
    return [sys.executable, "-m", "zchunk", "filter", *map(str, argv)]


def _wait_for(path, proc, timeout=60.0):
    """Wait until folder `path` holds a file (a block record)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and os.listdir(path)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.005)


def _wait_stopped(proc, timeout=30.0):
    """Wait until `proc` is stopped (state T in /proc), so that it writes nothing more."""
    deadline = time.monotonic() + timeout
    stat = f"/proc/{proc.pid}/stat"
    while Path(stat).read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        assert time.monotonic() < deadline, f"pid {proc.pid} did not stop"
        time.sleep(0.001)


def _tree(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.timeout(120)
def test_second_run_on_the_same_output_is_refused(src, tmp_path):
    ref = tmp_path / "ref.zarr"
    assert main(["filter", str(src), *ARGS, "--sigma", "1", "-o", str(ref)]) == 0
    out = tmp_path / "o.zarr"
    first = subprocess.Popen(_cli(src, *ARGS, "--sigma", "1", "-o", out), stderr=subprocess.PIPE)
    try:
        # stop the first run once it writes blocks: it still holds its lock
        _wait_for(out.with_name(".o.zarr.zchunk-partial") / ".zchunk-record" / "blocks", first)
        first.send_signal(signal.SIGSTOP)
        _wait_stopped(first)  # the signal is asynchronous: its writes may still be landing
        partial = _tree(out.with_name(".o.zarr.zchunk-partial"))
        for extra in (
            ["--sigma", "3", "--overwrite"],
            ["--sigma", "1", "--resume"],
            ["--sigma", "1"],
        ):
            argv = _cli(src, *ARGS, *extra, "-o", out)
            second = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            host = socket.gethostname()
            assert f"in use by pid {first.pid} on {host} since " in lines[0]
            assert ".o.zarr.zchunk-lock" in lines[0]
        assert _tree(out.with_name(".o.zarr.zchunk-partial")) == partial  # untouched
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    np.testing.assert_array_equal(zarr.open_array(out)[:], zarr.open_array(ref)[:])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".o.zarr.zchunk-done",
        ".ref.zarr.zchunk-done",
        "o.zarr",
        "ref.zarr",
        "src.tif",
    ]


@pytest.mark.timeout(120)
def test_the_lock_dies_with_its_process(src, tmp_path):
    out = tmp_path / "o.tif"
    first = subprocess.Popen(_cli(src, *ARGS, "--sigma", "1", "-o", out), stderr=subprocess.PIPE)
    _wait_for(out.with_name(".o.tif.zchunk-partial.zchunk-record") / "blocks", first)
    first.kill()
    first.communicate()
    assert lock_path(out).exists()  # the file stays, its lock does not
    assert main(["filter", str(src), *ARGS, "--sigma", "1", "-o", str(out), "--resume"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.tif.zchunk-done", "o.tif", "src.tif"]


def test_lock_is_reentrant_in_a_thread_and_removed_after(tmp_path):
    out = tmp_path / "a.zarr"
    with output_lock(out), output_lock(out):
        holder = json.loads(lock_path(out).read_text())
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
    assert not lock_path(out).exists()


def test_without_flock_the_lock_file_is_the_lock(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "a.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    here = socket.gethostname()
    for holder, refused in [
        ({"host": here, "pid": int(dead.stdout), "since": "then"}, False),  # gone: taken over
        ({"host": here, "pid": os.getppid(), "since": "then"}, True),  # alive here
        ({"host": "elsewhere", "pid": 1, "since": "then"}, True),  # unknown: refused
    ]:
        lock_path(out).write_text(json.dumps(holder))
        if refused:
            match = f"in use by pid {holder['pid']} on"
            with pytest.raises(OutputInUseError, match=match), output_lock(out):
                pass
        else:
            with output_lock(out):
                assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_the_token_is_flushed_before_the_lock_is_handed_out(tmp_path, monkeypatch):
    # a cluster worker on another host checks the token by reading the lock file (Fence.held);
    # an NFS client keeps a write in its cache until fsync or close, and the run keeps the
    # file open: unflushed, the server holds an empty file and every worker's check fails
    out = tmp_path / "a.zarr"
    flushed: list[bytes] = []
    fsync = os.fsync

    def recording_fsync(fd):
        flushed.append(os.pread(fd, 4096, 0))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with output_lock(out):
        fence = fence_of(partial_path(out))
        assert fence is not None
        assert fence.held()
        assert any(json.loads(text or b"null") == json.loads(lock_path(out).read_bytes())
                   for text in flushed), flushed  # fmt: skip
