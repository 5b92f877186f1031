"""Resumable outputs: interrupted writes (exceptions, SIGKILL) continue bit for bit."""

from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

import zchunk
from zchunk.cli import main
from zchunk.errors import (
    DiskSpaceError,
    IncompleteOutputError,
    OutputExistsError,
    PartialOutputError,
    ResumeMismatchError,
    SourceNotFoundError,
)
from zchunk.ops.projection import project_many
from zchunk.sinks import _resume, save, save_many, to_ome_zarr, to_tiff, to_zarr
from zchunk.stack import Stack
from zchunk.testing import blobs

if TYPE_CHECKING:
    from pathlib import Path

WRITERS = {
    "zarr": lambda s, d, **kw: to_zarr(s, d / "out.zarr", **kw),
    "ome-zarr": lambda s, d, **kw: to_ome_zarr(s, d / "out.ome.zarr", **kw),
    "ome-zarr-0.4": lambda s, d, **kw: to_ome_zarr(s, d / "out.ome.zarr", ngff_version="0.4", **kw),
    "tiff": lambda s, d, **kw: to_tiff(s, d / "out.tif", **kw),
    "tiff-zlib": lambda s, d, **kw: to_tiff(s, d / "out.tif", compression="zlib", **kw),
    "ome-tiff-zstd": lambda s, d, **kw: to_tiff(
        s, d / "out.ome.tif", ome=True, compression="zstd", **kw
    ),
}
FINAL = {
    "zarr": "out.zarr",
    "ome-zarr": "out.ome.zarr",
    "ome-zarr-0.4": "out.ome.zarr",
    "tiff": "out.tif",
    "tiff-zlib": "out.tif",
    "ome-tiff-zstd": "out.ome.tif",
}


def partial_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.zchunk-partial")


def blocks_dir(path: Path, folder: bool | None = None) -> Path:
    """The block records of the partial output of `path` (inside it, or next to it)."""
    partial = partial_of(path)
    if partial.is_dir() if folder is None else folder:
        return partial / ".zchunk-record" / "blocks"
    return partial.with_name(partial.name + ".zchunk-record") / "blocks"


def _bytes(path: Path) -> bytes:
    # an OME-TIFF names itself with a random UUID, different in every run
    return re.sub(rb'UUID="urn:uuid:[0-9a-f-]+"', b'UUID=""', path.read_bytes())


def tree(path: Path) -> dict[str, bytes]:
    """Every file of an output (a file, or a folder) by relative name, with its bytes."""
    if path.is_file():
        return {path.name: _bytes(path)}
    return {str(p.relative_to(path)): _bytes(p) for p in sorted(path.rglob("*")) if p.is_file()}


class Interrupt:
    """Count the computations of each block; raise `exc` at the `after`-th one, once."""

    def __init__(self, after: int, exc: type[BaseException] | BaseException = KeyboardInterrupt):
        self.after = after
        self.exc = exc
        self.counts: Counter[tuple[int, ...]] = Counter()
        self.lock = threading.Lock()
        self.fired = False

    def __call__(self, block, block_info=None):
        with self.lock:
            if not self.fired and sum(self.counts.values()) + 1 == self.after:
                self.fired = True
                raise self.exc if isinstance(self.exc, BaseException) else self.exc()
            self.counts[tuple(block_info[0]["chunk-location"])] += 1
        return block

    def wrap(self, stack: Stack) -> Stack:
        return stack.replace(data=stack.data.map_blocks(self, dtype=stack.dtype))


def make_stack(shape=(4, 40, 20), chunks=(4, 8, 20), dtype=np.uint16, **fields):
    a = blobs(shape, dtype, seed=11)
    return Stack(da.from_array(a, chunks=chunks), **fields), a


# --- resume through the API, every writer ------------------------------------------------


@pytest.mark.parametrize("writer", list(WRITERS))
def test_interrupted_write_resumes_bit_identical(tmp_path, writer):
    stack, _ = make_stack(scale=(2.0, 0.5, 0.5), units=("micrometer",) * 3)
    ref = WRITERS[writer](stack, tmp_path / "ref")
    work = tmp_path / "work"
    cut = Interrupt(after=3)
    stack = cut.wrap(stack)  # the same dask graph for both runs (an array: no input files)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt) as info:
        WRITERS[writer](stack, work)
    assert "resume" in "".join(info.value.__notes__)
    final = work / FINAL[writer]
    assert not final.exists()
    assert partial_of(final).exists()
    done = len(os.listdir(blocks_dir(final)))
    assert done == 2
    cut.counts.clear()
    out = WRITERS[writer](stack, work, resume=True)
    assert out == final
    assert sum(cut.counts.values()) == 5 - done  # only the missing blocks were computed
    assert sorted(p.name for p in work.iterdir()) == [f".{final.name}.zchunk-done", final.name]
    assert tree(out) == tree(ref)  # bit for bit, metadata included


def test_resume_without_partial_is_a_normal_write(tmp_path):
    stack, a = make_stack()
    out = to_zarr(stack, tmp_path / "a.zarr", resume=True)
    np.testing.assert_array_equal(zarr.open_array(out)[:], a)


def test_two_dimensional_compressed_tiff_resumes(tmp_path):
    stack, a = make_stack(shape=(40, 20), chunks=(8, 20))
    cut = Interrupt(after=4)
    stack = cut.wrap(stack)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_tiff(stack, tmp_path / "p.tif", compression="zlib")
    cut.counts.clear()
    out = to_tiff(stack, tmp_path / "p.tif", compression="zlib", resume=True)
    assert sum(cut.counts.values()) == 2
    np.testing.assert_array_equal(tifffile.imread(out), a)


def test_partial_output_needs_resume_or_overwrite(tmp_path):
    stack, a = make_stack()
    stack = Interrupt(after=2).wrap(stack)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_zarr(stack, tmp_path / "a.zarr")
    before = tree(partial_of(tmp_path / "a.zarr"))
    with pytest.raises(PartialOutputError, match=r"1 of 5 blocks done.*--resume.*--overwrite"):
        to_zarr(stack, tmp_path / "a.zarr")
    assert tree(partial_of(tmp_path / "a.zarr")) == before  # untouched
    out = to_zarr(stack, tmp_path / "a.zarr", overwrite=True)  # starts over
    np.testing.assert_array_equal(zarr.open_array(out)[:], a)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.zarr.zchunk-done", "a.zarr"]


@pytest.mark.parametrize("writer", list(WRITERS))
def test_resume_of_a_finished_output_keeps_it_or_refuses_it(tmp_path, writer):
    stack, _ = make_stack()
    out = WRITERS[writer](stack, tmp_path)
    before = tree(out)
    assert WRITERS[writer](stack, tmp_path, resume=True) == out  # nothing to do
    assert tree(out) == before
    other = stack.replace(data=stack.data.astype(np.float32))  # not this run's output
    with pytest.raises(OutputExistsError, match=r"not this run's finished output.*float32"):
        WRITERS[writer](other, tmp_path, resume=True)
    assert tree(out) == before


def test_other_failures_delete_the_partial_output(tmp_path):
    stack, _ = make_stack()
    with pytest.raises(ZeroDivisionError):
        to_zarr(Interrupt(after=3, exc=ZeroDivisionError).wrap(stack), tmp_path / "a.zarr")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_keeps_the_partial_output(tmp_path):
    stack, a = make_stack()
    full = OSError(errno.ENOSPC, "No space left on device")
    cut = Interrupt(after=3, exc=full)
    stack = cut.wrap(stack)
    with dask.config.set(scheduler="synchronous"), pytest.raises(DiskSpaceError) as info:
        to_tiff(stack, tmp_path / "a.tif")
    assert "\n" not in str(info.value)
    assert "disk filled up" in str(info.value)
    assert "resume" in str(info.value)
    assert partial_of(tmp_path / "a.tif").is_file()
    out = to_tiff(stack, tmp_path / "a.tif", resume=True)
    np.testing.assert_array_equal(tifffile.imread(out), a)


def test_an_array_input_is_identified_by_its_dask_graph(tmp_path):
    stack, _ = make_stack()
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_zarr(Interrupt(after=3).wrap(stack), tmp_path / "a.zarr")
    # without input files, another graph (here: the uninterrupted one) is another input
    with pytest.raises(
        ResumeMismatchError, match=r"the input array \(identified by its dask name\) differs"
    ):
        to_zarr(stack, tmp_path / "a.zarr", resume=True)


@pytest.mark.parametrize("inline", [False, True])
def test_an_array_read_lazily_from_a_store_is_never_resumed(tmp_path, inline, monkeypatch):
    # dask names da.from_zarr(path) after the store, not its contents: the name stays when the
    # store is rewritten, so the name cannot vouch for the data (a stale or mixed output)
    store = tmp_path / "in.zarr"
    z = zarr.create_array(store, shape=(4, 24, 16), chunks=(4, 8, 16), dtype="uint16")
    z[:] = 1

    def stack() -> Stack:
        lazy = da.from_array(zarr.open_array(store, mode="r"), chunks=(4, 8, 16),
                             inline_array=inline)  # fmt: skip
        return Stack(lazy) if inline else Stack(da.from_zarr(store, chunks=(4, 8, 16)))

    out = save(stack(), tmp_path / "a.tif")
    before = out.stat().st_mtime_ns
    z[:] = 2  # the same store, other contents: the same dask name
    with pytest.raises(OutputExistsError, match="not this run's finished output"):
        save(stack(), tmp_path / "a.tif", resume=True)
    assert out.stat().st_mtime_ns == before
    store_block, stored = _resume._store_block, []

    def interrupted(*args, **kwargs):  # Ctrl-C after two blocks, the graph unchanged
        if len(stored) == 2:
            raise KeyboardInterrupt
        stored.append(store_block(*args, **kwargs))

    monkeypatch.setattr(_resume, "_store_block", interrupted)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        save(stack(), tmp_path / "b.zarr")
    monkeypatch.undo()
    assert len(stored) == 2
    z[:] = 3  # a partial output of the old contents is not continued with the new ones
    with pytest.raises(ResumeMismatchError, match=r"the input array \(identified by"):
        save(stack(), tmp_path / "b.zarr", resume=True)
    done = save(stack(), tmp_path / "b.zarr", resume=True, overwrite=True)
    np.testing.assert_array_equal(zarr.open_array(done)[:], np.full((4, 24, 16), 3))


def _tiff_source(tmp_path, shape=(6, 48, 32)):
    data = blobs(shape, "uint16", seed=3)
    path = tmp_path / "src.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    return path, data


def _interrupt_filter(src, out, after=3, **params):
    stack = zchunk.filter(zchunk.open(src, memory_limit="20KB"), "gaussian", **params)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        zchunk.save(Interrupt(after=after).wrap(stack), out)


def test_resume_of_a_file_input_with_another_memory_limit(tmp_path):
    src, _ = _tiff_source(tmp_path)
    ref = zchunk.save(zchunk.filter(zchunk.open(src), "gaussian", sigma=1), tmp_path / "ref.zarr")
    out = tmp_path / "out.zarr"
    _interrupt_filter(src, out, sigma=1)
    stack = zchunk.filter(zchunk.open(src, memory_limit="1MB"), "gaussian", sigma=1)
    partial_chunks = zarr.open_array(partial_of(out)).shards
    assert stack.data.chunks[1][0] != partial_chunks[1]  # another plan: rechunked on resume
    zchunk.save(stack, out, resume=True)
    got, want = zarr.open_array(out)[:], zarr.open_array(ref)[:]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_resume_with_other_settings_is_refused(tmp_path):
    src, _ = _tiff_source(tmp_path)
    out = tmp_path / "out.zarr"
    _interrupt_filter(src, out, sigma=1)
    other = zchunk.filter(zchunk.open(src), "gaussian", sigma=2)
    with pytest.raises(ResumeMismatchError, match=r"operation differs.*sigma.*--overwrite"):
        zchunk.save(other, out, resume=True)
    with pytest.raises(ResumeMismatchError, match="dtype differs"):
        zchunk.save(zchunk.filter(zchunk.open(src), "gaussian", sigma=1, dtype="uint16"), out,
                    resume=True)  # fmt: skip
    # the input changed since the partial output was started
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    same = zchunk.filter(zchunk.open(src), "gaussian", sigma=1)
    with pytest.raises(ResumeMismatchError, match=r"src\.tif changed since.*mtime_ns"):
        zchunk.save(same, out, resume=True)
    # overwrite starts over
    written = zchunk.save(same, out, resume=True, overwrite=True)
    assert zarr.open_array(written).attrs["zchunk"]["name"] == "gaussian-src.tif"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.zarr.zchunk-done",
        "out.zarr",
        "src.tif",
    ]


def test_resume_in_another_format_is_refused(tmp_path):
    stack, _ = make_stack()
    stack = Interrupt(after=3).wrap(stack)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_tiff(stack, tmp_path / "a.tif", compression="zlib")
    with pytest.raises(ResumeMismatchError, match=r"output format differs.*tiff-scratch"):
        to_tiff(stack, tmp_path / "a.tif", resume=True)  # uncompressed: another partial output
    out = to_tiff(stack, tmp_path / "a.tif", resume=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{out.name}.zchunk-done", out.name]


def test_record_holds_the_settings(tmp_path):
    src, _ = _tiff_source(tmp_path)
    out = tmp_path / "out.zarr"
    _interrupt_filter(src, out, sigma=1.5)
    settings = json.loads((partial_of(out) / ".zchunk-record" / "settings.json").read_text())
    assert settings["inputs"][0]["path"] == str(src)
    assert settings["inputs"][0]["size"] == os.path.getsize(src)
    assert settings["operation"]["filter"]["sigma"] == [1.5, 1.5, 1.5]
    assert settings["dtype"] == "<f4"
    assert settings["shape"] == [6, 48, 32]
    assert settings["format"] == "zarr"
    assert settings["zchunk"] == zchunk.__version__


def test_open_refuses_a_partial_output(tmp_path):
    src, _ = _tiff_source(tmp_path)
    out = tmp_path / "out.zarr"
    _interrupt_filter(src, out, sigma=1)
    with pytest.raises(IncompleteOutputError, match=r"interrupted.*--resume.*allow_incomplete"):
        zchunk.open(partial_of(out))
    with pytest.raises(SourceNotFoundError, match=r"does not exist.*--resume"):
        zchunk.open(out)
    s = zchunk.open(partial_of(out), allow_incomplete=True)
    assert s.shape == (6, 48, 32)
    # a renamed partial output is still known as incomplete by its record
    moved = tmp_path / "moved.zarr"
    partial_of(out).rename(moved)
    with pytest.raises(IncompleteOutputError, match="incomplete zchunk output"):
        zchunk.open(moved)


def test_open_refuses_a_partial_uncompressed_tiff(tmp_path):
    stack, _ = make_stack()
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_tiff(Interrupt(after=2).wrap(stack), tmp_path / "a.tif")
    with pytest.raises(IncompleteOutputError):
        zchunk.open(partial_of(tmp_path / "a.tif"))


def test_partial_without_record_is_started_over_on_resume(tmp_path):
    stack, a = make_stack()
    partial_of(tmp_path / "a.zarr").mkdir()  # e.g. killed right after creating it
    with pytest.raises(PartialOutputError):
        to_zarr(stack, tmp_path / "a.zarr")
    out = to_zarr(stack, tmp_path / "a.zarr", resume=True)
    np.testing.assert_array_equal(zarr.open_array(out)[:], a)


def test_tiff_killed_before_its_header_was_written_is_laid_out_again_on_resume(tmp_path):
    """Killed between creating the record and writing the TIFF header: no block is done."""
    stack, a = make_stack()
    stack = Interrupt(after=2).wrap(stack)  # the same graph for both runs
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_tiff(stack, tmp_path / "a.tif")
    for name in os.listdir(blocks_dir(tmp_path / "a.tif")):  # as before the first block
        os.remove(blocks_dir(tmp_path / "a.tif") / name)
    partial_of(tmp_path / "a.tif").write_bytes(b"")  # and before tifffile wrote the header
    out = to_tiff(stack, tmp_path / "a.tif", resume=True)
    np.testing.assert_array_equal(tifffile.imread(out), a)


def test_disk_space_is_checked_before_writing(tmp_path, monkeypatch):
    stack, _ = make_stack()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    for name in ("a.tif", "a.zarr"):
        with pytest.raises(DiskSpaceError, match=r"needs about 6\.25 kiB.*has 0\.98 kiB free"):
            save(stack, tmp_path / name)
    with pytest.raises(DiskSpaceError, match="uncompressed size"):
        save(stack, tmp_path / "a.zarr")
    assert list(tmp_path.iterdir()) == []
    assert isinstance(DiskSpaceError("x"), OSError)


def test_save_many_resumes_its_scratch_arrays(tmp_path):
    stack, a = make_stack()
    cut = Interrupt(after=3)
    stack = cut.wrap(stack)
    results = project_many(stack, ["max", "mean"])
    paths = {"max": tmp_path / "max.tif", "mean": tmp_path / "mean.zarr"}
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        save_many(results, paths)
    assert any(p.name.endswith(".zchunk-partial") for p in tmp_path.iterdir())
    cut.counts.clear()
    out = save_many(results, paths, resume=True)
    assert sum(cut.counts.values()) == 3  # 5 blocks, 2 of them done
    np.testing.assert_array_equal(tifffile.imread(out["max"]), a.max(axis=0))
    np.testing.assert_array_equal(zarr.open_array(out["mean"])[:], a.mean(axis=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".max.tif.zchunk-done",
        ".mean.zarr.zchunk-done",
        "max.tif",
        "mean.zarr",
    ]


ARRAY_RUN = """
import sys
import numpy as np
import zchunk
a = np.random.default_rng(int(sys.argv[1])).integers(0, 900, (5, 40, 24)).astype("uint16")
results = zchunk.project_many(zchunk.open(a), ["max", "mean"])
paths = dict(zip(["max", "mean", "one"], sys.argv[2:5], strict=True))
one = paths.pop("one")
zchunk.save_many(results, paths, resume=True, compression=sys.argv[5] or None)
zchunk.save(results["max"], one, resume=True)
"""


@pytest.mark.parametrize("compression", ["", "zlib"])
def test_save_and_save_many_of_numpy_arrays_resume_in_another_process(tmp_path, compression):
    # arrays with no input files are identified by their dask name, which dask derives from
    # the numpy data: the same data in another process give a finished output back
    mean = "mean.tif" if compression else "mean.zarr"  # a zarr output takes no compression
    paths = [tmp_path / "max.tif", tmp_path / mean, tmp_path / "one.tif"]

    def run(seed: int) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", ARRAY_RUN, str(seed), *map(str, paths), compression]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    assert run(1).returncode == 0
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}
    done = run(1)  # the same arrays again: every output is kept as it is
    assert done.returncode == 0, done.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths} == stamp
    other = run(2)  # other data: refused, saying why
    assert other.returncode == 1
    assert "OutputExistsError" in other.stderr
    assert "the input array (identified by its dask name) differs" in other.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths} == stamp
    a = np.random.default_rng(1).integers(0, 900, (5, 40, 24)).astype("uint16")
    np.testing.assert_array_equal(tifffile.imread(paths[0]), a.max(axis=0))
    np.testing.assert_array_equal(zchunk.open(paths[1]).data.compute(), a.mean(axis=0))


# --- SIGKILL at random points of real runs -------------------------------------------------


SHAPE = (4, 768, 64)  # tens of bands under --memory-limit 100KB, whatever the band height
CLI_ARGS = ["gaussian", "--sigma", "1", "--memory-limit", "100KB", "--workers", "1"]


@pytest.fixture(scope="module")
def kill_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    path = folder / "src.tif"
    tifffile.imwrite(path, blobs(SHAPE, "uint16", seed=1), photometric="minisblack")
    return path


def _blocks(records: Path) -> int:
    """Blocks of the partial output whose block records are `records`, 0 before it exists."""
    try:
        settings = json.loads((records.parent / "settings.json").read_text())
    except (FileNotFoundError, ValueError):
        return 0
    return math.prod(len(c) for c in settings["chunks"])


def _kill_after(argv: list[str], records: Path, when, timeout: float = 60) -> int:
    """Run `argv` and SIGKILL it once `records` holds ``when(total blocks)`` block records.

    Returns how many blocks were recorded when it died.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    at_least = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if at_least is None and (total := _blocks(records)):
                at_least = when(total)
                assert at_least < total
            try:
                done = len(os.listdir(records))
            except FileNotFoundError:
                done = 0
            if at_least is not None and done >= at_least:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(
                    f"the run ended (code {proc.returncode}) before {at_least} blocks: {err}"
                )
            time.sleep(0.002)
        else:
            pytest.fail(f"no {at_least} blocks within {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return len(os.listdir(records))


def _api_resume(src: Path, out: Path, *extra: str) -> list[str]:
    code = (
        "import sys, zchunk; "
        "s = zchunk.filter(zchunk.open(sys.argv[1]), 'gaussian', sigma=1); "
        "zchunk.save(s, sys.argv[2], resume=True" + "".join(f", {e}" for e in extra) + ")"
    )
    return [sys.executable, "-c", code, str(src), str(out)]


def _cli(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "zchunk", "filter", str(src), *CLI_ARGS, "-o", str(out), *extra]


def _check_bit_identical(out: Path, ref: Path) -> None:
    assert not partial_of(out).exists()
    left = [
        p.name for p in out.parent.iterdir() if p != out and p.name != f".{out.name}.zchunk-done"
    ]
    assert not any(".zchunk" in n or n.endswith(".partial") for n in left)
    if out.suffix == ".zarr":
        assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]
        got, want = zarr.open_array(out)[:], zarr.open_array(ref)[:]
    else:
        got, want = tifffile.imread(out), tifffile.imread(ref)
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert tree(out) == tree(ref)  # every byte of every file


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("name", "extra"), [("out.zarr", []), ("out.tif", ["--compression", "zlib"])]
)
def test_sigkill_at_random_points_then_resume_is_bit_identical(kill_source, tmp_path, name, extra):
    rng = random.Random(f"zchunk-{name}")
    ref = tmp_path / "ref" / name
    assert main(["filter", str(kill_source), *CLI_ARGS, "-o", str(ref), "--quiet", *extra]) == 0
    out = tmp_path / "run" / name
    out.parent.mkdir()
    records = blocks_dir(out, folder=True)  # zarr, or the scratch zarr of a compressed TIFF
    first = _kill_after(
        _cli(kill_source, out, *extra), records, lambda n: rng.randint(1, max(1, n // 4))
    )
    # a resumed run killed again, later
    compression = ["compression='zlib'"] if extra else []
    done = _kill_after(
        _api_resume(kill_source, out, *compression),
        records,
        lambda n: first + rng.randint(1, max(1, n // 4)),
    )
    assert not out.exists()
    assert 2 <= first < done < _blocks(records)
    assert _blocks(records) >= 8
    # resume to the end, in this process, with the default memory limit (another plan)
    stack = zchunk.filter(zchunk.open(kill_source), "gaussian", sigma=1)
    zchunk.save(stack, out, resume=True, compression="zlib" if extra else None)
    _check_bit_identical(out, ref)


@pytest.mark.timeout(180)
def test_sigkill_then_cli_resume_is_bit_identical(kill_source, tmp_path):
    rng = random.Random(7)
    ref = tmp_path / "ref" / "out.zarr"
    assert main(["filter", str(kill_source), *CLI_ARGS, "-o", str(ref), "--quiet"]) == 0
    out = tmp_path / "run" / "out.zarr"
    out.parent.mkdir()
    records = blocks_dir(out, folder=True)
    done = _kill_after(_cli(kill_source, out), records, lambda n: rng.randint(1, max(1, n // 5)))
    for _ in range(2):
        done = _kill_after(
            _cli(kill_source, out, "--resume"),
            records,
            lambda n, done=done: done + rng.randint(1, max(1, n // 5)),
        )
    assert main(["filter", str(kill_source), *CLI_ARGS, "-o", str(out), "--quiet"]) == 2
    assert main(["filter", str(kill_source), *CLI_ARGS, "-o", str(out), "--resume", "--quiet"]) == 0
    _check_bit_identical(out, ref)


# --- block markers say what was written, and are checked on resume ---------------------------


def _forge(records: Path, how: str) -> None:
    """Forge the markers of every block of a 5-block partial output."""
    for index in range(5):
        marker = records / f"0.{index}.0"
        if how == "empty":
            marker.write_bytes(b"")
        elif how == "wrong digest":
            marker.write_text("1234 deadbeef\n")
        elif how == "garbage":
            marker.write_bytes(os.urandom(20))


def _flip_stored_bytes(final: Path, block: int) -> None:
    """Flip one stored byte of block (0, block, 0) of `make_stack()`'s 5 bands of 8 rows."""
    partial = partial_of(final)
    if partial.is_file():
        with tifffile.TiffFile(partial) as tif:
            where = tif.series[0].dataoffset + block * 8 * 20 * 2 + 7
    else:
        (shard,) = [p for p in partial.rglob(f"c/0/{block}/0") if p.is_file()]
        partial, where = shard, shard.stat().st_size // 2
    data = bytearray(partial.read_bytes())
    data[where] ^= 0xFF
    partial.write_bytes(bytes(data))


def _interrupted_after_three_blocks(
    tmp_path: Path, writer: str
) -> tuple[Stack, Interrupt, Path, Path]:
    """(stack, its Interrupt, the reference output, the output) of a run cut after 3 blocks."""
    stack, _ = make_stack(scale=(2.0, 0.5, 0.5), units=("micrometer",) * 3)
    ref = WRITERS[writer](stack, tmp_path / "ref")
    cut = Interrupt(after=4)
    stack = cut.wrap(stack)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        WRITERS[writer](stack, tmp_path / "work")
    return stack, cut, ref, tmp_path / "work" / FINAL[writer]


@pytest.mark.parametrize("writer", ["zarr", "ome-zarr", "tiff", "tiff-zlib"])
@pytest.mark.parametrize("how", ["empty", "wrong digest", "garbage", "stored bytes flipped"])
def test_resume_recomputes_blocks_whose_markers_do_not_match(tmp_path, writer, how):
    stack, cut, ref, final = _interrupted_after_three_blocks(tmp_path, writer)
    work = final.parent
    records = blocks_dir(final)
    assert len(os.listdir(records)) == 3
    damaged = int(min(os.listdir(records)).split(".")[1])
    if how == "stored bytes flipped":
        _flip_stored_bytes(final, damaged)
    else:
        _forge(records, how)
    cut.counts.clear()
    out = WRITERS[writer](stack, work, resume=True)
    assert tree(out) == tree(ref)  # bit for bit
    if how == "stored bytes flipped":
        assert cut.counts[(0, damaged, 0)] == 1  # the damaged block was computed again
        assert sum(cut.counts.values()) == 3
    else:
        assert sum(cut.counts.values()) == 5  # nothing forged was trusted


@pytest.mark.parametrize("writer", ["zarr", "ome-zarr"])
@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_resume_rewrites_a_damaged_shard_without_reading_it(tmp_path, writer, damage, monkeypatch):
    # zarr rewrites an edge shard (rows past the image) by decoding what it holds first: the
    # stored files of a block that is written again are deleted, never decoded
    from zchunk.sinks import _resume

    stack, _ = make_stack(shape=(4, 36, 20))  # 5 bands, the last of 4 rows
    ref = WRITERS[writer](stack, tmp_path / "ref")
    work = tmp_path / "work"
    write = _resume.write_marker
    monkeypatch.setattr(
        _resume, "write_marker", lambda d, i, g: None if i == (0, 4, 0) else write(d, i, g)
    )
    with pytest.raises(PartialOutputError, match="misses 1 block"):
        WRITERS[writer](stack, work)
    monkeypatch.undo()
    (shard,) = [p for p in partial_of(work / FINAL[writer]).rglob("c/0/4/0") if p.is_file()]
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:
        data[: len(data) // 2] = bytes(len(data) // 2)
    shard.write_bytes(bytes(data))
    out = WRITERS[writer](stack, work, resume=True)
    assert tree(out) == tree(ref)


def _lose_stored_block(final: Path, block: int, how: str) -> None:
    """What a power cut can leave of block (0, block, 0) when its marker reached the disk.

    A file system that persisted the marker but not the block's data shows zeros where the
    data should be (an unwritten extent) or a file cut short (delayed allocation).
    """
    partial = partial_of(final)
    if partial.is_file():
        with tifffile.TiffFile(partial) as tif:
            start = tif.series[0].dataoffset + block * 8 * 20 * 2
        size = 8 * 20 * 2
    else:
        (partial,) = [p for p in partial_of(final).rglob(f"c/0/{block}/0") if p.is_file()]
        start, size = 0, partial.stat().st_size
    with open(partial, "r+b") as f:
        if how == "stored bytes zeroed":
            f.seek(start)
            f.write(bytes(size))
        else:
            f.truncate(start)


@pytest.mark.parametrize("writer", ["zarr", "ome-zarr", "tiff", "tiff-zlib"])
@pytest.mark.parametrize("how", ["stored bytes zeroed", "stored file truncated"])
def test_resume_recomputes_blocks_whose_data_did_not_reach_the_disk(tmp_path, writer, how):
    # power loss: markers are not fsynced, nor are blocks; a marker that survived its block's
    # data does not match what is stored (bytes, then crc32), so the block is computed again
    stack, cut, ref, final = _interrupted_after_three_blocks(tmp_path, writer)
    work = final.parent
    done = sorted(int(n.split(".")[1]) for n in os.listdir(blocks_dir(final)))
    assert len(done) == 3
    kept, lost = done[0], done[1]
    _lose_stored_block(final, lost, how)
    cut.counts.clear()
    out = WRITERS[writer](stack, work, resume=True)
    assert tree(out) == tree(ref)  # bit for bit
    assert cut.counts[(0, lost, 0)] == 1  # the lost block was computed again
    if writer == "tiff" and how == "stored file truncated":  # its page directories are gone:
        assert sum(cut.counts.values()) == 5  # laid out again, every block computed again
    else:
        assert cut.counts[(0, kept, 0)] == 0  # the block before it was kept


def test_a_block_without_marker_keeps_the_partial_output(tmp_path, monkeypatch):
    # completeness is checked before the rename: a block that was not recorded is redone
    from zchunk.sinks import _resume

    stack, a = make_stack()
    write = _resume.write_marker
    monkeypatch.setattr(
        _resume, "write_marker", lambda d, i, g: None if i == (0, 2, 0) else write(d, i, g)
    )
    with pytest.raises(PartialOutputError, match=r"misses 1 block\(s\) \(first \(0, 2, 0\)\)"):
        to_zarr(stack, tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
    monkeypatch.undo()
    assert sorted(os.listdir(blocks_dir(tmp_path / "a.zarr"))) == [
        "0.0.0",
        "0.1.0",
        "0.3.0",
        "0.4.0",
    ]
    out = to_zarr(stack, tmp_path / "a.zarr", resume=True)
    np.testing.assert_array_equal(zarr.open_array(out)[:], a)


def test_block_markers_hold_the_stored_size_and_crc32(tmp_path):
    import zlib

    stack, _ = make_stack()
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_zarr(Interrupt(after=2).wrap(stack), tmp_path / "a.zarr")
    (name,) = os.listdir(blocks_dir(tmp_path / "a.zarr"))
    shard = (partial_of(tmp_path / "a.zarr") / "c" / name.replace(".", "/")).read_bytes()
    marker = (blocks_dir(tmp_path / "a.zarr") / name).read_text()
    assert marker == f"{len(shard)} {zlib.crc32(shard):08x}\n"


def _stored_digests(final: Path, writer: str) -> dict[tuple[int, ...], object]:
    """Every block marker of `final`'s partial output, and the digest of its files on disk."""
    from zchunk.sinks import _markers

    partial = partial_of(final)
    array = zarr.open_array(partial, path="0" if writer.startswith("ome") else "", mode="r")
    chunks = ((4,), (8,) * 5, (20,))
    out = {}
    for index, claimed in _markers.read_markers(str(blocks_dir(final))).items():
        region = _markers._regions(chunks, index)
        out[index] = (claimed, _markers.stored_digest(array, region))
    return out


def _tiff_digests(final: Path) -> dict[tuple[int, ...], object]:
    """Every block marker of `final`'s partial TIFF, and the crc32 of its rows in the file."""
    from zchunk.sinks import _markers

    partial = partial_of(final)
    with tifffile.TiffFile(partial) as tif:
        start = tif.series[0].dataoffset
    out = {}
    data = partial.read_bytes()
    for index, claimed in _markers.read_markers(str(blocks_dir(final))).items():
        runs = [start + (z * 40 * 20 + index[1] * 8 * 20) * 2 for z in range(4)]
        crc = 0
        for at in runs:
            crc = zlib.crc32(data[at : at + 8 * 20 * 2], crc)
        out[index] = (claimed, (4 * 8 * 20 * 2, crc))
    return out


@pytest.mark.parametrize("writer", ["zarr", "ome-zarr", "ome-zarr-0.4", "tiff"])
@pytest.mark.parametrize("kept", [True, False], ids=["from memory", "read back"])
def test_markers_hold_the_digest_of_the_stored_files(tmp_path, writer, kept, monkeypatch):
    # the digest is taken from the bytes handed to the store (zarr v3: one shard per block;
    # v2: one file per plane, end to end in key order; an uncompressed TIFF: the block's rows
    # in file order), or read back when they were not kept
    from zchunk.sinks import _tiff, _written, _zarr

    monkeypatch.setattr(_zarr, "MIN_INNER_BYTES", 1)  # zarr v2: 4 plane files per block
    if not kept:
        monkeypatch.setattr(_written.WrittenStore, "take", lambda self, key: None)
        monkeypatch.setattr(_tiff._FileRegions, "written_digest", lambda self, key: None)
    _, _, _, final = _interrupted_after_three_blocks(tmp_path, writer)
    digests = _tiff_digests(final) if writer == "tiff" else _stored_digests(final, writer)
    if writer == "ome-zarr-0.4":  # one file per plane: a block's digest chains 4 files
        assert zarr.open_array(partial_of(final), path="0", mode="r").chunks == (1, 8, 20)
    assert len(digests) == 3
    for claimed, stored in digests.values():
        assert claimed == stored


def _damage_first_tiff_block(monkeypatch, damaged: list[int]) -> None:
    """Flip a byte in the file right after the first block an uncompressed TIFF writes."""
    from zchunk.sinks import _tiff

    setitem = _tiff._FileRegions.__setitem__

    def damaging_setitem(self, key, value):
        setitem(self, key, value)
        if not damaged:
            damaged.append(key[1].start // 8)
            (_, offset), *_ = self._runs(key)
            with open(self.path, "r+b") as f:
                f.seek(offset + 3)
                byte = f.read(1)
                f.seek(offset + 3)
                f.write(bytes([byte[0] ^ 0xFF]))

    monkeypatch.setattr(_tiff._FileRegions, "__setitem__", damaging_setitem)


@pytest.mark.parametrize("writer", ["zarr", "ome-zarr-0.4", "tiff"])
def test_a_marker_vouches_for_the_computed_bytes_not_for_what_the_disk_returned(
    tmp_path, writer, monkeypatch
):
    # a shard that differs from what the run wrote, as soon as it is written (another writer,
    # a storage fault): its marker holds the computed bytes, so resume computes it again
    # (a digest read back from disk would vouch for the wrong bytes, and resume keep them)
    from zarr.storage import LocalStore

    from zchunk.sinks import _zarr

    monkeypatch.setattr(_zarr, "MIN_INNER_BYTES", 1)  # zarr v2: 4 plane files per block
    set_sync = LocalStore.set_sync
    damaged: list[int] = []

    def damaging_set_sync(self, key, value):
        set_sync(self, key, value)
        if "zarr" in key or ".z" in key:  # metadata
            return
        block = int(key.split("/")[-2])  # the y index: blocks are 8 rows, as chunks are
        if not damaged or damaged[0] == block:  # every file of the first block written
            damaged[:1] = [block]
            path = os.path.join(self.root, key)
            with open(path, "rb") as f:
                data = bytearray(f.read())
            data[len(data) // 2] ^= 0xFF
            with open(path, "wb") as f:
                f.write(data)

    async def damaging_set(self, key, value):
        damaging_set_sync(self, key, value)

    stack, _ = make_stack()
    ref = WRITERS[writer](stack, tmp_path / "ref")
    if writer == "tiff":
        _damage_first_tiff_block(monkeypatch, damaged)
    else:
        monkeypatch.setattr(LocalStore, "set_sync", damaging_set_sync)
        monkeypatch.setattr(LocalStore, "set", damaging_set)
    cut = Interrupt(after=4)
    stack = cut.wrap(stack)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        WRITERS[writer](stack, tmp_path / "work")
    monkeypatch.undo()
    monkeypatch.setattr(_zarr, "MIN_INNER_BYTES", 1)  # as the reference and the first run
    final = tmp_path / "work" / FINAL[writer]
    assert (0, damaged[0], 0) in _markers_of(final)
    cut.counts.clear()
    out = WRITERS[writer](stack, tmp_path / "work", resume=True)
    assert tree(out) == tree(ref)
    assert cut.counts[(0, damaged[0], 0)] == 1  # computed again
    assert sum(cut.counts.values()) == 3


def _markers_of(final: Path) -> set[tuple[int, ...]]:
    return {tuple(int(i) for i in n.split(".")) for n in os.listdir(blocks_dir(final))}


def _rewrite_keeping_size_and_mtime(path: Path, *, replace: bool) -> None:
    """Change the pixels of `path`, keep its size and mtime (in place, or by a rename over it)."""
    st = os.stat(path)
    time.sleep(0.05)  # past the file system's timestamp granularity
    with tifffile.TiffFile(path) as tif:
        at = tif.pages[0].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[at : at + 100] = bytes(255 - b for b in data[at : at + 100])
    if replace:
        other = path.with_name("other.tif")
        other.write_bytes(bytes(data))
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(other, path)
    else:
        with open(path, "r+b") as f:
            f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize(("replace", "what"), [(False, "ctime_ns"), (True, "inode")])
def test_input_changed_with_size_and_mtime_kept_is_not_resumed(tmp_path, replace, what):
    src, _ = _tiff_source(tmp_path)
    out = tmp_path / "out.zarr"
    _interrupt_filter(src, out, sigma=1)
    _rewrite_keeping_size_and_mtime(src, replace=replace)
    same = zchunk.filter(zchunk.open(src), "gaussian", sigma=1)
    with pytest.raises(ResumeMismatchError, match=rf"src\.tif changed since.*{what}"):
        zchunk.save(same, out, resume=True)


@pytest.mark.parametrize(("replace", "what"), [(False, "rewritten"), (True, "replaced")])
def test_input_changed_with_size_and_mtime_kept_is_caught_when_read(tmp_path, replace, what):
    from zchunk.errors import InputChangedError

    src, _ = _tiff_source(tmp_path)
    stack = zchunk.project(zchunk.open(src), "max")
    _rewrite_keeping_size_and_mtime(src, replace=replace)
    with pytest.raises(InputChangedError, match=rf"src\.tif changed on disk.*{what}"):
        zchunk.save(stack, tmp_path / "max.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.tif"]


# --- every setting that shapes the output is compared on resume --------------------------------


def _planes(folder: Path, n: int = 4) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(folder / f"z{i}.tif")
        tifffile.imwrite(paths[-1], blobs((40, 30), "uint16", seed=i), photometric="minisblack")
    return paths


def _opened(src, **kw):
    return zchunk.open(src, memory_limit="8KB", **kw)


def _setting_cases(tmp_path):
    src, _ = _tiff_source(tmp_path)
    zarr_out = lambda s, **kw: to_zarr(s, tmp_path / "o.zarr", **kw)
    ome = lambda v, p: (
        lambda s, **kw: to_ome_zarr(s, tmp_path / "o.ome.zarr", ngff_version=v, pyramid=p, **kw)
    )
    base = _opened(src)
    yield "scale", zarr_out, base, base.replace(scale=(3.0, 1.0, 1.0)), "calibration"
    yield "units", zarr_out, base, base.replace(units=("nanometer",) * 3), "calibration"
    yield "ngff version", None, (base, ome("0.5", 0)), (base, ome("0.4", 0)), "writer settings"
    yield "pyramid", None, (base, ome("0.5", 0)), (base, ome("0.5", 1)), "writer settings"
    yield "axes", zarr_out, base, base.replace(axes="cyx"), "the axes differs"
    yield "shape", zarr_out, base, base.replace(data=base.data[:, :40]), "the shape differs"
    files = _planes(tmp_path / "planes")
    yield "input order", zarr_out, _opened(files), _opened(files[::-1]), "another order"
    folder = _opened(tmp_path / "planes")

    def added():  # a plane appears in the input folder between the runs
        plane = blobs((40, 30), "uint16", seed=9)
        tifffile.imwrite(tmp_path / "planes" / "z4.tif", plane, photometric="minisblack")
        return _opened(tmp_path / "planes")

    yield "folder contents", zarr_out, folder, added, r"1 new input\(s\) \(first .*z4\.tif\)"


CASES = ["scale", "units", "ngff version", "pyramid", "axes", "shape", "input order",
         "folder contents"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_resume_compares_every_setting(tmp_path, case):
    _, writer, first, second, match = next(c for c in _setting_cases(tmp_path) if c[0] == case)
    if writer is None:
        (first, writer), (second, other) = first, second
    else:
        other = writer
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        writer(Interrupt(after=2).wrap(first))
    second = second() if callable(second) else second
    with pytest.raises(ResumeMismatchError, match=match):
        other(second, resume=True)
