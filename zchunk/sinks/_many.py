"""Write several results of one input in one pass over it.

Results made from the same input share its read tasks (``project_many``). Written one after
the other, every writer would read the input again; here all results are computed together,
in one ``da.store``, into scratch zarr arrays next to the outputs (small: a projection is the
input divided by z), and then each is written to its own output from its scratch array.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import dask.array as da

from zchunk.sinks._atomic import GuardedTarget, abandon, prepare_output, sibling_name
from zchunk.sinks._zarr import check_writable, create_aligned_array, native_order, regular_grid

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from zchunk._types import PathLike
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
        Replace existing outputs (never an input).
    compression : str, optional
        TIFF compression.

    Returns
    -------
    dict of str to Path
        The written outputs.

    Raises
    ------
    OutputExistsError
        Before anything is computed, if an output exists (without `overwrite`) or is an input.
    """
    if set(stacks) != set(paths):
        msg = f"stacks and paths name different results: {sorted(stacks)} vs {sorted(paths)}"
        raise ValueError(msg)
    finals = {}
    for key, stack in stacks.items():
        check_writable(stack)
        finals[key] = prepare_output(paths[key], stack.attrs, overwrite=overwrite)
    if len(stacks) == 1:
        ((key, stack),) = stacks.items()
        return {key: save(stack, finals[key], overwrite=overwrite, compression=compression)}
    anchor = next(iter(finals.values()))
    scratch = sibling_name(anchor, "scratch")
    try:
        os.makedirs(scratch)
        sources, targets, arrays = [], [], {}
        for i, (key, stack) in enumerate(stacks.items()):
            data = regular_grid(native_order(stack.data))
            array = create_aligned_array(
                os.fspath(scratch / str(i)), data, axes=stack.axes, level=1, dimension_names=False
            )
            sources.append(data)
            targets.append(GuardedTarget(array, scratch))
            arrays[key] = array
        da.store(sources, targets, lock=False, compute=True)  # type: ignore[arg-type]
        written = {}
        for key, stack in stacks.items():
            array = arrays[key]
            staged = stack.replace(data=da.from_zarr(array, chunks=array.shards or array.chunks))
            written[key] = save(staged, finals[key], overwrite=overwrite, compression=compression)
        return written
    finally:
        abandon(scratch)
