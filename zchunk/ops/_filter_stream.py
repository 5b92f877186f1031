"""Separable filters streamed plane by plane, and the Source of a filtered stack.

:func:`separable` turns a filter's spec into scipy's sequence of 1-D passes
(:class:`~zchunk.ops._separable.Separable`); :func:`stream_planes` runs it over the planes of a
region (z runs through a ring, see :class:`~zchunk.ops._separable.PlaneFilter`) into an output
block, or :meth:`FilteredSource.planes` hands the filtered planes on one by one.

:class:`FilteredSource` is the :class:`zchunk._source.Source` of a stack filtered straight from
a file that streams: a projection of it (``zchunk project --gaussian``) streams filtered planes
into its running results, so no task ever holds a filtered chunk.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from zchunk.ops._filter_kernels import store_rounded
from zchunk.ops._separable import Pass, PlaneFilter, Separable, gaussian_weights
from zchunk.ops.projection import cast_rounded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from zchunk._source import Source
    from zchunk.chunking import Purpose
    from zchunk.ops.filters import _Spec
    from zchunk.stack import Stack

__all__ = [
    "FilteredSource",
    "filtered_planes",
    "halo_region",
    "separable",
    "stream_block",
    "stream_planes",
    "streamer",
]

_EDGE_WEIGHTS = {"sobel": (1.0, 2.0, 1.0), "prewitt": (1.0, 1.0, 1.0)}


def separable(spec: _Spec) -> Separable | None:
    """Return the filter as scipy's 1-D passes, or None when it has none (rank filters).

    The filtered axes of a block are its last two (y, x), preceded by z in 3-D.
    """
    if spec.work != np.float32 or spec.name not in _SEPARABLE:
        return None
    letters = "zyx"[3 - len(spec.axes) :]
    axes = dict(zip(spec.axes, letters, strict=True))

    def gauss(orders: dict[int, int]) -> tuple[Pass, ...]:
        return tuple(
            Pass(axes[i], gaussian_weights(spec.sigma[i], orders.get(i, 0), spec.truncate))
            for i in spec.axes
            if spec.sigma[i] > 1e-15  # scipy skips these axes
        )

    terms: tuple[tuple[Pass, ...], ...]
    combine: Literal["sum", "magnitude"] = "sum"
    if spec.name == "gaussian":
        terms = (gauss({}),)
    elif spec.name == "gaussian_gradient_magnitude":
        terms, combine = tuple(gauss({a: 1}) for a in spec.axes), "magnitude"
    elif spec.name == "laplace":
        terms = tuple((Pass(axes[a], (1.0, -2.0, 1.0)),) for a in spec.axes)
    elif spec.name == "uniform":
        # sums of the window, divided once (see Separable); each pass pads with cval times
        # the window of the passes before it, which is what a mean there would sum to
        sizes = [spec.size[i] for i in spec.axes if spec.size[i] > 1]
        passes = tuple(
            Pass(axes[i], (1.0,) * spec.size[i], float(math.prod(sizes[:n])))
            for n, i in enumerate(i for i in spec.axes if spec.size[i] > 1)
        )
        divisor = float(math.prod(sizes))
        return Separable((passes,), "sum", spec.mode, spec.cval, divisor)
    else:  # sobel, prewitt: the derivative first, then smoothing along the others in order
        smooth = _EDGE_WEIGHTS[spec.name]
        terms = tuple(
            (
                Pass(axes[a], (-1.0, 0.0, 1.0)),
                *(Pass(axes[b], smooth) for b in spec.axes if b != a),
            )
            for a in spec.axes
        )
        combine = "magnitude"
    return Separable(terms, combine, spec.mode, spec.cval)


_SEPARABLE = frozenset(
    {"gaussian", "gaussian_gradient_magnitude", "laplace", "uniform", "sobel", "prewitt"}
)


def store_plane(
    plane: np.ndarray, trim: tuple[slice, slice], out: np.ndarray, dtype: np.dtype[Any]
) -> None:
    """Write the `trim` part of a filtered float32 plane into `out`, cast to `dtype`."""
    if plane.dtype == dtype:
        out[...] = plane[trim]
    elif dtype.kind in "iu" and dtype.itemsize <= plane.dtype.itemsize // 2:
        # float32 to 8/16-bit, float64 to 8/16/32-bit: rounded in one compiled pass
        info = np.iinfo(dtype)
        rows, cols = trim
        store_rounded(plane, rows.start, cols.start, float(info.min), float(info.max), out)
    else:
        out[...] = cast_rounded(plane[trim], dtype)


class Engine(Protocol):
    """Filters the planes of one run along z: a PlaneFilter, MinMaxFilter or MedianFilter."""

    def run(self, planes: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(k, filtered plane k)`` in order."""
        ...


#: (planes along z, plane shape, input dtype, float64 magnitudes) -> an engine for one run
type EngineFactory = Callable[[int, tuple[int, int], np.dtype[Any], bool], Engine]


_INTEGERS = ("u1", "i1", "u2", "i2", "u4", "i4")
_STREAMED_RANK = frozenset(np.dtype(t) for t in (*_INTEGERS, "f4", "f8"))
_STREAMED_MEDIAN = frozenset(np.dtype(t) for t in _INTEGERS)


def _exact_cval(spec: _Spec) -> bool:
    """Whether the work dtype holds the border value exactly (always, but for "constant")."""
    if spec.mode != "constant":
        return True
    if spec.work.kind in "iu":
        info = np.iinfo(spec.work)
        if not (info.min <= spec.cval <= info.max):
            return False
    return float(spec.work.type(spec.cval)) == spec.cval


def streamer(spec: _Spec) -> EngineFactory | None:
    """Return what filters a run of planes for this spec, or None if it does not stream.

    Separable linear filters (float32 work), minimum/maximum of 8- to 32-bit integers and
    floats, and medians of odd windows of at most 27 pixels of 8- to 32-bit integers, with a
    cval the dtype holds exactly (scipy compares in float64: such a cval compares the same
    in the input dtype).
    """
    sep = separable(spec)
    if sep is not None:
        return functools.partial(_plane_filter, sep)
    size = spec.size
    sizes = (size[-3] if len(spec.axes) == 3 else 1, size[-2], size[-1])
    if not _exact_cval(spec):
        return None
    if spec.name in ("minimum", "maximum") and spec.work in _STREAMED_RANK:
        return functools.partial(_min_max, sizes, spec.mode, spec.cval, spec.name == "maximum")
    if spec.name == "median" and spec.work in _STREAMED_MEDIAN:
        from zchunk.ops._median_kernels import MAX_WINDOW

        if all(s % 2 for s in sizes) and math.prod(sizes) <= MAX_WINDOW:
            return functools.partial(_median, sizes, spec.mode, spec.cval)
    return None


def _plane_filter(
    sep: Separable, nz: int, shape: tuple[int, int], dtype: np.dtype[Any], float64: bool
) -> Engine:
    return PlaneFilter(sep, nz, shape, dtype, float64=float64)


def _min_max(
    sizes: tuple[int, int, int],
    mode: str,
    cval: float,
    is_max: bool,
    nz: int,
    shape: tuple[int, int],
    dtype: np.dtype[Any],
    float64: bool,
) -> Engine:
    from zchunk.ops._rank_kernels import MinMaxFilter  # numba: loaded by the filters using it

    return MinMaxFilter(sizes, mode, cval, is_max, nz, shape, dtype)


def _median(
    sizes: tuple[int, int, int],
    mode: str,
    cval: float,
    nz: int,
    shape: tuple[int, int],
    dtype: np.dtype[Any],
    float64: bool,
) -> Engine:
    from zchunk.ops._median_kernels import MedianFilter

    return MedianFilter(sizes, mode, cval, nz, shape, dtype)


def filtered_planes(
    planes: Iterable[np.ndarray],
    make: EngineFactory,
    shape: tuple[int, ...],
    in_dtype: np.dtype[Any],
    zs: slice | None,
    *,
    float64: bool = False,
) -> Iterator[np.ndarray]:
    """Yield the filtered planes of a region, in order, keeping only planes `zs` along z.

    `planes` are the region's (rows, columns) planes, leading axes in C order, `shape` the
    region's shape. A 3-D filter (`zs` not None) runs along z through a ring, a run of
    ``shape[-3]`` planes per index of the other leading axes (t, c); planes outside `zs` (a
    halo along z) are filtered but not yielded. Per plane (`zs` None) every plane is yielded.
    The yielded plane has the region's rows and columns and is reused.
    """
    nz = shape[-3] if zs is not None else 1
    keep = zs if zs is not None else slice(0, 1)
    stream = iter(planes)
    # one engine for every run: its rings and work planes are allocated (and first touched)
    # once per region, not once per plane of a per-plane filter
    engine = make(nz, (shape[-2], shape[-1]), in_dtype, float64)
    for _ in range(math.prod(shape[:-2]) // nz):
        for k, plane in engine.run(itertools.islice(stream, nz)):
            if keep.start <= k < keep.stop:
                yield plane


def stream_planes(
    planes: Iterable[np.ndarray],
    make: EngineFactory,
    shape: tuple[int, ...],
    in_dtype: np.dtype[Any],
    trim: tuple[slice, ...],
    three_d: bool,
    out: np.ndarray,
) -> np.ndarray:
    """Filter the planes of a region of `shape` into `out`, its part `trim` (see above)."""
    flat = out.reshape(-1, *out.shape[-2:])
    dtype = np.dtype(out.dtype)
    zs = trim[-3] if three_d else None
    stream = filtered_planes(planes, make, shape, in_dtype, zs, float64=dtype.kind in "iu")
    for j, plane in enumerate(stream):
        store_plane(plane, (trim[-2], trim[-1]), flat[j], dtype)
    return out


def stream_block(block: np.ndarray, spec: _Spec, make: EngineFactory) -> np.ndarray:
    """Filter an in-memory block with the plane stream (z whole in the block)."""
    shape = block.shape
    planes = np.ascontiguousarray(block).reshape(-1, shape[-2], shape[-1])
    out = np.empty(shape, dtype=spec.out or spec.work)
    trim = tuple(slice(0, n) for n in shape)
    return stream_planes(iter(planes), make, shape, block.dtype, trim, len(spec.axes) == 3, out)


def halo_region(
    slices: tuple[slice, ...], shape: tuple[int, ...], radius: dict[int, int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Return `slices` grown by `radius` per axis within the image, and the trim back.

    Examples
    --------
    >>> halo_region((slice(0, 4), slice(10, 20)), (4, 30), {1: 8})
    ((slice(0, 4, None), slice(2, 28, None)), (slice(0, 4, None), slice(8, 18, None)))
    """
    region = tuple(
        slice(max(0, s.start - radius.get(i, 0)), min(shape[i], s.stop + radius.get(i, 0)))
        for i, s in enumerate(slices)
    )
    trim = tuple(
        slice(s.start - r.start, s.stop - r.start) for s, r in zip(slices, region, strict=True)
    )
    return region, trim


@dataclass(frozen=True, slots=True)
class FilteredSource:
    """The Source of a stack filtered straight from a file: reads and streams filtered pixels.

    `source` is the file's Source, `shape` and `radius` the input's shape and the halo per
    axis, `call` the ``filter`` arguments (to filter a reopened input again).
    """

    name: str
    source: Source
    spec: _Spec
    shape: tuple[int, ...]
    radius: tuple[tuple[int, int], ...]
    in_dtype: np.dtype[Any]
    call: tuple[tuple[str, Any], ...]
    purpose: Purpose

    @property
    def reads_regions(self) -> bool:
        """Always: each task reads its region (and halo) from the file and filters it."""
        return True

    @property
    def streams(self) -> bool:
        """Whether :meth:`planes` streams (a separable filter of a file that streams)."""
        return self.source.streams and streamer(self.spec) is not None

    @property
    def row_align(self) -> int:
        """The file's: bands of the filtered stack are bands of the file."""
        return self.source.row_align

    @property
    def plane_copies(self) -> int:
        """Memory of a streamed plane, in planes of the result: the ring and the work planes."""
        sep = separable(self.spec)
        if sep is not None:  # ring, work planes (float32), magnitudes' float64 sums
            return 2 * sep.reach("z") + 4 + 12 * (2 if sep.combine == "magnitude" else 1)
        return 2 * max(self.spec.size) + 4  # minimum/maximum: ring, van Herk lines

    def _grown(self, region: tuple[slice, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        return halo_region(region, self.shape, dict(self.radius))

    def read(self, region: tuple[slice, ...], /) -> np.ndarray:
        """Return the filtered pixels of `region`."""
        from zchunk.ops.filters import _filter_region

        grown, trim = self._grown(region)
        return _filter_region(self.source, grown, trim, self.spec, self.in_dtype)

    def planes(self, region: tuple[slice, ...], /) -> Iterator[np.ndarray]:
        """Yield the filtered (rows, columns) planes of `region` in order, one at a time."""
        make = streamer(self.spec)
        if make is None:
            block = self.read(region)
            yield from block.reshape(-1, *block.shape[-2:])
            return
        grown, trim = self._grown(region)
        shape = tuple(s.stop - s.start for s in grown)
        dtype = np.dtype(self.spec.out or self.spec.work)
        out = np.empty((trim[-2].stop - trim[-2].start, trim[-1].stop - trim[-1].start), dtype)
        zs = trim[-3] if len(self.spec.axes) == 3 else None
        stream = self.source.planes(grown)
        float64 = dtype.kind in "iu"
        for plane in filtered_planes(stream, make, shape, self.in_dtype, zs, float64=float64):
            store_plane(plane, (trim[-2], trim[-1]), out, dtype)
            yield out

    def bands(self, region: tuple[slice, ...], rows: int, /) -> Iterator[np.ndarray]:
        """Yield `region` as (planes, rows, columns) bands of `rows` rows (filtered as one block)."""
        block = self.read(region)
        planes = block.reshape(-1, *block.shape[-2:])  # as a file's bands: (planes, rows, cols)
        for a in range(0, block.shape[-2], max(rows, 1)):
            yield planes[:, a : a + max(rows, 1), :]

    def reopen(self, *, whole: str, purpose: Purpose) -> Stack:
        """Open the input again with `whole` held whole, and filter it the same way.

        The input's chunks are planned for this filter (`purpose`, a projection's say, does
        not apply to the input of a filter), so the filter keeps them.
        """
        from zchunk.ops.filters import filter as filter_

        # a 3-D filter needs z whole too (it would reopen the input with z whole only)
        if len(self.spec.axes) == 3 and "z" not in whole:
            whole += "z"
        fresh = self.source.reopen(whole=whole, purpose=self.purpose)
        return filter_(fresh, **dict(self.call))
