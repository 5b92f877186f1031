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
from zchunk.sinks import save
from zchunk.sinks._atomic import prepare_output
from zchunk.sinks._lock import output_lock
from zchunk.sinks._resume import (
    discard_partial,
    resumable_output,
    store_resumable,
)
from zchunk.sinks._settings import ARRAY_KEY, array_identity
from zchunk.sinks._space import check_run_space
from zchunk.sinks._write import scratch_settings
from zchunk.sinks._zarr import (
    check_writable,
    create_scratch,
    native_order,
    open_aligned_array,
    regular_grid,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
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
    overwrite: bool = False,
    compression: str | None = None,
    resume: bool = False,
    **extra: Any,
) -> dict[str, Path]:
    """Compute `stacks` together (one read of their shared input) and write each to its path.

    Parameters
    ----------
    stacks : Mapping of str to Stack
        Results to write, by name.
    paths : Mapping of str to path
        Output of each result (same keys); the format follows the suffix, as in ``save``.
    overwrite : bool
        Replace existing outputs (never an input), and discard partial outputs not resumed.
    compression : str, optional
        TIFF compression.
    resume : bool
        Continue the scratch arrays and outputs of an interrupted run.
    **extra
        Further options of every output's ``save`` (``pyramid``, ``ngff_version``).

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
        # with resume, existing outputs are checked below: kept if finished, else refused
        finals[key] = prepare_output(paths[key], stack.attrs, overwrite=overwrite or resume)
    options: dict[str, Any] = {
        "overwrite": overwrite,
        "compression": compression,
        "resume": resume,
        **extra,
    }
    with contextlib.ExitStack() as locks:
        for final in finals.values():  # every output is ours before anything is written
            locks.enter_context(output_lock(final))
        return _save_all(stacks, finals, options)


def _scratch(final: Path) -> Path:
    return final.with_name(f"{final.name}.scratch")


def _save_all(
    stacks: Mapping[str, Stack],
    finals: Mapping[str, Path],
    options: dict[str, Any],
) -> dict[str, Path]:
    resume, overwrite = options["resume"], options["overwrite"]
    if len(stacks) == 1:
        ((key, stack),) = stacks.items()
        return {key: save(stack, finals[key], **options)}
    grids = {key: regular_grid(native_order(stack.data)) for key, stack in stacks.items()}
    settings = {key: scratch_settings(stacks[key], grids[key], "scratch") for key in stacks}
    written: dict[str, Path] = {}
    for key, final in finals.items():
        if resume and os.path.lexists(final):  # kept if it is this run's (its record says)
            written[key] = save(stacks[key], final, **options)
    todo = [key for key in stacks if key not in written]
    tiff_factor = 2 if options["compression"] else 1  # a compressed TIFF has its own scratch
    check_run_space(
        [
            (finals[key], (1 + tiff_factor) * int(grids[key].nbytes))  # scratch + output
            for key in todo
        ]
    )
    with contextlib.ExitStack() as scratches:
        writes: list[tuple[da.Array, Any, PartialWrite]] = []
        arrays = {}
        for key in todo:
            stack, data = stacks[key], grids[key]
            job = scratches.enter_context(
                resumable_output(
                    _scratch(finals[key]),
                    settings[key],
                    folder=True,
                    resume=resume,
                    overwrite=overwrite,
                    nbytes=int(data.nbytes),
                    compressed=True,
                )
            )
            data = job.align(data)
            if job.fresh:
                array = create_scratch(job.partial, data, axes=stack.axes)
            else:
                array = open_aligned_array(os.fspath(job.partial), data)
            writes.append((data, array, job))
            arrays[key] = array
        store_resumable(writes)
        for key in todo:
            array, stack = arrays[key], stacks[key]
            staged = stack.replace(  # recorded as what it is a copy of, to resume it
                data=da.from_zarr(array, chunks=array.shards or array.chunks),
                attrs={
                    **stack.attrs,
                    ARRAY_KEY: stack.attrs.get(ARRAY_KEY) or array_identity(stack.data),
                },
            )
            written[key] = save(staged, finals[key], **options)
        for _, _, job in writes:
            job.discard()
        for key in finals:
            discard_partial(_scratch(finals[key]))  # scratch of an output finished before
        return {key: written[key] for key in stacks}
