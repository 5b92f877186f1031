from __future__ import annotations

import os
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from zchunk.errors import OutputExistsError, ZChunkError
from zchunk.sinks import save, to_ome_zarr, to_tiff, to_zarr
from zchunk.sinks._done import done_path
from zchunk.stack import Stack
from zchunk.testing import blobs

UM = "micrometer"


def make_stack(shape=(4, 30, 20), chunks=(4, 8, 20), dtype=np.uint16, **fields):
    a = blobs(shape, dtype, seed=7)
    return Stack(da.from_array(a, chunks=chunks), **fields), a


def read_back(path):
    """Pixels of any output, whatever its format."""
    name = path.name.lower()
    if name.endswith(".ome.zarr"):
        return zarr.open_group(path, mode="r")["0"][:]
    if name.endswith(".zarr"):
        return zarr.open_array(path, mode="r")[:]
    return tifffile.imread(path)


WRITERS = {
    "tiff": lambda s, p, **kw: to_tiff(s, p / "out.tif", **kw),
    "tiff-zlib": lambda s, p, **kw: to_tiff(s, p / "out.tif", compression="zlib", **kw),
    "ome-tiff": lambda s, p, **kw: to_tiff(s, p / "out.ome.tif", ome=True, **kw),
    "zarr": lambda s, p, **kw: to_zarr(s, p / "out.zarr", **kw),
    "ome-zarr": lambda s, p, **kw: to_ome_zarr(s, p / "out.ome.zarr", **kw),
    "ome-zarr-0.4": lambda s, p, **kw: to_ome_zarr(s, p / "out.ome.zarr", ngff_version="0.4", **kw),
}


# --- format from the suffix ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("max.tif", lambda t: t.is_imagej),
        ("max.TIFF", lambda t: t.is_imagej),
        ("max.ome.tif", lambda t: t.is_ome),
        ("max.OME.tiff", lambda t: t.is_ome),
    ],
)
def test_save_tiff_suffixes(tmp_path, name, check):
    stack, a = make_stack()
    out = save(stack, tmp_path / name)
    assert out == tmp_path / name
    with tifffile.TiffFile(out) as tif:
        assert check(tif)
        np.testing.assert_array_equal(tif.series[0].asarray(), a)


def test_save_passes_compression_to_tiff(tmp_path):
    stack, a = make_stack()
    out = save(stack, tmp_path / "a.tif", compression="zstd")
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ZSTD
        np.testing.assert_array_equal(tif.asarray(), a)


def test_save_zarr_and_ome_zarr(tmp_path):
    stack, a = make_stack()
    z = zarr.open_array(save(stack, tmp_path / "a.zarr"), mode="r")
    np.testing.assert_array_equal(z[:], a)
    group = zarr.open_group(save(stack, tmp_path / "b.ome.zarr"), mode="r")
    assert group.attrs["ome"]["version"] == "0.5"
    np.testing.assert_array_equal(group["0"][:], a)


@pytest.mark.parametrize("name", ["out.png", "out", "out.tif.bak", ".tif", "out.n5"])
def test_save_unknown_suffix(tmp_path, name):
    stack, _ = make_stack()
    with pytest.raises(ValueError, match=r"cannot tell the output format of .* use one of") as e:
        save(stack, tmp_path / name)
    assert name in str(e.value)
    assert ".ome.zarr" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a.zarr", "a.ome.zarr"])
def test_save_refuses_compression_for_zarr(tmp_path, name):
    stack, _ = make_stack()
    with pytest.raises(ValueError, match="applies to TIFF outputs only"):
        save(stack, tmp_path / name, compression="zlib")
    assert list(tmp_path.iterdir()) == []


def test_save_creates_missing_parent_folders(tmp_path):
    stack, a = make_stack()
    out = save(stack, tmp_path / "results" / "run1" / "max.tif")
    np.testing.assert_array_equal(tifffile.imread(out), a)


def test_relative_output_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack, _ = make_stack()
    out = save(stack, "rel.zarr")
    assert out == tmp_path / "rel.zarr"
    assert out.is_dir()


# --- atomic outputs ----------------------------------------------------------------------


class Boom(Exception):
    def __init__(self, msg="injected failure"):
        super().__init__(msg)


def failing(stack, exc=Boom, at=(0, 2, 0)):
    """`stack` whose block `at` raises `exc` when computed."""

    def fail(block, block_info=None):
        if tuple(block_info[0]["chunk-location"]) == at:
            raise exc()
        return block

    return stack.replace(data=stack.data.map_blocks(fail, dtype=stack.dtype))


@pytest.mark.parametrize("writer", list(WRITERS))
def test_failure_leaves_no_output_and_no_temporary(tmp_path, writer):
    stack, _ = make_stack()
    with pytest.raises(Boom, match="injected failure"):
        WRITERS[writer](failing(stack), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["tiff", "tiff-zlib", "zarr"])
def test_keyboard_interrupt_leaves_only_a_resumable_partial_output(tmp_path, writer):
    # Ctrl-C keeps the partial output (and its record) for resume=True; no output appears
    stack, a = make_stack()
    interrupted = []

    def interrupt_once(block, block_info=None):
        if block_info[0]["chunk-location"] == (0, 2, 0) and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return block

    stack = stack.replace(data=stack.data.map_blocks(interrupt_once, dtype=stack.dtype))
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        WRITERS[writer](stack, tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[0].endswith(".zchunk-partial")
    assert all(".zchunk-partial" in name for name in left)
    out = WRITERS[writer](stack, tmp_path, resume=True)  # the same stack (same dask graph)
    assert sorted(tmp_path.iterdir()) == [done_path(out), out]
    np.testing.assert_array_equal(read_back(out), a)


def test_failure_with_slow_blocks_in_flight_leaves_nothing(tmp_path):
    # one block fails while others are still being written by other threads: they must not
    # re-create the temporary folder after it was deleted
    stack, _ = make_stack(shape=(4, 64, 20), chunks=(4, 4, 20))
    started = threading.Event()

    def slow(block, block_info=None):
        if block_info[0]["chunk-location"] == (0, 0, 0):
            started.wait(5)
            raise Boom
        started.set()
        threading.Event().wait(0.05)
        return block

    data = stack.data.map_blocks(slow, dtype=stack.dtype)
    with dask.config.set(scheduler="threads", num_workers=4), pytest.raises(Boom):
        to_zarr(stack.replace(data=data), tmp_path / "a.zarr")
    threading.Event().wait(0.3)  # leave time to any straggler
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["tiff", "zarr", "ome-zarr"])
def test_failed_overwrite_keeps_the_old_output(tmp_path, writer):
    stack, a = make_stack()
    out = WRITERS[writer](stack, tmp_path)
    with pytest.raises(Boom):
        WRITERS[writer](failing(stack.replace(data=stack.data + 1)), tmp_path, overwrite=True)
    assert sorted(tmp_path.iterdir()) == [done_path(out), out]
    np.testing.assert_array_equal(read_back(out), a)


def test_output_appearing_during_the_write_is_not_replaced(tmp_path):
    stack, _ = make_stack()
    target = tmp_path / "a.tif"

    def squat(block, block_info=None):
        if block_info[0]["chunk-location"] == (0, 0, 0):
            target.write_text("someone else's")
        return block

    with pytest.raises(OutputExistsError, match="already exists"):
        to_tiff(stack.replace(data=stack.data.map_blocks(squat, dtype=stack.dtype)), target)
    assert target.read_text() == "someone else's"
    assert list(tmp_path.iterdir()) == [target]


# --- overwrite rules ---------------------------------------------------------------------


@pytest.mark.parametrize("writer", list(WRITERS))
def test_existing_output_needs_overwrite(tmp_path, writer):
    stack, a = make_stack()
    out = WRITERS[writer](stack, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(OutputExistsError, match="pass overwrite=True / --overwrite") as e:
        WRITERS[writer](stack.replace(data=stack.data + 1), tmp_path)
    assert str(out) in str(e.value)
    assert isinstance(e.value, ZChunkError)
    assert isinstance(e.value, FileExistsError)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    np.testing.assert_array_equal(read_back(out), a)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_overwrite_replaces(tmp_path, writer):
    stack, a = make_stack()
    WRITERS[writer](stack, tmp_path)
    out = WRITERS[writer](stack.replace(data=stack.data + 1), tmp_path, overwrite=True)
    np.testing.assert_array_equal(read_back(out), a + 1)
    assert sorted(tmp_path.iterdir()) == [done_path(out), out]


def test_overwrite_replaces_a_folder_with_a_file_and_back(tmp_path):
    stack, a = make_stack()
    target = tmp_path / "out.tif"
    target.mkdir()
    (target / "junk").write_text("x")
    save(stack, target, overwrite=True)
    assert target.is_file()
    np.testing.assert_array_equal(tifffile.imread(target), a)
    target = tmp_path / "out.zarr"
    target.write_text("not a zarr")
    save(stack, target, overwrite=True)
    np.testing.assert_array_equal(zarr.open_array(target, mode="r")[:], a)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.tif.zchunk-done",
        ".out.zarr.zchunk-done",
        "out.tif",
        "out.zarr",
    ]


def test_overwrite_a_symlink_replaces_the_link_not_its_target(tmp_path):
    stack, a = make_stack()
    elsewhere = tmp_path / "elsewhere.tif"
    elsewhere.write_text("keep me")
    link = tmp_path / "link.tif"
    link.symlink_to(elsewhere)
    save(stack, link, overwrite=True)
    assert not link.is_symlink()
    assert elsewhere.read_text() == "keep me"
    np.testing.assert_array_equal(tifffile.imread(link), a)


# --- inputs are never overwritten --------------------------------------------------------


def from_inputs(*paths):
    stack, _ = make_stack()
    return stack.replace(attrs={"source_paths": tuple(os.fspath(p) for p in paths)})


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_that_is_the_input_is_refused(tmp_path, overwrite):
    source = tmp_path / "in.tif"
    source.write_bytes(b"original")
    stack = from_inputs(source)
    with pytest.raises(OutputExistsError, match=r"would overwrite the input .*in\.tif"):
        save(stack, source, overwrite=overwrite)
    assert source.read_bytes() == b"original"
    assert list(tmp_path.iterdir()) == [source]


def test_input_reached_through_another_name_is_refused(tmp_path):
    source = tmp_path / "data" / "in.tif"
    source.parent.mkdir()
    source.write_bytes(b"original")
    (tmp_path / "alias").symlink_to(source.parent)
    (tmp_path / "hard.tif").hardlink_to(source)
    stack = from_inputs(source)
    for path in [tmp_path / "alias" / "in.tif", tmp_path / "data" / ".." / "data" / "in.tif"]:
        with pytest.raises(OutputExistsError, match="would overwrite the input"):
            save(stack, path, overwrite=True)
    with pytest.raises(OutputExistsError, match="would overwrite the input"):
        save(stack, tmp_path / "hard.tif", overwrite=True)
    assert source.read_bytes() == b"original"


@pytest.mark.parametrize("name", ["max.tif", "sub/max.zarr", "0.zarr"])
def test_output_inside_an_input_folder_is_refused(tmp_path, name):
    source = tmp_path / "in.zarr"
    source.mkdir()
    (source / "zarr.json").write_text("{}")
    stack = from_inputs(source)
    with pytest.raises(OutputExistsError, match="would overwrite the input"):
        save(stack, source / name, overwrite=True)
    assert sorted(p.name for p in source.iterdir()) == ["zarr.json"]


def test_output_folder_holding_an_input_is_refused(tmp_path):
    source = tmp_path / "results.zarr" / "in.tif"
    source.parent.mkdir()
    source.write_bytes(b"original")
    stack = from_inputs(source)
    with pytest.raises(OutputExistsError, match="holding the input"):
        save(stack, tmp_path / "results.zarr", overwrite=True)
    assert source.read_bytes() == b"original"


def test_output_next_to_the_input_is_fine(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"original")
    stack = from_inputs(source, tmp_path / "in2.tif")
    out = save(stack, tmp_path / "in.tif.zarr")
    assert out.is_dir()
    assert source.read_bytes() == b"original"


def test_source_paths_may_be_a_single_string(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"original")
    stack, _ = make_stack()
    stack = stack.replace(attrs={"source_paths": os.fspath(source)})
    with pytest.raises(OutputExistsError, match="would overwrite the input"):
        save(stack, source, overwrite=True)


@pytest.mark.parametrize("name", ["out.zarr", "out.tif", "out.ome.zarr"])
def test_failed_commit_of_a_folder_overwrite_rolls_back(tmp_path, monkeypatch, name):
    # the old output is moved aside, not deleted, until the new one is in place: when moving
    # the new one in fails, the old one comes back whole
    stack, a = make_stack()
    old = tmp_path / name
    old.mkdir()
    (old / "precious").write_text("old results")
    rename = os.rename
    partial = f".{name}.zchunk-partial"

    def failing_rename(src, dst):
        if os.path.basename(os.fspath(src)) == partial and os.fspath(dst) == os.fspath(old):
            raise OSError(5, "Input/output error")
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="Input/output"):
        save(stack, old, overwrite=True)
    monkeypatch.undo()
    assert (old / "precious").read_text() == "old results"
    assert not [p for p in tmp_path.iterdir() if "zchunk-old" in p.name]
    save(stack, old, overwrite=True, resume=True)  # and the next run replaces it
    np.testing.assert_array_equal(read_back(old), a)
    assert not (old / "precious").exists()


def test_leftovers_of_a_killed_run_with_this_pid_are_cleaned(tmp_path):
    # pids are reused (every run in a container may be pid 1): a killed run's temporaries
    # whose names carry this process's pid are not this run's own
    stack = Stack(da.from_array(blobs((4, 32, 24), np.uint16, seed=3), chunks=(4, 16, 24)))
    final = save(stack, tmp_path / "o.zarr")
    pid = os.getpid()
    final.rename(tmp_path / f".o.zarr.zchunk-old-{pid}-0123abcd")  # moved aside, then killed
    (tmp_path / f".o.zarr.zchunk-tmp-{pid}-89abcdef").write_bytes(b"a page file")
    (tmp_path / f".o.zarr.zchunk-done-new-{pid}-01234567").write_text("{}")
    assert save(stack, tmp_path / "o.zarr", resume=True) == final  # the old output, put back
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.zarr.zchunk-done", "o.zarr"]
    np.testing.assert_array_equal(zarr.open_array(final)[:], stack.data.compute())
