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
removed, the finished output's record of its settings written (:mod:`zchunk.sinks._done`) and
the partial output renamed onto the final name: an output under its final name is always
complete, and ``--resume`` keeps it only if its record holds this run's settings.

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
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from dask.base import compute_as_if_collection
from dask.highlevelgraph import HighLevelGraph

from zchunk._graph import block_regions
from zchunk._partial import partial_path, record_path
from zchunk.errors import (
    DiskSpaceError,
    OutputExistsError,
    PartialOutputError,
    ResumeMismatchError,
    ZChunkError,
)
from zchunk.sinks import _markers
from zchunk.sinks._atomic import (
    GuardedTarget,
    OutputAppearedError,
    deferred_interrupt,
    process_tag,
    remove_path,
)
from zchunk.sinks._done import (
    commit_output,
    finished_reason,
    sync_tree,
)
from zchunk.sinks._lock import fence_of, output_lock
from zchunk.sinks._markers import (
    BLOCKS_NAME,
    SETTINGS_NAME,
    read_record,
    verified,
    write_marker,
    written_digest,
)
from zchunk.sinks._settings import settings_differ
from zchunk.sinks._space import check_free_space, disk_space_error
from zchunk.sinks._stale import (
    clean_stale,
    discard_leftover,
    discard_partial_output,
    interrupted_replacement,
    remove_store_temporaries,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from zchunk._types import PathLike

#: Summary of one block computed as it is stored (see :func:`store_resumable`).
type Summarize = Callable[[np.ndarray, tuple[slice, ...]], Any]

__all__ = [
    "PartialWrite",
    "resumable_output",
    "store_resumable",
]


# the partial output ---------------------------------------------------------------------------


def _write_record(record: Path, settings: Mapping[str, Any]) -> None:
    """Create `record` with its settings and an empty block list, atomically (by rename)."""
    tmp = record.with_name(f"{record.name}-new-{process_tag()}-{uuid.uuid4().hex[:8]}")
    try:
        (tmp / BLOCKS_NAME).mkdir(parents=True)
        (tmp / SETTINGS_NAME).write_text(json.dumps(settings, indent=1, sort_keys=True))
        os.rename(tmp, record)
    except BaseException:
        remove_path(tmp)
        raise


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
    #: Set once the output is under its final name, with its record.
    committed: bool = False

    def record_layout(self) -> None:
        """Record a fresh partial output, once laid out and synced, before any block.

        Lay out, sync, then record: a partial output killed while being laid out has no
        record, so it is started over rather than trusted.
        """
        if self.record.is_dir():
            return
        sync_tree(self.partial)
        _write_record(self.record, self.settings)

    def align(self, data: da.Array) -> da.Array:
        """Return `data` rechunked to the partial output's blocks if they differ."""
        if data.chunks == self.chunks:
            return data
        out: da.Array = data.rechunk(self.chunks)
        return out

    def commit(self, *, overwrite: bool) -> None:
        """Remove the block record, record the output as finished, move it onto its name.

        One step for Ctrl-C (:func:`~zchunk.sinks._atomic.deferred_interrupt`): an
        interruption during it is raised once the output is finished.
        """
        check_complete(self)
        with deferred_interrupt():
            if self.folder:
                remove_path(self.record)  # first: the record of the output covers every file
            commit_output(
                self.partial, self.final, self.settings, overwrite=overwrite, partial=self.settings
            )
            self.committed = True
            remove_path(self.record)  # a file's, next to it

    def discard(self) -> None:
        """Delete the partial output and its record (once no write into it is running)."""
        discard_partial_output(self.partial, self.record)


def _start(partial: Path, *, folder: bool) -> None:
    """Create a fresh partial folder; its record is made once it is laid out."""
    if folder:
        partial.mkdir()


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
        raise OutputAppearedError(msg)
    partial = partial_path(final)
    record = record_path(partial, folder=folder)
    chunks = _chunks(settings)
    total = math.prod(len(c) for c in chunks)
    state = None
    if os.path.lexists(partial):
        # the record of what is there (a folder's may be where a file's is expected)
        state = read_record(record_path(partial, folder=os.path.isdir(partial)))
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
            discard_partial_output(partial, record)
        check_free_space(final, nbytes, compressed=compressed)
        _start(partial, folder=folder)
        return PartialWrite(final, partial, record, folder, True, set(), chunks, settings)
    old = _chunks(state[0])
    done = state[1]
    if folder:
        remove_store_temporaries(partial)
    left = 1.0 - len(done) / max(math.prod(len(c) for c in old), 1)
    check_free_space(final, int(nbytes * left), compressed=compressed)
    return PartialWrite(final, partial, record, folder, False, done, old, state[0])


def finished_output(path: PathLike, settings: Mapping[str, Any], *, overwrite: bool) -> Path | None:
    """With ``resume=True``: return `path` if it is this run's finished output, else None.

    An existing output is this run's when its record (see :mod:`zchunk.sinks._done`) describes
    it as it is now and holds these `settings` (same operation and parameters, calibration,
    writer settings, inputs unchanged). A partial output this run's commit left behind (the
    scratch array of a compressed TIFF, killed before deleting it) is deleted. Otherwise,
    without `overwrite`, OutputExistsError naming the difference; with it, None (the output is
    written again). No output: None.
    """
    final = Path(os.path.abspath(os.fspath(path)))
    if not os.path.lexists(final):
        return None
    with output_lock(final):
        clean_stale(final)
        why = finished_reason(final, settings) if os.path.lexists(final) else ""
        if why is None:
            discard_leftover(final)
            return final
        replacing = None if overwrite or not why else interrupted_replacement(final)
    if overwrite or not why:
        return None
    fix = "pass overwrite=True / --overwrite to write it again"
    if replacing is not None:
        why = (
            "a run replacing it (with --overwrite) was interrupted just before moving its "
            f"finished output {os.fspath(replacing)!r} in, so the record beside it is that run's"
        )
        fix = "run that run again with resume=True, overwrite=True (--resume --overwrite)"
    msg = f"the output {os.fspath(final)!r} exists but is not this run's finished output: {why}; {fix}"
    raise OutputExistsError(msg)


def discard_partial(final: Path) -> None:
    """Delete the partial output of `final` and its record, if any (and its stale lock)."""
    partial = partial_path(final)
    with output_lock(final):
        discard_partial_output(partial, record_path(partial, folder=True))


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
    if job.committed:  # e.g. Ctrl-C during the commit, raised once it was done
        exc.add_note(f"zchunk: the output {os.fspath(final)!r} was finished before it took effect")
        return
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
        raise disk_space_error(msg) from exc
    exc.add_note(f"zchunk: {note}")


# writing the missing blocks -------------------------------------------------------------------


def _store_block(
    block: np.ndarray,
    target: Any,
    region: tuple[slice, ...],
    blocks_dir: str,
    block_id: tuple[int, ...] | None = None,
    summarize: Summarize | None = None,
) -> Any:
    target[region] = block
    # then record what was stored for it (never in a deleted, abandoned record folder)
    digest = written_digest(target, region)
    target.check_fence()  # no marker once another run owns the output (see _lock.Fence)
    if digest is None:
        msg = f"block {block_id} of {blocks_dir!r} is not on disk after it was written"
        raise OSError(errno.EIO, msg)
    write_marker(blocks_dir, tuple(block_id or ()), digest)
    return None if summarize is None else summarize(block, region)


def _recording(target: Any) -> Any:
    """Return `target`, a zarr array opened to keep what it writes (see ``_written``) if local."""
    if "zarr" not in sys.modules:  # not a zarr array: no need to import zarr
        return target
    from zchunk.sinks._written import recording

    return recording(target)


class _IncompleteWriteError(PartialOutputError):
    """Blocks without a marker after every block was written: the partial output is kept."""


def check_complete(job: PartialWrite) -> None:
    """Raise if a block of `job` has no valid marker (before the partial output is used)."""
    missing = _markers.check_complete(os.fspath(job.record / BLOCKS_NAME), job.chunks)
    if missing:
        msg = (
            f"the partial output {os.fspath(job.partial)!r} misses {len(missing)} block(s) "
            f"(first {missing[0]}) after writing; it was kept: run again with --resume"
        )
        raise _IncompleteWriteError(msg)


def store_resumable(
    writes: Sequence[tuple[da.Array, Any, PartialWrite]], *, summarize: Summarize | None = None
) -> list[dict[tuple[int, ...], Any]]:
    """Compute the blocks not yet done of each (data, target, job), write and record them.

    Every block of `data` (in the chunks of the partial output, see
    :meth:`PartialWrite.align`) that is not in ``job.done`` is computed once, through the
    caller's dask scheduler, written to the same region of `target`, and then recorded. The
    graph holds those blocks only, so finished blocks cost nothing, not even a read. Several
    writes are computed together, so results that share an input read it once.

    Returns, per write, ``summarize(block, region)`` of every block by block index: of a
    computed block in the task that computed it, of a block an earlier run wrote as read back
    from `target` (empty without `summarize`).
    """
    graphs = []
    own: list[list[tuple[Any, ...]]] = []
    for data, target, job in writes:
        if data.chunks != job.chunks:
            msg = f"chunks {data.chunks} are not the partial output's {job.chunks}"
            raise AssertionError(msg)
        if job.fresh:
            job.record_layout()
        if not job.fresh:  # trust a marker only if the storage matches it
            job.done = verified(target, os.fspath(job.record / BLOCKS_NAME), job.chunks, job.done)
        name = f"zchunk-store-{uuid.uuid4().hex}"
        guarded = GuardedTarget(_recording(target), job.partial, fence_of(job.partial))
        blocks_dir = os.fspath(job.record / BLOCKS_NAME)
        layer = {
            (name, *i): (_store_block, (data.name, *i), guarded, region, blocks_dir, i, summarize)
            for i, region in block_regions(data.chunks)
            if i not in job.done
        }
        deps: list[Any] = [data]  # dask's Array does not match its own DaskCollection type
        graphs.append(HighLevelGraph.from_collections(name, layer, dependencies=deps))  # type: ignore[arg-type]
        own.append(list(layer))
    keys = [key for keys in own for key in keys]
    results = (
        compute_as_if_collection(da.Array, HighLevelGraph.merge(*graphs), keys) if keys else []
    )
    computed = dict(zip(keys, results, strict=True))
    out: list[dict[tuple[int, ...], Any]] = []
    for (data, target, job), mine in zip(writes, own, strict=True):
        check_complete(job)
        summaries: dict[tuple[int, ...], Any] = {}
        if summarize is not None:
            summaries = {tuple(key[1:]): computed[key] for key in mine}
            for i, region in block_regions(data.chunks):
                if i not in summaries:  # written by an earlier run
                    summaries[i] = summarize(np.asarray(target[region]), region)
        out.append(summaries)
    return out
