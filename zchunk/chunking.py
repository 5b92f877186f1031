"""The chunk planner: which block of a stack one dask task holds.

Pure integer arithmetic, no dask: from the shape, the itemsize, the file layout (strip or tile
height, tile width) and a memory budget, choose a chunk shape that holds

* the whole reduced axis (z by default, t for time projections), so reductions and filters
  along it never need data from another chunk;
* 1 along the other non-spatial axes (t, c);
* a band of y rows aligned to the file's strips or tiles, so no stored segment is decoded by two
  tasks; and all of x, unless even one aligned band is over budget (then x is split, aligned to
  the tile width for tiled files).

The budget holds when ``chunk bytes x workers x 3`` (input block, working copy, output) plus one
decoded segment per worker stays under it.

The memory budget is a :class:`~zchunk.budget.Budget` (bytes and workers, owned by
:mod:`zchunk.budget`), parsed once where the user gives it (``zchunk.open(memory_limit=)``, the
CLI, the pipeline) and passed on. What the chunks are for is
a :class:`Purpose`: a projection, or a filter with its halo, which needs more memory per chunk
and chunks several halos wide. :func:`plan` combines the two; ``zchunk.open`` plans for a
projection and ``zchunk.filter`` re-plans for itself, so Python and the CLI plan the same chunks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zchunk.errors import OptionError, StackFormatError

if TYPE_CHECKING:
    import numpy as np

    from zchunk.budget import Budget

__all__ = [
    "FILTER_MEMORY_FACTOR",
    "PROJECTION",
    "ChunkPlan",
    "Purpose",
    "plan",
    "plan_chunks",
    "plan_stream_rows",
]

#: Blocks in flight per worker thread: the block read, a working copy, the result.
COPIES_PER_WORKER = 3

#: How much more memory a filtered chunk needs than a projected one, measured with
#: tests/test_memory.py: the halo'd copy of the chunk and its neighbours' edges, the float32
#: working copy, scipy's output and temporaries, and the encoded output.
FILTER_MEMORY_FACTOR = 5

#: The same for a filter that streams its chunk plane by plane from the file (separable filters,
#: minimum/maximum, small medians: see zchunk.ops._filter_stream): it never holds the chunk it
#: reads, only its output chunk (float32: twice a 16-bit input's bytes), the writer's encoded
#: copy and a ring of a few planes. Measured with tests/test_memory.py for an output up to twice
#: the input's bytes (uint16 in, float32 out); a wider output scales it (``Purpose.widening``).
STREAMED_FILTER_MEMORY_FACTOR = 2

#: A filter's chunks are at least this many halos tall (and wide, when x is split), so the
#: halo exchanged with neighbours stays small next to the chunk.
FILTER_TILE_HALOS = 4


@dataclass(frozen=True, slots=True)
class Purpose:
    """What chunks are planned for: a projection (no `halo`), or a filter reaching `halo` pixels.

    Examples
    --------
    >>> Purpose.filter(8).memory_factor, Purpose.filter(8).min_tile, PROJECTION.min_tile
    (5, 32, 1)
    >>> Purpose.filter(8, streamed=True).memory_factor
    2
    >>> Purpose.filter(8, streamed=True, out_bytes=4, in_bytes=1).memory_factor  # uint8 -> float32
    4
    """

    halo: int | None = None
    streamed: bool = False  # the filter streams the chunk's planes from the file
    widening: int = 1  # its output's bytes per pixel, in units of twice the input's (rounded up)
    z_halo: int | None = None  # planes a chunk split along z reads beyond it; None: z whole

    @classmethod
    def filter(
        cls,
        halo: int,
        *,
        streamed: bool = False,
        out_bytes: int = 2,
        in_bytes: int = 1,
        z_halo: int | None = None,
    ) -> Purpose:
        """Return the purpose of chunks that a filter reaching `halo` pixels computes.

        `out_bytes` and `in_bytes` are the output's and the input's bytes per pixel. A
        streamed filter given a `z_halo` (its reach along z: 0 for a filter per plane) may
        have z split into chunks (see :func:`plan`); its tasks read that many planes more.
        """
        widening = max(1, -(-int(out_bytes) // (2 * max(1, int(in_bytes)))))
        split = None if z_halo is None or not streamed else max(0, int(z_halo))
        return cls(max(0, int(halo)), streamed, widening if streamed else 1, split)

    @property
    def memory_factor(self) -> int:
        """Memory a chunk needs, in units of a projected chunk's."""
        if self.halo is None:
            return 1
        if self.streamed:
            return STREAMED_FILTER_MEMORY_FACTOR * self.widening
        return FILTER_MEMORY_FACTOR

    @property
    def min_tile(self) -> int:
        """Smallest band height (and tile width) worth planning."""
        return 1 if self.halo is None else max(1, FILTER_TILE_HALOS * self.halo)


#: Chunks for projections (the default of ``zchunk.open``).
PROJECTION = Purpose()


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """A chunk shape and what it costs.

    Attributes
    ----------
    chunks : tuple of int
        Chunk shape, one entry per axis.
    tasks : int
        Number of chunks covering the array.
    chunk_bytes : int
        Bytes of the largest chunk.
    memory_estimate : int
        Expected peak of working memory: chunk bytes x workers x 3 plus one decoded
        segment per worker.
    budget : int
        The memory budget the plan was made for.
    workers : int
        Worker threads assumed.
    fits : bool
        False when even the smallest aligned chunk is over budget (see `note`).
    note : str
        Why the plan looks the way it does, for ``zchunk info``.
    whole : str
        Axes held whole in every chunk.
    purpose : Purpose
        What the chunks were planned for.
    """

    chunks: tuple[int, ...]
    tasks: int
    chunk_bytes: int
    memory_estimate: int
    budget: int
    workers: int
    fits: bool
    note: str = ""
    whole: str = "z"
    purpose: Purpose = PROJECTION


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def plan_chunks(
    shape: tuple[int, ...],
    axes: str,
    itemsize: int,
    *,
    budget: int,
    workers: int,
    whole: str = "z",
    y_align: int = 1,
    x_align: int | None = None,
    segment_bytes: int = 0,
    min_tile: int = 1,
) -> ChunkPlan:
    """Plan chunks holding the whole `whole` axes and a budget-sized band of y (and x).

    Parameters
    ----------
    shape : tuple of int
        Array shape.
    axes : str
        Axis letters of `shape`, containing ``"y"`` and ``"x"`` as the last two.
    itemsize : int
        Bytes per pixel.
    budget : int
        Memory budget in bytes for all workers together.
    workers : int
        Number of worker threads computing chunks at once.
    whole : str
        Axes kept whole in every chunk (``"z"``; ``""`` for none). Letters not in `axes` are
        ignored.
    y_align : int
        Band heights are multiples of this (the strip or tile height), except the last band.
    x_align : int or None
        x may be split into multiples of this (1 for uncompressed data, the tile width for tiled
        files); None means x is never split (compressed strips decode whole rows).
    segment_bytes : int
        Bytes of one decoded stored segment (strip or tile), held once per worker while decoding.
    min_tile : int
        Smallest band height (and tile width, when x is split): filters ask for a few times
        their halo, so that the halo exchanged with neighbours stays small next to the chunk.

    Returns
    -------
    ChunkPlan

    Examples
    --------
    >>> p = plan_chunks((100, 2048, 2048), "zyx", 2, budget=2**30, workers=2)
    >>> p.chunks, p.tasks, p.fits
    ((100, 342, 2048), 6, True)
    """
    if axes[-2:] != "yx" or len(axes) != len(shape):
        msg = f"axes {axes!r} must match shape {shape} and end with 'yx'"
        raise OptionError(msg)
    if budget <= 0 or workers <= 0 or itemsize <= 0 or y_align <= 0:
        msg = "budget, workers, itemsize and y_align must be positive"
        raise OptionError(msg)
    height, width = shape[-2], shape[-1]
    y_align = min(y_align, max(height, 1))
    x_step = min(x_align, max(width, 1)) if x_align else width
    lead = [n if a in whole else 1 for a, n in zip(axes[:-2], shape[:-2], strict=True)]
    lead_bytes = math.prod(lead) * itemsize
    per_task = (budget - workers * segment_bytes) // (workers * COPIES_PER_WORKER)
    notes = []

    min_rows = min(height, _round_up(max(min_tile, 1), y_align)) if height else 1
    max_rows = per_task // max(lead_bytes * width, 1)
    if max_rows >= max(min(y_align, height), min_rows) or height == 0:
        band_cap = height if max_rows >= height else (max_rows // y_align) * y_align
        # enough bands for the budget; at least one per worker while bands stay >= min_rows
        for_workers = min(workers, math.ceil(height / y_align), max(1, height // min_rows))
        nbands = max(math.ceil(height / max(band_cap, 1)), for_workers)
        # a multiple of the workers while bands stay >= min_rows: 3 bands on 2 workers leave
        # one worker idle through the third (a 1.5x speed-up at best; 4 bands give 2x)
        even = _round_up(nbands, workers)
        if even * min_rows <= height:
            nbands = even
        balanced = _round_up(math.ceil(height / max(nbands, 1)), y_align)
        band = min(height, max(balanced, min_rows))  # min_rows <= band_cap here
        cols = width
        fits = True
    else:
        band = max(y_align, min_rows)
        max_cols = per_task // max(lead_bytes * band, 1)
        min_cols = _round_up(min(max(min_tile, 1), width), x_step)
        cols = min(width, max(x_step, min_cols, (max_cols // x_step) * x_step))
        fits = cols * lead_bytes * band <= per_task
        if cols < width:
            notes.append("x is split: one full-width band is over budget")
        if not fits:
            notes.append(
                f"the smallest aligned chunk ({band} rows x {cols} columns x whole "
                f"{whole or 'nothing'}) is over budget"
            )
    if segment_bytes and y_align > 1 and y_align >= height:
        notes.append("pages are single stored strips: every band is a whole page")
    chunks = (*lead, max(band, 1), max(cols, 1))
    tasks = math.prod(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True) if n)
    chunk_bytes = math.prod(chunks) * itemsize
    estimate = chunk_bytes * workers * COPIES_PER_WORKER + workers * segment_bytes
    fits = fits and estimate <= budget
    return ChunkPlan(
        chunks=chunks,
        tasks=tasks,
        chunk_bytes=chunk_bytes,
        memory_estimate=estimate,
        budget=budget,
        workers=workers,
        fits=fits,
        note="; ".join(notes),
        whole=whole,
    )


def plan(
    shape: tuple[int, ...],
    axes: str,
    dtype: np.dtype[Any],
    budget: Budget,
    *,
    purpose: Purpose = PROJECTION,
    whole: str = "z",
    y_align: int = 1,
    x_align: int | None = 1,
    segment_bytes: int = 0,
) -> ChunkPlan:
    """Plan the chunks of a stack for `purpose` within `budget` (see :func:`plan_chunks`).

    A filter's chunks get the budget divided by its memory factor and are at least a few
    halos tall.

    Examples
    --------
    >>> import numpy as np
    >>> from zchunk.budget import Budget
    >>> b = Budget(2**30, 2)
    >>> plan((100, 2048, 2048), "zyx", np.dtype("uint16"), b).chunks
    (100, 342, 2048)
    >>> plan((100, 2048, 2048), "zyx", np.dtype("uint16"), b, purpose=Purpose.filter(8)).chunks
    (100, 86, 2048)
    """
    if "y" not in axes or "x" not in axes or axes[-2:] != "yx":
        msg = f"axes {axes!r} must end with 'yx' (y and x are the last two axes)"
        raise StackFormatError(msg)
    planned = plan_chunks(
        shape,
        axes,
        dtype.itemsize,
        budget=max(1, budget.bytes // purpose.memory_factor),
        workers=budget.workers,
        whole=whole,
        y_align=y_align,
        x_align=x_align,
        segment_bytes=segment_bytes,
        min_tile=purpose.min_tile,
    )
    if purpose.z_halo is not None and "z" in whole and "z" in axes:
        split = _split_z(shape, axes, dtype.itemsize, planned, purpose, y_align, segment_bytes)
        planned = split or planned
    return dataclasses.replace(planned, purpose=purpose)


def _halo_cost(chunk: int, extent: int, halo: int) -> float:
    """Return the share of extra pixels a chunk of `chunk` along `extent` reads and filters."""
    return 2 * halo / chunk if chunk < extent else 0.0


def _split_z(
    shape: tuple[int, ...],
    axes: str,
    itemsize: int,
    whole_z: ChunkPlan,
    purpose: Purpose,
    y_align: int,
    segment_bytes: int,
) -> ChunkPlan | None:
    """Return chunks of a band of full rows and a run of z planes, if they waste less than `whole_z`.

    For a deep stack the budget leaves a chunk holding the whole z only a thin band of rows,
    maybe split along x: a streamed filter then reads and filters its halo rows (and columns)
    again for as many rows as it keeps. Split along z, a chunk of about as many planes as rows
    reads ``purpose.z_halo`` planes on each side instead (none per plane) and keeps whole rows
    (contiguous reads). Taken when it cuts that share of extra pixels by a quarter or more,
    or when a band through the whole z is over budget (compressed strips of many rows).

    Examples
    --------
    >>> import numpy as np
    >>> from zchunk.budget import Budget
    >>> b = Budget(2**30, 2)
    >>> deep = Purpose.filter(8, streamed=True, z_halo=8)
    >>> plan((954, 4096, 4096), "zyx", np.dtype("uint16"), b, purpose=deep).chunks
    (96, 103, 4096)
    >>> plan((100, 2048, 2048), "zyx", np.dtype("uint16"), b, purpose=deep).chunks  # z stays whole
    (100, 205, 2048)
    """
    zi = axes.index("z")
    nz, height, width = shape[zi], shape[-2], shape[-1]
    halo = purpose.halo or 0
    z_halo = purpose.z_halo or 0
    chunks = whole_z.chunks
    now = (
        _halo_cost(chunks[zi], nz, z_halo)
        + _halo_cost(chunks[-2], height, halo)
        + _halo_cost(chunks[-1], width, halo)
    )
    per_task = (whole_z.budget - whole_z.workers * segment_bytes) // (
        whole_z.workers * COPIES_PER_WORKER
    )
    pixels = per_task // max(width * itemsize, 1)  # planes x rows of full rows per task
    side = math.isqrt(max(pixels, 0))
    align = min(max(y_align, 1), max(height, 1))
    rows = min(height, max(side, purpose.min_tile, align))
    if rows < height:
        rows = max(align, rows // align * align)
    planes = min(nz, pixels // max(rows, 1))
    if planes < max(1, FILTER_TILE_HALOS * z_halo) or planes >= nz:
        return None
    planes = math.ceil(nz / math.ceil(nz / planes))  # even runs
    if rows < height:
        rows = _round_up(math.ceil(height / math.ceil(height / rows)), align)
    split = _halo_cost(planes, nz, z_halo) + _halo_cost(rows, height, halo)
    if whole_z.fits and split > 0.75 * now:
        return None
    lead = [planes if a == "z" else 1 for a in axes[:-2]]
    new = (*lead, rows, width)
    tasks = math.prod(math.ceil(n / c) for n, c in zip(shape, new, strict=True) if n)
    chunk_bytes = math.prod(new) * itemsize
    note = (
        f"z is split into runs of {planes} planes (each read with {z_halo} more on each side): "
        "a band of full rows through the whole z is over budget"
    )
    return dataclasses.replace(
        whole_z,
        chunks=new,
        tasks=tasks,
        chunk_bytes=chunk_bytes,
        memory_estimate=chunk_bytes * whole_z.workers * COPIES_PER_WORKER
        + whole_z.workers * segment_bytes,
        fits=True,
        note=note,
        whole=whole_z.whole.replace("z", ""),
    )


#: Plane-by-plane reductions: tasks per worker thread to aim for (balance, and a progress bar
#: that moves), and the smallest read of one plane's band worth a system call (shorter reads
#: of a warm file cost more in calls than in copying; measured on 2048-wide uint16 stacks).
STREAM_TASKS_PER_WORKER = 4
STREAM_MIN_READ = 2**20


def plan_stream_rows(
    height: int,
    *,
    plane_row_bytes: int,
    state_row_bytes: int,
    budget: int,
    workers: int,
    lead_tasks: int = 1,
    y_align: int = 1,
) -> int:
    """Band height for reductions computed plane by plane (a running max, min or sum).

    Such a task holds one plane of its band (`plane_row_bytes` per row) and its running
    results (`state_row_bytes` per row), never the whole z: its band can be far taller than
    a chunk. It is as tall as the budget allows, but short enough to give every worker
    `STREAM_TASKS_PER_WORKER` tasks (counting `lead_tasks`, the t and c indices), and never so
    short that one plane's read is below `STREAM_MIN_READ`. Heights are multiples of
    `y_align` (the strip or tile height) except for the last band, and never below it.

    Examples
    --------
    >>> plan_stream_rows(2048, plane_row_bytes=4096, state_row_bytes=4096, budget=2**30,
    ...                  workers=2)
    256
    >>> plan_stream_rows(2048, plane_row_bytes=4096, state_row_bytes=4096, budget=2**30,
    ...                  workers=2, lead_tasks=10)
    2048
    """
    if height <= 0:
        return 1
    if workers <= 0 or budget <= 0 or y_align <= 0:
        msg = "budget, workers and y_align must be positive"
        raise OptionError(msg)
    align = min(y_align, height)
    row_cost = max(plane_row_bytes + state_row_bytes, 1)
    fit = budget // (workers * COPIES_PER_WORKER) // row_cost
    bands = math.ceil(STREAM_TASKS_PER_WORKER * workers / max(lead_tasks, 1))
    rows = max(math.ceil(height / bands), math.ceil(STREAM_MIN_READ / max(plane_row_bytes, 1)))
    rows = min(rows, max(fit, 1), height)
    if rows < height:
        rows = max(align, (rows // align) * align)
    return min(rows, height)
