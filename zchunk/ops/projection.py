"""Projections along z (or t): max, min, sum, mean, std, median, percentile.

Every chunk holds the whole reduced axis, so each projection is one ``map_blocks`` over the
chunks with no rechunk and no exchange between tasks. Several projections of one stack share
the read tasks: computed together (``project_many`` then one store), each chunk is read once.

Projections that can run plane by plane (max and min; sum and mean of integers; ImageJ's
float32 sum and average) of a stack freshly opened from TIFF skip the chunks: each task streams
a tall band of every plane, in order, through one reused buffer into running results (see
:func:`zchunk.io._tiff.stream_planes`). Its reads are long and in file order, so a max runs at
the disk's rate, and it holds one plane of its band instead of the whole z. The values are the
same bit for bit: the running result is updated in z order, as NumPy and ImageJ do.

Semantics
---------
``like="numpy"`` (default) gives NumPy's values and dtypes: max/min keep the dtype, sum follows
``np.sum``, mean/median/percentile/std follow ``np.mean``/``np.median``/``np.percentile``/
``np.std`` (ddof=0). NaN propagates as in NumPy (a column with a NaN projects to NaN, except
max/min which also give NaN).

``like="imagej"`` reproduces ImageJ 1.54's Image > Stacks > Z Project, bit for bit, for 8-bit,
16-bit and 32-bit (float) stacks: Max and Min keep the type (32-bit: NaN skipped, a column of
NaN only gives -/+Float.MAX_VALUE); Sum is a float32 running sum; Average of 8/16-bit is the
float32 running sum divided by n in float32, rounded half up back to 8/16-bit, and of 32-bit
the double mean of the non-NaN values cast to float32 (ImageJ 1.53t also dropped the last
slice there, a bug fixed in 1.54); Standard Deviation is float32 from double sums with ddof=1
(``sqrt((n*sum2 - sum**2) / n / (n-1))``, 0 for one slice); Median is float32, the mean of the
two middle values for an even count, rounded half up to 8-bit for 8-bit input.

``dtype=`` casts the result: rounded to nearest and clipped to the target range, never wrapped
(NaN becomes 0 in an integer result).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np

from zchunk._graph import split_outputs, task_layer
from zchunk.chunking import PROJECTION, plan_stream_rows
from zchunk.errors import ChunkingError, OptionError, StackFormatError, option
from zchunk.ops._methods import METHODS, Method, Running, cast_rounded

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import DTypeLike

    from zchunk._types import Like, ProjectionMethod
    from zchunk.stack import Source, Stack

__all__ = ["METHODS", "cast_rounded", "exact_in_float32", "project", "project_many"]

_IMAGEJ_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


# reading the file directly ---------------------------------------------------------------


def _project_planes(
    source: Source, region: tuple[slice, ...], running: Sequence[Running], shape: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Stream `region`'s planes through the running projections; return their results."""
    accs: list[np.ndarray] = []
    n = 0
    for plane in source.planes(region):
        if n == 0:
            accs = [r.start(plane) for r in running]
        else:
            for r, acc in zip(running, accs, strict=True):
                r.add(acc, plane)
        n += 1
    return tuple(r.finish(acc, n).reshape(shape) for r, acc in zip(running, accs, strict=True))


def _project_bands(
    source: Source, region: tuple[slice, ...], reducers: Sequence[Any], rows: int, shape: Any
) -> tuple[np.ndarray, ...]:
    """Read `region` band by band (all of z, a few rows) and reduce each band as it comes."""
    parts: list[list[np.ndarray]] = [[] for _ in reducers]
    for band in source.bands(region, rows):
        for reduce, part in zip(reducers, parts, strict=True):
            part.append(reduce(band, axis=0))
    return tuple(np.concatenate(part, axis=0).reshape(shape) for part in parts)


#: Bytes of one band a banded projection reads and reduces at a time (all of z, a few rows;
#: never more than the planner's chunk): long enough reads per plane, little memory (the
#: measurements behind it are in benchmarks/RESULTS.md, "Tuning constants").
BAND_BYTES = 64 * 2**20


def _stream_chunks(
    stack: Stack, axis: int, running: dict[str, Running], dtypes: dict[str, np.dtype[Any]]
) -> tuple[tuple[int, ...], ...]:
    """Output chunks of plane-by-plane projections: tall bands (see `plan_stream_rows`)."""
    plan, source = stack.plan, stack.source
    assert plan is not None  # checked by the caller
    assert source is not None
    data = stack.data
    lead = [n for i, n in enumerate(data.shape[:-2]) if i != axis]
    cols = max(data.chunks[-1])
    state = sum(r.acc_dtype.itemsize + dtypes[m].itemsize for m, r in running.items())
    rows = plan_stream_rows(
        data.shape[-2],
        plane_row_bytes=cols * data.dtype.itemsize * source.plane_copies,
        state_row_bytes=cols * state,
        budget=plan.budget,
        workers=plan.workers,
        lead_tasks=int(np.prod(lead)) * len(data.chunks[-1]),
        y_align=source.row_align,
    )
    height = data.shape[-2]
    return (
        *((1,) * n for n in lead),
        (rows,) * (height // rows) + ((height % rows,) if height % rows else ()),
        data.chunks[-1],
    )


def _fused(
    stack: Stack,
    axis: int,
    methods: dict[str, Any],
    dtypes: dict[str, np.dtype[Any]],
    streamed: bool,
) -> dict[str, da.Array]:
    """Projections of a freshly opened TIFF stack, each task reading its own region.

    `streamed`: `methods` are `Running` projections, fed plane by plane in tall bands.
    Otherwise they are block reducers, fed each chunk of the plan in bands of `BAND_BYTES`.
    The tasks return one result per method; each method's array picks its own from them.
    """
    from dask.base import tokenize

    source = stack.source
    data = stack.data
    funcs = list(methods.values())  # a list: dask would run a tuple starting with a callable
    func: Callable[..., tuple[np.ndarray, ...]]
    extra: tuple[Any, ...]
    if streamed:
        out_chunks = _stream_chunks(stack, axis, methods, dtypes)
        func, extra = _project_planes, (funcs,)
    else:
        out_chunks = data.chunks[:axis] + data.chunks[axis + 1 :]
        row_bytes = data.shape[axis] * max(data.chunks[-1]) * data.dtype.itemsize
        func, extra = _project_bands, (funcs, max(1, BAND_BYTES // row_bytes))

    def task(slices: tuple[slice, ...]) -> tuple[Any, ...]:
        region = (*slices[:axis], slice(0, data.shape[axis]), *slices[axis:])
        return (func, source, region, *extra, tuple(s.stop - s.start for s in slices))

    token = tokenize(data.name, axis, funcs, streamed)
    fused = f"zchunk-{'stream' if streamed else 'bands'}-{token}"
    layer = task_layer(fused, out_chunks, task)
    outputs = [(f"zchunk-{m}-{token}", dtypes[m]) for m in methods]
    return dict(zip(methods, split_outputs(fused, layer, out_chunks, outputs), strict=True))


# public API ---------------------------------------------------------------------------------


def exact_in_float32(method: str, dtype: DTypeLike, n: int) -> bool:
    """Tell whether float32 holds every value `method` gives for `n` values of `dtype` exactly.

    True for the median of integers of up to 16 bits (a value or the mean of two: 17
    significant bits at most), for sums of such integers below 2**24, and for max/min of
    them; False for means, standard deviations and percentiles (any fraction), and for 32-
    and 64-bit inputs.

    Examples
    --------
    >>> exact_in_float32("median", "uint16", 31), exact_in_float32("mean", "uint8", 4)
    (True, False)
    >>> exact_in_float32("sum", "uint16", 256), exact_in_float32("sum", "uint16", 257)
    (True, False)
    """
    dt = np.dtype(dtype)
    if dt.kind not in "ui" or dt.itemsize > 2:
        return dt.kind == "f" and dt.itemsize <= 4 and method in ("max", "min", "median")
    if method in ("max", "min", "median"):
        return True
    if method == "sum":
        info = np.iinfo(dt)
        return max(abs(int(info.min)), int(info.max)) * n < 2**24
    return False


def _check(stack: Stack, method: str, axis: str, q: float | None, like: str) -> Method:
    spec = METHODS.get(method)
    if spec is None:
        msg = f"{option('method', method)} is not one of {', '.join(METHODS)}"
        raise OptionError(msg)
    if like not in ("numpy", "imagej"):
        msg = f"{option('like', like)} must be 'numpy' or 'imagej'"
        raise OptionError(msg)
    if axis not in ("z", "t"):
        msg = f"{option('axis', axis)} must be 'z' or 't'"
        raise OptionError(msg)
    if spec.parameter == "q" and (q is None or not 0 <= float(q) <= 100):
        msg = f"{method} needs q between 0 and 100, got {option('q', q)}"
        raise OptionError(msg)
    if like == "imagej" and spec.imagej is None:
        msg = f"method {method!r} has no ImageJ equivalent; use {option('like', 'numpy')}"
        raise OptionError(msg)
    if like == "imagej" and stack.dtype not in _IMAGEJ_TYPES:
        msg = (
            f"{option('like', 'imagej')} works on ImageJ's types (uint8, uint16, float32), "
            f"not {stack.dtype}; use {option('like', 'numpy')} or convert the stack"
        )
        raise OptionError(msg)
    if axis not in stack.axes:
        other = "t" if axis == "z" else "z"
        where = stack.attrs.get("source") or stack.name or "the stack"
        hint = f"project along {option('axis', other)}" if other in stack.axes else ""
        fix = option("axes", "...")
        msg = (
            f"axis {axis!r} is not in {where}, whose axes are {stack.axes!r}: "
            f"{hint + ', or ' if hint else ''}give the input's axes ({fix}) if they were "
            "read wrong"
        )
        raise StackFormatError(msg)
    return spec


def _whole_along(stack: Stack, axis: str) -> Stack:
    """Return `stack` with `axis` in one chunk: reopen the source, or refuse to reshuffle."""
    i = stack.axis(axis)
    if stack.data.numblocks[i] == 1:
        return stack
    replanned = stack.replanned(whole=axis, purpose=PROJECTION)
    if replanned is not None:
        return replanned
    msg = (
        f"axis {axis!r} is split into {stack.data.numblocks[i]} chunks; open the stack with "
        f"zchunk.open(..., whole={axis!r}) so every chunk holds the whole {axis} axis"
    )
    raise ChunkingError(msg)


def _output_dtype(reducer: Any, dtype: np.dtype[Any], ndim: int, axis: int) -> np.dtype[Any]:
    probe = np.zeros((2,) * ndim, dtype=dtype)
    result: np.dtype[Any] = np.asarray(reducer(probe, axis=axis)).dtype
    return result


def project(
    stack: Stack,
    /,
    method: ProjectionMethod = "max",
    *,
    axis: str = "z",
    q: float | None = None,
    like: Like = "numpy",
    dtype: DTypeLike | None = None,
) -> Stack:
    """Project a stack along z (or t).

    Parameters
    ----------
    stack : Stack
        Input with a ``z`` (or ``t``) axis held whole in every chunk (as ``zchunk.open`` plans).
    method : {"max", "min", "sum", "mean", "std", "median", "percentile"}
        Reduction applied to every pixel's column.
    axis : {"z", "t"}
        Axis to reduce; a (t, z, y, x) stack gives (t, y, x) along z and (z, y, x) along t.
    q : float, optional
        Percentile in [0, 100], for ``method="percentile"`` only (linear interpolation).
    like : {"numpy", "imagej"}
        Whose semantics (values and output dtype) to follow; see the module docstring.
    dtype : dtype, optional
        Cast the result, rounded and clipped.

    Returns
    -------
    Stack
        Lazy result without the reduced axis; scale, units and attributes kept.

    Raises
    ------
    OptionError
        (a ValueError) For an unknown method, a missing or out-of-range q, or ImageJ semantics on a type
        ImageJ does not have.
    ChunkingError
        If `axis` is split across chunks and the stack cannot be reopened whole along it.

    Examples
    --------
    >>> s = Stack(da.from_array(np.arange(24, dtype="uint8").reshape(2, 3, 4), chunks=(2, 2, 4)))
    >>> project(s, "max").data.compute()[0]
    array([12, 13, 14, 15], dtype=uint8)
    >>> project(s, "median").data.dtype
    dtype('float64')
    """
    spec = METHODS.get(method)
    if q is not None and spec is not None and spec.parameter != "q":
        msg = f"q={q!r} is only for method='percentile', not {method!r}"
        raise OptionError(msg)
    return project_many(stack, [method], axis=axis, q=q, like=like, dtype=dtype)[method]


def project_many(
    stack: Stack,
    /,
    methods: Sequence[str],
    *,
    axis: str = "z",
    q: float | None = None,
    like: str = "numpy",
    dtype: DTypeLike | None = None,
) -> dict[str, Stack]:
    """Several projections that share one read of the data.

    Same parameters as :func:`project`, with a list of methods (``q`` applies to
    ``"percentile"``). The results share the read tasks: computed or saved together (as
    ``zchunk.save_many`` and the CLI do), every chunk is read once for all methods.

    Returns
    -------
    dict of str to Stack
        One lazy projection per method, in the order given.

    Examples
    --------
    >>> s = Stack(da.from_array(np.arange(24, dtype="uint8").reshape(2, 3, 4)))
    >>> sorted(project_many(s, ["max", "min"]))
    ['max', 'min']
    """
    if not methods:
        msg = "methods is empty: give at least one projection"
        raise OptionError(msg)
    if len(set(methods)) != len(methods):
        msg = f"methods {list(methods)} repeat a method"
        raise OptionError(msg)
    specs = {m: _check(stack, m, axis, q, like) for m in methods}
    stack = _whole_along(stack, axis)
    i = stack.axis(axis)
    out_dtype = None if dtype is None else np.dtype(dtype)
    reducers = {m: spec.reducer(like, q, out_dtype) for m, spec in specs.items()}
    dtypes = {m: _output_dtype(f, stack.dtype, stack.data.ndim, i) for m, f in reducers.items()}
    running = {m: spec.plane_by_plane(like, stack.dtype, out_dtype) for m, spec in specs.items()}
    # a stack straight from a reader that streams (TIFF), not derived from another
    fused: dict[str, da.Array] = {}
    if stack.source is not None and stack.source.streams and stack.plan is not None:
        if all(r is not None for r in running.values()):
            fused = _fused(stack, i, running, dtypes, streamed=True)
        else:
            fused = _fused(stack, i, reducers, dtypes, streamed=False)
    results: dict[str, Stack] = {}
    for method in methods:
        data = fused.get(method)
        if data is None:
            data = da.map_blocks(
                reducers[method],
                stack.data,
                axis=i,
                drop_axis=i,
                dtype=dtypes[method],
                meta=np.empty((0,) * (stack.data.ndim - 1), dtype=dtypes[method]),
                token=f"zchunk-{method}",
            )
        projected = stack.drop_axis(axis, data)
        attrs = dict(projected.attrs)
        attrs["projection"] = {"method": method, "axis": axis, "like": like, "q": q}
        results[method] = projected.replace(name=f"{method}-{stack.name}", attrs=attrs)
    return results
