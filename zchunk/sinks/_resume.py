"""Resumable outputs: a partial output with a record of its settings and of its finished blocks.

A volume output is written block by block into ``.<name>.zchunk-partial`` next to its final
name (see :mod:`zchunk._partial`), with a record made **before** any pixel is written::

    .out.zarr.zchunk-partial/            the zarr store being written
        .zchunk-record/settings.json     inputs (path, size, mtime), operation, dtype, shape...
        .zchunk-record/blocks/0.2.1      one empty file per finished block, made after the
                                         block's shard (or file region) is written

Creating an empty file is atomic (it exists or it does not), so a marker is never torn and
any number of threads, processes or cluster workers may add markers at once. A block without
its marker is written again, whole, on resume. When every block is written the record is
removed and the partial output renamed onto the final name: an output under its final name is
always complete.

On resume the settings of the new run must equal the recorded ones (inputs unchanged, same
operation and parameters, dtype, shape, calibration, format); only the finished blocks are
skipped: the dask graph is culled to the missing blocks, so their inputs are not read either.
If the new run chunks the data differently (another memory limit or worker count), its data
are rechunked to the partial output's blocks, which gives the same pixels.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from dask.base import compute_as_if_collection
from dask.highlevelgraph import HighLevelGraph
from dask.layers import ArraySliceDep

from zchunk._partial import RECORD_NAME, partial_path, record_path
from zchunk._version import __version__
from zchunk.chunking import format_bytes
from zchunk.errors import (
    DiskSpaceError,
    OutputExistsError,
    PartialOutputError,
    ResumeMismatchError,
    ZChunkError,
)
from zchunk.sinks import _markers
from zchunk.sinks._atomic import TEMP_MARKER, GuardedTarget, _commit, abandon, remove_path
from zchunk.sinks._lock import output_lock
from zchunk.sinks._markers import stored_digest, verified, write_marker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from zchunk._types import PathLike
    from zchunk.stack import Stack

__all__ = [
    "PartialWrite",
    "check_free_space",
    "input_identity",
    "resumable_output",
    "settings_of",
    "store_resumable",
]

#: Operations whose description (``stack.attrs[key]``) is part of the settings of an output.
OPERATION_KEYS = ("filter", "projection")

_SETTINGS = "settings.json"
_BLOCKS = "blocks"

# what each settings entry is called in messages, in the order they are compared
_LABELS = {
    "zchunk": "the zchunk version",
    "format": "the output format",
    "inputs": "the inputs",
    "array": "the input array",
    "operation": "the operation",
    "axes": "the axes",
    "shape": "the shape",
    "dtype": "the dtype",
    "metadata": "the calibration and metadata",
    "writer": "the writer settings",
}


# settings -------------------------------------------------------------------------------------


def _tree_identity(path: str) -> dict[str, Any]:
    """Files, bytes and newest modification time under folder `path` (one walk)."""
    count = size = newest = changed = inodes = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(root, name))
                count += 1
                size += st.st_size
                newest = max(newest, st.st_mtime_ns)
                changed = max(changed, st.st_ctime_ns)
                inodes = (inodes + st.st_ino) % 2**63
    return {
        "path": path,
        "files": count,
        "size": size,
        "mtime_ns": newest,
        "ctime_ns": changed,
        "inodes": inodes,
    }


def input_identity(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Identify input files and folders, to tell on resume whether they changed.

    A file is its path, size, mtime, inode (replaced by another file) and ctime (rewritten in
    place with size and mtime set back: no user call can set the ctime back). A folder is its
    file count, bytes, newest mtime and ctime, and the sum of its files' inodes.

    Examples
    --------
    >>> input_identity(["/no/such/file"])
    [{'path': '/no/such/file', 'missing': True}]
    """
    out: list[dict[str, Any]] = []
    for path in paths:
        path = os.path.abspath(path)
        if os.path.isdir(path):
            out.append(_tree_identity(path))
            continue
        try:
            st = os.stat(path)
        except OSError:
            out.append({"path": path, "missing": True})
            continue
        out.append(
            {
                "path": path,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino,
                "ctime_ns": st.st_ctime_ns,
            }
        )
    return out


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, numpy scalars numbers)."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def settings_of(
    stack: Stack,
    data: da.Array,
    *,
    format: str,
    metadata: Any = None,
    writer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the JSON record of what an output of `stack` holds, to compare on resume.

    Parameters
    ----------
    stack : Stack
        The stack being written: its inputs (``attrs["source_paths"]``), operation
        (``attrs["filter"]``, ``attrs["projection"]``), axes and dtype.
    data : dask.array.Array
        The array written (already in the output's axis order and byte order); its shape and
        chunks are recorded.
    format : str
        ``"zarr"``, ``"ome-zarr"``, ``"tiff"`` (uncompressed, region writes) or
        ``"tiff-scratch"`` (the scratch zarr of a compressed TIFF).
    metadata : object, optional
        The calibration and metadata the output holds (JSON-able).
    writer : Mapping, optional
        Settings of the writer that shape the partial output (zarr format, compression...).

    Returns
    -------
    dict
        JSON-ready settings; ``"chunks"`` are the blocks (not compared, see
        :func:`settings_differ`). A stack with no input files (an array) is identified by its
        dask name instead, which dask derives from the array's contents.
    """
    sources = stack.attrs.get("source_paths") or ()
    if isinstance(sources, (str, os.PathLike)):
        sources = (sources,)
    paths = [os.fspath(s) for s in sources if s]
    settings: dict[str, Any] = {
        "zchunk": __version__,
        "format": format,
        "inputs": input_identity(paths),
        "array": None if paths else stack.data.name,
        "operation": {k: stack.attrs[k] for k in OPERATION_KEYS if k in stack.attrs},
        "axes": stack.axes,
        "shape": [int(n) for n in data.shape],
        "dtype": np.dtype(data.dtype).str,
        "metadata": metadata,
        "writer": dict(writer or {}),
        "chunks": [[int(n) for n in c] for c in data.chunks],
    }
    result: dict[str, Any] = _jsonable(settings)
    return result


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 300 else text[:297] + "..."


def _inputs_differ(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str | None:
    if [i["path"] for i in old] != [i["path"] for i in new]:
        gone = [i["path"] for i in old if i["path"] not in {j["path"] for j in new}]
        added = [i["path"] for i in new if i["path"] not in {j["path"] for j in old}]
        if gone or added:
            parts = [f"{len(gone)} input(s) not in this run (first {gone[0]})"] if gone else []
            parts += [f"{len(added)} new input(s) (first {added[0]})"] if added else []
            return "the inputs differ: " + ", ".join(parts)
        return "the inputs are in another order"
    for a, b in zip(old, new, strict=True):
        if a != b:
            if b.get("missing"):
                return f"the input {b['path']} no longer exists"
            what = ", ".join(
                f"{key} {a.get(key)} -> {b.get(key)}"
                for key in ("size", "files", "mtime_ns", "inode", "inodes", "ctime_ns")
                if a.get(key) != b.get(key)
            )
            return f"the input {b['path']} changed since the partial output was started ({what})"
    return None


def settings_differ(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """Describe the first difference between recorded and new settings, or return None.

    Examples
    --------
    >>> a = {"zchunk": "1", "operation": {"filter": {"sigma": 1}}, "chunks": [[4], [8, 8]]}
    >>> settings_differ(a, {**a, "chunks": [[4], [16]]}) is None
    True
    >>> settings_differ(a, {**a, "operation": {"filter": {"sigma": 2}}})
    'the operation differs (partial output: {"filter":{"sigma":1}}; this run: {"filter":{"sigma":2}})'
    """
    for key, label in _LABELS.items():
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "inputs" and isinstance(a, list) and isinstance(b, list):
            why = _inputs_differ(a, b)
            if why is not None:
                return why
            continue
        return f"{label} differs (partial output: {_short(a)}; this run: {_short(b)})"
    return None


# the partial output ---------------------------------------------------------------------------


def _read_record(record: Path) -> tuple[dict[str, Any], set[tuple[int, ...]]] | None:
    """Return (settings, finished block indices) of a record, or None if there is none."""
    try:
        settings = json.loads((record / _SETTINGS).read_text())
        names = os.listdir(record / _BLOCKS)
    except (OSError, ValueError):
        return None
    done = set()
    for name in names:
        with contextlib.suppress(ValueError):
            done.add(tuple(int(i) for i in name.split(".")))
    return settings, done


def _write_record(record: Path, settings: Mapping[str, Any]) -> None:
    """Create `record` with its settings and an empty block list, atomically (by rename)."""
    tmp = record.with_name(f"{record.name}-new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        (tmp / _BLOCKS).mkdir(parents=True)
        (tmp / _SETTINGS).write_text(json.dumps(settings, indent=1, sort_keys=True))
        os.rename(tmp, record)
    except BaseException:
        remove_path(tmp)
        raise


def _existing_folder(path: Path) -> Path:
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_free_space(final: Path, nbytes: int, *, compressed: bool, what: str = "") -> None:
    """Raise DiskSpaceError if the folder of `final` has less than `nbytes` free.

    Parameters
    ----------
    final : Path
        The output; its (nearest existing) folder is checked.
    nbytes : int
        Bytes the output needs: its uncompressed size (an upper bound, in practice, for
        compressed output, which the message says).
    compressed : bool
        Whether the output is compressed, for the message.
    what : str, optional
        What needs the space, for the message (default: `final`).

    Raises
    ------
    DiskSpaceError
        If ``shutil.disk_usage`` reports less free space than `nbytes`.
    """
    folder = _existing_folder(final.parent)
    free = shutil.disk_usage(folder).free
    if nbytes <= free:
        return
    size = "its uncompressed size; compressed data usually take less" if compressed else "raw"
    msg = (
        f"not enough free disk space for {what or repr(os.fspath(final))}: it needs about "
        f"{format_bytes(nbytes)} ({size}) but {os.fspath(folder)!r} has "
        f"{format_bytes(free)} free; free some space or write elsewhere"
    )
    raise _disk_space_error(msg)


def _disk_space_error(msg: str) -> DiskSpaceError:
    err = DiskSpaceError(msg)
    err.errno = errno.ENOSPC  # str(err) stays `msg`
    return err


def _discard(partial: Path, record: Path) -> None:
    abandon(partial)
    remove_path(record)
    remove_path(record_path(partial, folder=False))  # a file's, whatever `partial` was


@dataclass
class PartialWrite:
    """A resumable write in progress: where it goes and which blocks are already there.

    Attributes
    ----------
    final, partial, record : Path
        The output, the partial output written in its place, and its record folder.
    folder : bool
        Whether the partial output is a folder (zarr) or a file (uncompressed TIFF).
    fresh : bool
        True when the partial output must be created; False when resuming one.
    done : set of tuple of int
        Indices of the blocks already written.
    chunks : tuple of tuple of int
        The blocks of the partial output (dask chunks); data must be written in these.
    """

    final: Path
    partial: Path
    record: Path
    folder: bool
    fresh: bool
    done: set[tuple[int, ...]]
    chunks: tuple[tuple[int, ...], ...]
    settings: dict[str, Any]

    def record_layout(self) -> None:
        """Record a fresh partial output, once laid out and synced, before any block.

        Lay out, sync, then record: a partial output killed while being laid out has no
        record, so it is started over rather than trusted.
        """
        if self.record.is_dir():
            return
        _sync(self.partial)
        _write_record(self.record, self.settings)

    def align(self, data: da.Array) -> da.Array:
        """Return `data` rechunked to the partial output's blocks if they differ."""
        if data.chunks == self.chunks:
            return data
        out: da.Array = data.rechunk(self.chunks)
        return out

    def commit(self, *, overwrite: bool) -> None:
        """Remove the record and move the finished partial output onto the final name."""
        check_complete(self)
        if self.folder:
            remove_path(self.record)
            _commit(self.partial, self.final, overwrite=overwrite)
        else:
            _commit(self.partial, self.final, overwrite=overwrite)
            remove_path(self.record)

    def discard(self) -> None:
        """Delete the partial output and its record (once no write into it is running)."""
        _discard(self.partial, self.record)


def _start(partial: Path, *, folder: bool) -> None:
    """Create a fresh partial folder; its record is made once it is laid out."""
    if folder:
        partial.mkdir()


def _sync(path: Path) -> None:
    """Flush file `path`, or every file of folder `path` (its layout: metadata only), to disk."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _begin(
    final: Path,
    settings: dict[str, Any],
    *,
    folder: bool,
    resume: bool,
    overwrite: bool,
    nbytes: int,
    compressed: bool,
) -> PartialWrite:
    if os.path.lexists(final) and not overwrite:  # finished while we waited for the lock
        msg = f"the output {os.fspath(final)!r} already exists: pass overwrite=True / --overwrite"
        raise OutputExistsError(msg)
    partial = partial_path(final)
    record = record_path(partial, folder=folder)
    chunks = _chunks(settings)
    total = math.prod(len(c) for c in chunks)
    state = None
    if os.path.lexists(partial):
        # the record of what is there (a folder's may be where a file's is expected)
        state = _read_record(record_path(partial, folder=os.path.isdir(partial)))
        if not resume:
            if not overwrite:
                progress = f" ({len(state[1])} of {total} blocks done)" if state else ""
                msg = (
                    f"an interrupted run left the partial output {os.fspath(partial)!r}"
                    f"{progress}: "
                    "pass resume=True / --resume to continue it, or overwrite=True / "
                    "--overwrite to start over"
                )
                raise PartialOutputError(msg)
            state = None
        elif state is not None:
            why = settings_differ(state[0], settings)
            if why is not None and not overwrite:
                msg = (
                    f"cannot resume {os.fspath(final)!r}: {why}; run with the same settings, "
                    "or pass overwrite=True / --overwrite to start over"
                )
                raise ResumeMismatchError(msg)
            if why is not None:
                state = None
        # a partial output without a record has no finished block: nothing to keep
    if state is not None and (not folder) != os.path.isfile(partial):
        state = None
    if state is None:
        if os.path.lexists(partial) or os.path.lexists(record):
            _discard(partial, record)
        check_free_space(final, nbytes, compressed=compressed)
        _start(partial, folder=folder)
        return PartialWrite(final, partial, record, folder, True, set(), chunks, settings)
    old = _chunks(state[0])
    done = state[1]
    if folder:
        _remove_store_temporaries(partial)
    left = 1.0 - len(done) / max(math.prod(len(c) for c in old), 1)
    check_free_space(final, int(nbytes * left), compressed=compressed)
    return PartialWrite(final, partial, record, folder, False, done, old, state[0])


def clean_stale(final: Path) -> None:
    """Delete what killed runs left next to `final`; call with `final`'s lock held.

    Every run writing `final` holds its lock, so the temporaries of other processes are
    stale: the page file of a compressed TIFF (``.<name>.zchunk-tmp-<pid>-<hex>``) and a
    record being created. An old output moved aside (``-old-``) by a run killed before it
    moved the new one in is put back when `final` is missing, else deleted.
    """
    prefix = f".{final.name}{TEMP_MARKER}"
    record_tmp = record_path(partial_path(final), folder=False).name + "-new-"
    mine = f"-{os.getpid()}-"
    try:
        names = os.listdir(final.parent)
    except FileNotFoundError:
        names = []
    for name in names:
        if mine in name:
            continue
        path = final.parent / name
        if name.startswith(f"{prefix}old-") and not os.path.lexists(final):
            with contextlib.suppress(OSError):
                os.rename(path, final)
        elif name.startswith((f"{prefix}tmp-", f"{prefix}old-", record_tmp)):
            with contextlib.suppress(OSError):
                remove_path(path)
    inside = partial_path(final)
    record = record_path(inside, folder=False)
    if os.path.lexists(record) and not os.path.lexists(inside):
        remove_path(record)  # a file's commit killed after its rename, before this removal
    if inside.is_dir():
        for name in os.listdir(inside):
            if name.startswith(f"{RECORD_NAME}-new-") and mine not in name:
                with contextlib.suppress(OSError):
                    remove_path(inside / name)


def finished_output(
    path: PathLike,
    stack: Stack,
    *,
    probe: Callable[[Path], tuple[int, np.dtype[Any]]],
    overwrite: bool,
) -> Path | None:
    """With ``resume=True``: return `path` if it is this run's finished output, else None.

    A finished run left its output and no partial output. It is taken as this run's when it
    holds as many pixels as `stack`, of its dtype (`probe` reads the output's header), and no
    input changed after it was written. (An array input, with no files, is not checked further:
    pass `overwrite` to write it again.) Otherwise, without `overwrite`, OutputExistsError; with it, None (the
    output is written again).
    """
    final = Path(os.path.abspath(os.fspath(path)))
    if not os.path.lexists(final) or os.path.lexists(partial_path(final)):
        return None
    why = None
    size, dtype = int(stack.data.size), np.dtype(stack.dtype).newbyteorder("=")
    try:
        got_size, got_dtype = probe(final)
    except Exception as exc:  # noqa: BLE001 - any unreadable output is not a finished one
        why = f"it cannot be read ({type(exc).__name__})"
    else:
        if (got_size, np.dtype(got_dtype)) != (size, np.dtype(dtype)):
            why = f"it holds {got_size} pixels of {got_dtype}, this run {size} of {dtype}"
    if why is None:
        written = newest_mtime(final)
        for source in input_identity(_source_paths(stack)):
            changed = max(source.get("mtime_ns", 0), source.get("ctime_ns", 0))
            if source.get("missing") or changed > written:
                why = f"the input {source['path']} changed after it was written"
                break
    if why is None:
        with output_lock(final):  # what a run killed while finishing left: nothing to keep
            clean_stale(final)
        return final
    if overwrite:
        return None
    msg = (
        f"the output {os.fspath(final)!r} exists but is not this run's finished output: "
        f"{why}; pass overwrite=True / --overwrite to write it again"
    )
    raise OutputExistsError(msg)


def newest_mtime(path: Path) -> int:
    """Return the modification time of file `path`, or the newest of a folder's files."""
    if not path.is_dir():
        return os.stat(path).st_mtime_ns
    return max((p.stat().st_mtime_ns for p in path.rglob("*")), default=0)


def _source_paths(stack: Stack) -> list[str]:
    sources = stack.attrs.get("source_paths") or ()
    if isinstance(sources, (str, os.PathLike)):
        sources = (sources,)
    return [os.fspath(s) for s in sources if s]


def discard_partial(final: Path) -> None:
    """Delete the partial output of `final` and its record, if any (and its stale lock)."""
    partial = partial_path(final)
    with output_lock(final):
        _discard(partial, record_path(partial, folder=True))


def check_run_space(needs: Sequence[tuple[Path, int]]) -> None:
    """Raise DiskSpaceError unless each file system has room for all it must hold.

    `needs` lists (output, bytes) for everything a run writes, scratch included; the bytes
    are summed per file system before comparing with its free space, once, up front.
    """
    total: dict[int, tuple[Path, int]] = {}
    for final, nbytes in needs:
        folder = _existing_folder(final.parent)
        dev = os.stat(folder).st_dev
        first, sum_ = total.get(dev, (final, 0))
        total[dev] = (first, sum_ + nbytes)
    for final, nbytes in total.values():
        check_free_space(final, nbytes, compressed=True, what="this run's outputs and scratch")


#: zarr's local store writes a chunk to ``<key>.<32 hex digits>.partial``, then renames it.
_STORE_TEMPORARY = re.compile(r".*\.[0-9a-f]{32}\.partial")


def _remove_store_temporaries(folder: Path) -> None:
    """Delete the chunk files a killed run was writing, so that they do not end in the output."""
    for root, dirnames, names in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != RECORD_NAME]
        for name in names:
            if _STORE_TEMPORARY.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))


def _chunks(settings: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(n) for n in c) for c in settings["chunks"])


def _keeps_partial(exc: BaseException) -> bool:
    """Interruptions and system trouble keep a partial output; bad data and bugs do not."""
    if isinstance(exc, ZChunkError):
        return isinstance(exc, (DiskSpaceError, _IncompleteWriteError))
    return isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError, OSError))


@contextlib.contextmanager
def resumable_output(
    final: Path,
    settings: dict[str, Any],
    *,
    folder: bool,
    resume: bool,
    overwrite: bool,
    nbytes: int,
    compressed: bool,
) -> Iterator[PartialWrite]:
    """Start or resume the partial output of `final`; keep or delete it if the body fails.

    Parameters
    ----------
    final : Path
        The output, as returned by :func:`~zchunk.sinks._atomic.prepare_output`.
    settings : dict
        What the output holds (:func:`settings_of`).
    folder : bool
        Whether the partial output is a folder (zarr) or a file.
    resume : bool
        Continue an existing partial output whose settings match; without it an existing
        partial output is an error (or discarded with `overwrite`).
    overwrite : bool
        Discard a partial output that cannot be resumed (other settings, or `resume` false).
    nbytes, compressed :
        Size of the whole output and whether it is compressed, for the free space check.

    Yields
    ------
    PartialWrite
        Where to write, and the blocks to skip. The body writes the missing blocks with
        :func:`store_resumable` and calls :meth:`PartialWrite.commit` (or, for a scratch
        array, writes the output from it and calls :meth:`PartialWrite.discard`).

    Raises
    ------
    PartialOutputError
        If a partial output exists and `resume` and `overwrite` are both false.
    ResumeMismatchError
        If `resume` is true, the partial output's settings differ and `overwrite` is false.
    DiskSpaceError
        If the output's folder has less free space than the output needs (or the rest of it,
        when resuming), or if the disk fills up while writing (the partial output is kept).

    Notes
    -----
    When the body is interrupted (``KeyboardInterrupt``, ``SystemExit``), runs out of memory
    or fails with an ``OSError`` (disk full, I/O error), the partial output is kept for a later
    ``resume=True``, and a note saying so is added to the exception. Any other error (damaged
    input, input changed, a bug) deletes it: nothing is left behind.
    """
    with output_lock(final):
        clean_stale(final)
        job = _begin(
            final,
            settings,
            folder=folder,
            resume=resume,
            overwrite=overwrite,
            nbytes=nbytes,
            compressed=compressed,
        )
        try:
            yield job
        except BaseException as exc:
            _keep_or_discard(job, exc)
            raise


def _keep_or_discard(job: PartialWrite, exc: BaseException) -> None:
    """Discard the partial output after `exc`, or keep it and say how to resume (in `exc`)."""
    final = job.final
    if not _keeps_partial(exc):
        job.discard()
        return
    note = (
        f"the partial output {os.fspath(job.partial)!r} was kept: run again with "
        "resume=True / --resume to continue it"
    )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        if isinstance(exc, DiskSpaceError):
            return
        msg = (
            f"the disk filled up while writing {os.fspath(final)!r} ({exc.strerror}); "
            f"{note}, after freeing some space"
        )
        raise _disk_space_error(msg) from exc
    exc.add_note(f"zchunk: {note}")


# writing the missing blocks -------------------------------------------------------------------


def _store_block(
    block: np.ndarray,
    target: Any,
    region: tuple[slice, ...],
    blocks_dir: str,
    block_id: tuple[int, ...] | None = None,
) -> np.ndarray:
    target[region] = block
    # then record what the storage holds for it (never in a deleted, abandoned record folder)
    digest = stored_digest(target, region)
    if digest is None:
        msg = f"block {block_id} of {blocks_dir!r} is not on disk after it was written"
        raise OSError(errno.EIO, msg)
    write_marker(blocks_dir, tuple(block_id or ()), digest)
    return np.empty((0,) * block.ndim, dtype=np.uint8)


class _IncompleteWriteError(PartialOutputError):
    """Blocks without a marker after every block was written: the partial output is kept."""


def check_complete(job: PartialWrite) -> None:
    """Raise if a block of `job` has no valid marker (before the partial output is used)."""
    missing = _markers.check_complete(os.fspath(job.record / _BLOCKS), job.chunks)
    if missing:
        msg = (
            f"the partial output {os.fspath(job.partial)!r} misses {len(missing)} block(s) "
            f"(first {missing[0]}) after writing; it was kept: run again with --resume"
        )
        raise _IncompleteWriteError(msg)


def store_resumable(writes: Sequence[tuple[da.Array, Any, PartialWrite]]) -> None:
    """Compute the blocks not yet done of each (data, target, job), write and record them.

    Every block of `data` (in the chunks of the partial output, see
    :meth:`PartialWrite.align`) that is not in ``job.done`` is computed once, through the
    caller's dask scheduler, written to the same region of `target`, and then recorded. The
    graph is culled to those blocks, so finished blocks cost nothing, not even a read. Several
    writes are computed together, so results that share an input read it once.
    """
    graphs = []
    keys: list[tuple[Any, ...]] = []
    for data, target, job in writes:
        if data.chunks != job.chunks:
            msg = f"chunks {data.chunks} are not the partial output's {job.chunks}"
            raise AssertionError(msg)
        if job.fresh:
            job.record_layout()
        if not job.fresh:  # trust a marker only if the storage matches it
            job.done = verified(target, os.fspath(job.record / _BLOCKS), job.chunks, job.done)
        name = f"zchunk-store-{uuid.uuid4().hex}"
        stored = da.map_blocks(
            _store_block,
            data,
            GuardedTarget(target, job.partial),
            ArraySliceDep(data.chunks),
            os.fspath(job.record / _BLOCKS),
            name=name,
            dtype=np.uint8,
            meta=np.empty((0,) * data.ndim, dtype=np.uint8),
        )
        graphs.append(stored.__dask_graph__())
        keys += [(name, *i) for i in np.ndindex(*data.numblocks) if i not in job.done]
    if keys:
        graph = HighLevelGraph.merge(*graphs)
        compute_as_if_collection(da.Array, graph, keys)
    for _, _, job in writes:
        check_complete(job)
