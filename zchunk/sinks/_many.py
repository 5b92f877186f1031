"""Write several results of one input in one pass over it.

Results made from the same input share its read tasks (``project_many``). Written one after
the other, every writer would read the input again; here all results are computed together,
in one pass, into scratch zarr arrays next to the outputs (small: a projection is the input
divided by z), and then each is written to its own output from its scratch array. The scratch
arrays are resumable outputs (``.<name>.scratch.zchunk-partial``, see
:mod:`zchunk.sinks._resume`), deleted once every output is written.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import dask.array as da

from zchunk.errors import OptionError
from zchunk.sinks._atomic import prepare_output
from zchunk.sinks._lock import output_lock
from zchunk.sinks._resume import resumable_output, settings_of, store_resumable
from zchunk.sinks._zarr import (
    check_writable,
    create_aligned_array,
    native_order,
    open_aligned_array,
    regular_grid,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any

    from zchunk._types import PathLike
    from zchunk.sinks._resume import PartialWrite
    from zchunk.stack import Stack

__all__ = ["save_many"]


def save_many(
    stacks: Mapping[str, Stack],
    paths: Mapping[str, PathLike],
    /,
    *,
    save: Callable[..., Path],
    overwrite: bool = False,
    compression: str | None = None,
    resume: bool = False,
) -> dict[str, Path]:
    """Compute `stacks` together (one read of their shared input) and write each to its path.

    Parameters
    ----------
    stacks : Mapping of str to Stack
        Results to write, by name.
    paths : Mapping of str to path
        Output of each result (same keys); the format follows the suffix, as in ``save``.
    save : callable
        The single-output writer (:func:`zchunk.sinks.save`).
    overwrite : bool
        Replace existing outputs (never an input), and discard partial outputs not resumed.
    compression : str, optional
        TIFF compression.
    resume : bool
        Continue the scratch arrays and outputs of an interrupted run.

    Returns
    -------
    dict of str to Path
        The written outputs.

    Raises
    ------
    OutputExistsError
        Before anything is computed, if an output exists (without `overwrite`) or is an input.
    PartialOutputError, ResumeMismatchError, DiskSpaceError
        As :func:`zchunk.sinks.save`.
    """
    if set(stacks) != set(paths):
        msg = f"stacks and paths name different results: {sorted(stacks)} vs {sorted(paths)}"
        raise OptionError(msg)
    finals = {}
    for key, stack in stacks.items():
        check_writable(stack)
        finals[key] = prepare_output(paths[key], stack.attrs, overwrite=overwrite)
    options: dict[str, Any] = {"overwrite": overwrite, "compression": compression, "resume": resume}
    with contextlib.ExitStack() as locks:
        for final in finals.values():  # every output is ours before anything is written
            locks.enter_context(output_lock(final))
        return _save_all(stacks, finals, save, options)


def _save_all(
    stacks: Mapping[str, Stack],
    finals: Mapping[str, Path],
    save: Callable[..., Path],
    options: dict[str, Any],
) -> dict[str, Path]:
    resume, overwrite = options["resume"], options["overwrite"]
    if len(stacks) == 1:
        ((key, stack),) = stacks.items()
        return {key: save(stack, finals[key], **options)}
    with contextlib.ExitStack() as scratches:
        writes: list[tuple[da.Array, Any, PartialWrite]] = []
        arrays = {}
        for key, stack in stacks.items():
            data = regular_grid(native_order(stack.data))
            scratch = finals[key].with_name(f"{finals[key].name}.scratch")
            job = scratches.enter_context(
                resumable_output(
                    scratch,
                    settings_of(stack, data, format="scratch", writer={"level": 1}),
                    folder=True,
                    resume=resume,
                    overwrite=overwrite,
                    nbytes=int(data.nbytes),
                    compressed=True,
                )
            )
            data = job.align(data)
            if job.fresh:
                array = create_aligned_array(
                    os.fspath(job.partial), data, axes=stack.axes, level=1, dimension_names=False
                )
            else:
                array = open_aligned_array(os.fspath(job.partial), data)
            writes.append((data, array, job))
            arrays[key] = array
        store_resumable(writes)
        written = {}
        for key, stack in stacks.items():
            array = arrays[key]
            staged = stack.replace(data=da.from_zarr(array, chunks=array.shards or array.chunks))
            written[key] = save(staged, finals[key], **options)
        for _, _, job in writes:
            job.discard()
        return written
