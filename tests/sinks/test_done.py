"""The record of a finished output, and the order of its commit (flush, record, rename)."""

import os
import time

import dask.array as da
import numpy as np
import pytest

from zchunk.sinks import _done, to_tiff, to_zarr
from zchunk.sinks._done import done_path, output_identity
from zchunk.stack import Stack


def make_stack():
    a = np.arange(4 * 16 * 8, dtype=np.uint16).reshape(4, 16, 8)
    return Stack(da.from_array(a, chunks=(4, 4, 8)))


@pytest.mark.parametrize("name", ["o.tif", "o.zarr"])
def test_the_output_is_on_disk_before_its_record_vouches_for_it(tmp_path, monkeypatch, name):
    # power loss: a record (and the final name) must never reach the disk before the pixels
    events: list[tuple[str, str]] = []
    real_fsync, real_record = os.fsync, _done._write_json_atomically

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def record(path, value):
        events.append(("record", os.fspath(path)))
        real_record(path, value)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_done, "_write_json_atomically", record)
    writer = to_tiff if name.endswith(".tif") else to_zarr
    out = writer(make_stack(), tmp_path / name)
    order = [kind for kind, _ in events]
    at = order.index("record")
    partial = tmp_path / f".{name}.zchunk-partial"
    flushed = {path for kind, path in events[:at] if kind == "fsync"}
    stored = [os.fspath(partial)] if out.is_file() else []
    stored += [os.fspath(partial / p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    assert stored
    assert set(stored) <= flushed  # every stored file, flushed before the record
    assert ("fsync", os.fspath(tmp_path)) in events[at:]  # and the new name after the rename


def test_identity_changes_when_the_output_does(tmp_path):
    out = to_zarr(make_stack(), tmp_path / "o.zarr")
    before = output_identity(out)
    assert before == output_identity(out)
    shard = next(p for p in out.rglob("*") if p.is_file() and p.parent.name != "o.zarr")
    data = shard.read_bytes()
    time.sleep(0.05)  # file times advance in clock ticks (a few ms)
    shard.write_bytes(data)  # same bytes, rewritten: its mtime changes
    assert output_identity(out) != before
    assert done_path(out).is_file()
