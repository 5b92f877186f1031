"""One write sequence for every block-addressed output: the :class:`Writer` protocol.

A writer knows its format's own steps: the settings a partial output is resumed under, how to
create the empty output, how to open a partial one again, and what to add when every block
is stored (pyramid levels). :func:`write` owns the rest, in one place: the checks (writable
dtype, an existing output, an input never replaced), a finished output kept on resume, the
partial output under its temporary name (``.<name>.zchunk-partial``) with its record of
finished blocks, the blocks aligned to the output's shards and stored once, and the commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from zchunk.errors import StackFormatError
from zchunk.sinks._atomic import (
    OutputAppearedError,
    atomic_output,
    deferred_interrupt,
    prepare_output,
)
from zchunk.sinks._done import commit_output
from zchunk.sinks._resume import finished_output, resumable_output, store_resumable
from zchunk.sinks._settings import settings_of

if TYPE_CHECKING:
    from pathlib import Path

    import dask.array as da

    from zchunk._types import PathLike
    from zchunk.stack import Stack

__all__ = [
    "SCRATCH_LEVEL",
    "Writer",
    "check_writable",
    "native_order",
    "regular_grid",
    "scratch_settings",
    "write",
]

#: zstd level of scratch arrays (read back once, then deleted): fast rather than small.
SCRATCH_LEVEL = 1


def check_writable(stack: Stack) -> None:
    """Raise StackFormatError unless `stack` holds a non-empty array of integers or floats.

    Examples
    --------
    >>> from zchunk.stack import Stack
    >>> check_writable(Stack(np.zeros((2, 3), dtype=bool)))
    Traceback (most recent call last):
    ...
    zchunk.errors.StackFormatError: cannot write pixels of dtype bool: cast the stack to an integer or float dtype first (e.g. uint8)
    """
    dtype = stack.dtype
    if dtype.kind not in "uif":
        msg = (
            f"cannot write pixels of dtype {dtype}: cast the stack to an integer or float "
            "dtype first (e.g. uint8)"
        )
        raise StackFormatError(msg)
    if stack.data.size == 0:
        msg = f"cannot write an empty stack of shape {stack.shape}"
        raise StackFormatError(msg)


def native_order(data: da.Array) -> da.Array:
    """Return `data` lazily converted to the machine's byte order, if it is not already."""
    dtype = np.dtype(data.dtype)
    if dtype.isnative:
        return data
    out: da.Array = data.astype(dtype.newbyteorder("="))
    return out


def _is_regular(chunks: tuple[int, ...]) -> bool:
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


def regular_grid(data: da.Array) -> da.Array:
    """Return `data` with chunks on a regular grid, as zarr needs, rechunking only if necessary.

    A regular grid has equal chunks along each axis except a smaller last one. Along an axis
    whose chunks are irregular, the target chunk is the first chunk's size, except along the
    first axis of a volume (ndim >= 3: z, or t for a timelapse), which is never split: irregular
    chunks there are merged into one chunk spanning the axis.

    Examples
    --------
    >>> x = da.zeros((4, 10, 6), chunks=((4,), (3, 3, 4), (6,)))
    >>> regular_grid(x).chunks
    ((4,), (3, 3, 3, 1), (6,))
    >>> regular_grid(da.zeros((5, 4), chunks=((2, 3), 4))).chunks
    ((2, 2, 1), (4,))
    """
    target: list[int] = []
    changed = False
    for axis, chunks in enumerate(data.chunks):
        if _is_regular(chunks):
            target.append(chunks[0])
            continue
        changed = True
        target.append(int(data.shape[axis]) if axis == 0 and data.ndim >= 3 else chunks[0])
    if not changed:
        return data
    out: da.Array = data.rechunk(tuple(target))
    return out


class Writer(Protocol):
    """The steps of one output format that :func:`write` drives.

    Attributes
    ----------
    format : str
        Its name in the settings of a partial output (resuming in another format is refused).
    folder : bool
        Whether the output is a folder (zarr) rather than one file.
    compressed : bool
        Whether the output is compressed (its uncompressed size is an upper bound).
    scratch : bool, optional
        Whether the partial output is a scratch zarr array that :meth:`export` writes the
        output from (a compressed TIFF, whose pages must be written in order), rather than the
        output itself. Absent means False, and :meth:`export` is not needed.
    summarize : callable or None, optional
        ``summarize(block, region)``, computed for every block as it is stored and handed to
        :meth:`finish` as a third argument, a dict by block index (OME-Zarr: each channel's
        range, for its display window). Absent or None: :meth:`finish` gets two arguments.
    """

    @property
    def format(self) -> str: ...

    @property
    def folder(self) -> bool: ...

    @property
    def compressed(self) -> bool: ...

    def settings(self, data: da.Array, /) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return the (metadata, writer options) a partial output is resumed under."""
        ...

    def create(self, partial: Path, data: da.Array, /) -> Any:
        """Create the empty output at `partial`; return what blocks are stored into.

        The target is a zarr array, or an object with ``target[region] = block`` and
        ``stored_digest(region)`` (the bytes and crc32 it stores there, checked on resume).
        """
        ...

    def reopen(self, partial: Path, data: da.Array, /) -> Any:
        """Open the partial output of an interrupted run; return what blocks are stored into."""
        ...

    def finish(self, partial: Path, data: da.Array, /) -> None:
        """Complete the output once every block is stored (pyramid levels...)."""
        ...


def scratch_settings(stack: Stack, data: da.Array, format: str) -> dict[str, Any]:
    """Return the settings of a scratch array holding `data` (pixels only, no metadata)."""
    return settings_of(stack, data, format=format, writer={"level": SCRATCH_LEVEL})


def write(
    writer: Writer, stack: Stack, path: PathLike, /, *, overwrite: bool, resume: bool
) -> Path:
    """Write `stack` to `path` with `writer`, block by block, atomically and resumably.

    Returns the absolute output path; raises as :func:`zchunk.sinks.save` says.
    """
    check_writable(stack)
    data = native_order(stack.data)
    if writer.folder:  # zarr: blocks on a regular grid, one shard each
        data = regular_grid(data)
    metadata, options = writer.settings(data)
    settings = settings_of(stack, data, format=writer.format, metadata=metadata, writer=options)
    if resume and (done := finished_output(path, settings, overwrite=overwrite)):
        return done
    try:
        return _write(writer, stack, data, path, settings, overwrite=overwrite, resume=resume)
    except OutputAppearedError:  # another run finished it since: this run's, if its settings
        if resume and (done := finished_output(path, settings, overwrite=overwrite)):
            return done
        raise


def _write(
    writer: Writer,
    stack: Stack,
    data: da.Array,
    path: PathLike,
    settings: dict[str, Any],
    *,
    overwrite: bool,
    resume: bool,
) -> Path:
    final = prepare_output(path, stack.attrs, overwrite=overwrite)
    scratch = bool(getattr(writer, "scratch", False))
    with resumable_output(
        final,
        scratch_settings(stack, data, f"{writer.format}-scratch") if scratch else settings,
        folder=writer.folder,
        resume=resume,
        overwrite=overwrite,
        nbytes=int(data.nbytes) * (2 if scratch else 1),  # a scratch array, then the output
        compressed=writer.compressed,
    ) as job:
        data = job.align(data)
        target = writer.create(job.partial, data) if job.fresh else writer.reopen(job.partial, data)
        summarize = getattr(writer, "summarize", None)  # a summary of every block stored
        (summaries,) = store_resumable([(data, target, job)], summarize=summarize)
        if summarize is None:
            writer.finish(job.partial, data)
        else:
            writer.finish(job.partial, data, summaries)  # type: ignore[call-arg]
        if not scratch:
            job.commit(overwrite=overwrite)
            return final

        def commit(tmp: Path) -> None:  # recorded with `settings`, made from this scratch
            with deferred_interrupt():  # one step for Ctrl-C, as job.commit
                commit_output(tmp, final, settings, overwrite=overwrite, partial=job.settings)
                job.committed = True
                job.discard()

        with atomic_output(final, overwrite=overwrite, commit=commit) as tmp:
            writer.export(job.partial, data, tmp)  # type: ignore[attr-defined]
    return final
