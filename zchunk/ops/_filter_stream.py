"""Separable filters streamed plane by plane, and the Source of a filtered stack.

:func:`separable` turns a filter's spec into scipy's sequence of 1-D passes
(:class:`~zchunk.ops._separable.Separable`); :func:`stream_planes` runs it over the planes of a
region (z runs through a ring, see :class:`~zchunk.ops._separable.PlaneFilter`) into an output
block, or :meth:`FilteredSource.planes` hands the filtered planes on one by one.

:class:`FilteredSource` is the :class:`zchunk.stack.Source` of a stack filtered straight from
a file that streams: a projection of it (``zchunk project --gaussian``) streams filtered planes
into its running results, so no task ever holds a filtered chunk.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from zchunk.ops._engine import Engine
from zchunk.ops._filter_spec import REGISTRY
from zchunk.ops._separable import Pass, PlaneFilter, Separable, gaussian_weights
from zchunk.ops.projection import cast_rounded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from zchunk.ops._filter_spec import Spec
    from zchunk.stack import Source

__all__ = [
    "filter_block",
    "filter_region",
    "filtered_planes",
    "halo_region",
    "separable",
    "stream_block",
    "stream_planes",
    "streamer",
]

_EDGE_WEIGHTS = {"sobel": (1.0, 2.0, 1.0), "prewitt": (1.0, 1.0, 1.0)}


def separable(spec: Spec) -> Separable | None:
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


#: (planes along z, plane shape, input dtype, float64 magnitudes) -> an engine for one run
type EngineFactory = Callable[[int, tuple[int, int], np.dtype[Any], bool], Engine]


_INTEGERS = ("u1", "i1", "u2", "i2", "u4", "i4")
_STREAMED_RANK = frozenset(np.dtype(t) for t in (*_INTEGERS, "f4", "f8"))
_STREAMED_MEDIAN = frozenset(np.dtype(t) for t in _INTEGERS)


def _exact_cval(spec: Spec) -> bool:
    """Whether the work dtype holds the border value exactly (always, but for "constant")."""
    if spec.mode != "constant":
        return True
    if spec.work.kind in "iu":
        info = np.iinfo(spec.work)
        if not (info.min <= spec.cval <= info.max):
            return False
    return float(spec.work.type(spec.cval)) == spec.cval


def streamer(spec: Spec) -> EngineFactory | None:
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
    """Filter the planes of a region of `shape` into `out`, its part `trim` (see above).

    Each run along z goes through one engine's :meth:`~zchunk.ops._engine.Engine.store`,
    which writes the planes `out` keeps straight into it.
    """
    flat = out.reshape(-1, *out.shape[-2:])
    nz = shape[-3] if three_d else 1
    keep = trim[-3] if three_d else slice(0, 1)
    kept = keep.stop - keep.start
    stream = iter(planes)
    # one engine for every run: its rings and work planes are allocated (and first touched)
    # once per region, not once per plane of a per-plane filter
    engine = make(nz, (shape[-2], shape[-1]), in_dtype, np.dtype(out.dtype).kind in "iu")
    for j in range(math.prod(shape[:-2]) // nz):
        run = itertools.islice(stream, nz)
        engine.store(run, keep.start, flat[j * kept : (j + 1) * kept], (trim[-2], trim[-1]))
    return out


def stream_block(block: np.ndarray, spec: Spec, make: EngineFactory) -> np.ndarray:
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


def filter_block(block: np.ndarray, *, spec: Spec) -> np.ndarray:
    make = streamer(spec)
    if make is not None and block.size:
        return stream_block(block, spec, make)
    result = REGISTRY[spec.name].kernel(block.astype(spec.work, copy=False), spec)
    if spec.out is None:
        return result
    # the filter's output is our own temporary: round it in place (no extra copy)
    return cast_rounded(result, spec.out, inplace=result is not block)


def filter_region(
    source: Source,
    region: tuple[slice, ...],
    trim: tuple[slice, ...],
    spec: Spec,
    in_dtype: np.dtype[Any],
) -> np.ndarray:
    """Read `region` (a chunk and its halo), filter it, and keep the chunk.

    Separable filters of a source that streams read the region plane by plane
    (:func:`_stream_planes`): the task holds the ring of planes and its output chunk, never
    the read chunk.
    """
    make = streamer(spec)
    if make is not None and source.streams:
        shape = tuple(s.stop - s.start for s in region)
        out = np.empty(tuple(s.stop - s.start for s in trim), dtype=spec.out or spec.work)
        three_d = len(spec.axes) == 3
        return stream_planes(source.planes(region), make, shape, in_dtype, trim, three_d, out)
    block: np.ndarray = filter_block(source.read(region), spec=spec)[trim]
    return np.ascontiguousarray(block)


#: Input types whose filter kernels :func:`compile_all` compiles ahead (``make install``).
PRECOMPILED = ("uint8", "uint16", "float32")


def compile_all() -> None:
    """Compile every filter's kernels for the `PRECOMPILED` inputs into numba's disk cache.

    Run once after installing, so that a user's first filter loads machine code instead of
    compiling it (5-10 s per filter on a loaded 2-core machine).
    """
    from zchunk.ops._filter_spec import Spec

    linear = ("gaussian", "gaussian_gradient_magnitude", "sobel", "laplace", "uniform")
    for name in (*linear, "minimum", "maximum", "median"):
        for dtype in map(np.dtype, PRECOMPILED):
            block = np.arange(3 * 9 * 11, dtype=dtype).reshape(3, 9, 11)
            work = np.dtype(np.float32) if name in linear else dtype
            outs = [None, dtype] if name in linear and dtype.kind == "u" else [None]
            for axes, out in itertools.product(((0, 1, 2), (1, 2)), outs):
                sigma = tuple(1.0 if a in axes else 0.0 for a in range(3))
                size = tuple(3 if a in axes else 1 for a in range(3))
                spec = Spec(name, axes, sigma, size, "reflect", 0.0, 4.0, work, out)
                filter_block(block, spec=spec)


if __name__ == "__main__":  # python -m zchunk.ops._filter_stream
    compile_all()
