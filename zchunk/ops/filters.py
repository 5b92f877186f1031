"""Filters: gaussian, sobel, prewitt, laplace, gaussian gradient magnitude, median, uniform, min, max.

Every filter gives the values of the same ``scipy.ndimage`` function run on the whole array,
borders included, for the modes ``"reflect"`` (scipy's default), ``"nearest"``, ``"mirror"`` and
``"constant"`` (with ``cval``): the rank filters exactly, the linear ones to float32 rounding
(see Dtypes).

Axes
----
Only the spatial axes are filtered: y and x, and z unless ``per_plane=True`` (ImageJ's "process
the whole stack" mode: each (y, x) plane in 2-D). The t and c axes are never filtered across; a
(t, z, y, x) stack gives what filtering each time point separately gives. ``sigma`` and ``size``
are in pixels, one value for every filtered axis or one per filtered axis (z, y, x order).

- ``sobel`` and ``prewitt`` give the edge magnitude ``sqrt(sum of d_a**2)`` over the filtered
  axes, where ``d_a`` is scipy's ``sobel``/``prewitt`` along axis ``a`` of the plane (or of the
  volume): a [-1, 0, 1] difference along ``a`` and [1, 2, 1] (prewitt: [1, 1, 1]) smoothing along
  the other filtered axes. They work per plane by default, as ImageJ's Process > Find Edges (for
  3x3 kernels "reflect" and "nearest" borders are the same); ``per_plane=False`` on a stack with
  z gives the 3-D magnitude ``sqrt(d_z**2 + d_y**2 + d_x**2)`` of scipy's 3-D sobel. The
  magnitude is computed with ``np.hypot`` (no overflow).
- ``laplace`` and ``gaussian_gradient_magnitude`` are scipy's, restricted to the filtered axes
  (their ``axes=`` argument); the other filters are 3-D by default too.

Dtypes
------
gaussian, sobel, prewitt, laplace, gaussian_gradient_magnitude and uniform compute in float32
(integer and float16 inputs are converted, so uint16 sobel cannot wrap and uint8 gaussian is not
rounded) or, with scipy itself, in float64 for float64 input, and return that type. The float32
results agree with scipy's float64 result to within float32 rounding (1e-5 of the data range);
cast back to the input's integer type (``dtype=``), they equal scipy's float64 result rounded in
at least 99.9% of voxels and never differ by more than 1 (a uniform filter's mean of integers is
exact, ties included; gradient magnitudes are rounded from float64). They run as 1-D passes
streamed plane by plane (:mod:`zchunk.ops._separable`, kernels in
:mod:`zchunk.ops._filter_kernels`). The rank filters median,
minimum and maximum are exact in any type and keep the input dtype (float16 becomes float32).
``dtype=`` casts the result with :func:`zchunk.ops.projection.cast_rounded` (rounded to nearest,
clipped, never wrapped).

Chunks and halos
----------------
Each chunk is filtered by scipy with a halo from its neighbours, exchanged by
``dask.array.map_overlap``, only along the axes split into several chunks: with the whole z axis
in every chunk (as ``zchunk.open`` plans) only y and x halos move, and there is no halo along z,
t or c. A 3-D filter of a stack whose z axis is split reopens it with whole z, or raises
:class:`~zchunk.errors.ChunkingError`. When a halo (``int(truncate * sigma + 0.5)`` pixels, or
``size // 2``, or 1 for the edge filters and laplace) is deeper than the smallest chunk along y or
x (typically the last, remainder band), neighbouring chunks along that axis are merged (never
split, and z is never touched) until every chunk is at least as deep as the halo; otherwise the
output keeps the input's chunks and the graph has no rechunk.

Minimum and maximum (8- to 32-bit integers, float32/64) stream the same way with running
van Herk / Gil-Werman minima (:mod:`zchunk.ops._rank_kernels`), bit-exact with scipy; so do
medians of 8- to 32-bit integers over odd windows of at most 27 pixels (3 x 3, 3 x 3 x 3, 5 x
5, ...: a selection network, :mod:`zchunk.ops._median_kernels`); other medians use scipy's
``median_filter``.

A task of a freshly opened TIFF stack streams its region (band and halo, whole z) plane by plane
through the separable and min/max filters: it holds a ring of ``2r + 1`` planes (r: the z radius) and its
output chunk, never the input chunk.

dask-image's ``ndfilters`` wrappers are not used, for three reasons: they put a halo on every axis
(dask refuses a 3-D gaussian with ``sigma=2`` on a 7-plane stack, "overlapping depth 8 is larger
than your array 7", although z, held in one chunk, needs no halo), their sobel, prewitt and
laplace smooth across every axis (t and c included, and z in per-plane mode), and dask silently
rechunks when a halo is deeper than a chunk.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, Literal

import dask.array as da
import numpy as np
from scipy import ndimage

from zchunk._graph import from_tasks
from zchunk._types import FILTERS, MODES
from zchunk.chunking import Purpose
from zchunk.errors import ChunkingError, OptionError
from zchunk.ops._filter_stream import (
    FilteredSource,
    halo_region,
    stream_block,
    stream_planes,
    streamer,
)
from zchunk.ops.projection import cast_rounded

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import DTypeLike

    from zchunk._source import Source
    from zchunk._types import FilterName, Mode
    from zchunk.stack import Stack

__all__ = ["FILTERS", "MODES", "filter"]


_SPATIAL = "zyx"
_RANK_DTYPES = frozenset(np.dtype(t) for t in np.typecodes["AllInteger"] + "fd")


@dataclass(frozen=True, slots=True)
class _Spec:
    """Everything a task needs to filter one block (small and picklable)."""

    name: str
    axes: tuple[int, ...]  # filtered axes, indices into the block, ascending
    sigma: tuple[float, ...]  # per block axis, 0 where not filtered (sigma filters)
    size: tuple[int, ...]  # per block axis, 1 where not filtered (size filters)
    mode: str
    cval: float
    truncate: float
    work: np.dtype[Any]
    out: np.dtype[Any] | None


# kernels: (block in the working dtype, spec) -> filtered block -------------------------------


def _gaussian(values: np.ndarray, spec: _Spec) -> np.ndarray:
    out: np.ndarray = ndimage.gaussian_filter(
        values, spec.sigma, mode=spec.mode, cval=spec.cval, truncate=spec.truncate
    )
    return out


def _gaussian_gradient_magnitude(values: np.ndarray, spec: _Spec) -> np.ndarray:
    out: np.ndarray = ndimage.gaussian_gradient_magnitude(
        values, spec.sigma, mode=spec.mode, cval=spec.cval, axes=spec.axes, truncate=spec.truncate
    )
    return out


def _edge_magnitude(values: np.ndarray, spec: _Spec, *, smooth: tuple[int, ...]) -> np.ndarray:
    """Scipy's sobel/prewitt along each filtered axis, smoothing only along the filtered axes."""
    derivatives = []
    for axis in spec.axes:
        d = ndimage.correlate1d(values, [-1, 0, 1], axis, mode=spec.mode, cval=spec.cval)
        for other in spec.axes:
            if other != axis:
                ndimage.correlate1d(d, smooth, other, output=d, mode=spec.mode, cval=spec.cval)
        derivatives.append(d)
    magnitude: np.ndarray = functools.reduce(np.hypot, derivatives)
    return magnitude


def _laplace(values: np.ndarray, spec: _Spec) -> np.ndarray:
    out: np.ndarray = ndimage.laplace(values, mode=spec.mode, cval=spec.cval, axes=spec.axes)
    return out


def _sized(func: Callable[..., np.ndarray]) -> Callable[[np.ndarray, _Spec], np.ndarray]:
    def kernel(values: np.ndarray, spec: _Spec) -> np.ndarray:
        return func(values, size=spec.size, mode=spec.mode, cval=spec.cval)

    return kernel


@dataclass(frozen=True, slots=True)
class _Filter:
    kernel: Callable[[np.ndarray, _Spec], np.ndarray]
    param: Literal["sigma", "size"] | None
    rank: bool = False  # exact in any dtype: keeps the input dtype
    per_plane: bool = False  # default of per_plane=None
    extras: tuple[str, ...] = ("cval",)


_REGISTRY: dict[str, _Filter] = {
    "gaussian": _Filter(_gaussian, "sigma", extras=("truncate", "cval")),
    "sobel": _Filter(functools.partial(_edge_magnitude, smooth=(1, 2, 1)), None, per_plane=True),
    "prewitt": _Filter(functools.partial(_edge_magnitude, smooth=(1, 1, 1)), None, per_plane=True),
    "laplace": _Filter(_laplace, None),
    "gaussian_gradient_magnitude": _Filter(
        _gaussian_gradient_magnitude, "sigma", extras=("truncate", "cval")
    ),
    "median": _Filter(_sized(ndimage.median_filter), "size", rank=True),
    "uniform": _Filter(_sized(ndimage.uniform_filter), "size"),
    "minimum": _Filter(_sized(ndimage.minimum_filter), "size", rank=True),
    "maximum": _Filter(_sized(ndimage.maximum_filter), "size", rank=True),
}
assert set(_REGISTRY) == set(FILTERS)


def _filter_block(block: np.ndarray, *, spec: _Spec) -> np.ndarray:
    make = streamer(spec)
    if make is not None and block.size:
        return stream_block(block, spec, make)
    result = _REGISTRY[spec.name].kernel(block.astype(spec.work, copy=False), spec)
    if spec.out is None:
        return result
    # the filter's output is our own temporary: round it in place (no extra copy)
    return cast_rounded(result, spec.out, inplace=result is not block)


# validation -----------------------------------------------------------------------------------


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _per_axis(name: str, param: str, value: Any, letters: str) -> tuple[Any, ...]:
    """Spread a scalar over the filtered axes, or check a sequence has one value per axis."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.ndim == 0 else tuple(value.tolist())
    if not isinstance(value, (tuple, list)):
        return (value,) * len(letters)
    values = tuple(value)
    if len(values) != len(letters):
        msg = (
            f"{param}={value!r} has {len(values)} values but {name} filters {len(letters)} "
            f"axes ({', '.join(letters)}): give one value for all or one per axis"
        )
        raise OptionError(msg)
    return values


def _check_sigma(name: str, sigma: Any, letters: str) -> tuple[float, ...]:
    sigmas = _per_axis(name, "sigma", sigma, letters)
    everywhere = name == "gaussian_gradient_magnitude"  # a derivative needs smoothing
    if all(_is_real(s) and math.isfinite(float(s)) and float(s) >= 0 for s in sigmas):
        positive = [float(s) > 0 for s in sigmas]
        if all(positive) or (any(positive) and not everywhere):
            return tuple(float(s) for s in sigmas)
    if everywhere:
        need = "a positive number of pixels along every filtered axis"
    elif isinstance(sigma, (tuple, list, np.ndarray)) and len(sigmas) > 1:
        need = "numbers of pixels >= 0, at least one > 0"
    else:
        need = "a positive number of pixels"
    msg = f"sigma={sigma!r} is invalid for {name}: give {need}, e.g. sigma=2"
    raise OptionError(msg)


def _check_size(name: str, size: Any, letters: str) -> tuple[int, ...]:
    sizes = _per_axis(name, "size", size, letters)
    if all(_is_int(s) and int(s) >= 1 for s in sizes):
        return tuple(int(s) for s in sizes)
    msg = (
        f"size={size!r} is invalid for {name}: give a positive whole number of pixels, e.g. size=3"
    )
    raise OptionError(msg)


def _check_kernel(
    name: str,
    stack: Stack,
    letters: str,
    sigmas: tuple[float, ...],
    sizes: tuple[int, ...],
    truncate: float,
) -> None:
    """Refuse a kernel larger than the data, before anything is allocated.

    A Gaussian's 1-D weights (float64, 2 * truncate * sigma + 1 of them) must not outweigh the
    stack; a rank or uniform window must not hold more pixels than the stack, nor be wider
    than twice an axis (beyond that the reflected image repeats).
    """
    shape = {a: int(stack.data.shape[stack.axis(a)]) for a in letters}
    data = max(int(stack.data.nbytes), 1 << 20)
    if sigmas:
        width = max(2 * int(truncate * s + 0.5) + 1 for s in sigmas)
        if 8 * width > data:
            msg = (
                f"sigma={max(sigmas):g} is too large for {name} on a stack of shape "
                f"{tuple(stack.data.shape)}: its kernel ({width} pixels) outweighs the data; "
                "use a sigma below the image size"
            )
            raise OptionError(msg)
    if sizes:
        wide = [a for a, s in zip(letters, sizes, strict=True) if s > 2 * shape[a] + 1]
        if wide or math.prod(sizes) > int(stack.data.size):
            msg = (
                f"size={sizes if len(set(sizes)) > 1 else sizes[0]} is too large for {name} on "
                f"a stack of shape {tuple(stack.data.shape)}: the window holds more pixels "
                "than the image; use a size below the image size"
            )
            raise OptionError(msg)


def _takes(name: str, spec: _Filter) -> str:
    params = ([spec.param] if spec.param else []) + list(spec.extras)
    return f"{name} takes {', '.join(params)}"


def _check_params(
    name: str, spec: _Filter, sigma: Any, size: Any, mode: str, params: dict[str, Any]
) -> tuple[float, float]:
    """Check the parameters a filter takes; return (cval, truncate)."""
    for param, value in (("sigma", sigma), ("size", size)):
        if value is not None and spec.param != param:
            msg = f"{name} does not take {param}={value!r}: {_takes(name, spec)}"
            raise OptionError(msg)
    if spec.param == "sigma" and sigma is None:
        msg = f"{name} needs sigma (in pixels), e.g. sigma=2"
        raise OptionError(msg)
    if spec.param == "size" and size is None:
        msg = f"{name} needs size (in pixels), e.g. size=3"
        raise OptionError(msg)
    for param, value in params.items():
        if param not in spec.extras:
            msg = f"{name} does not take {param}={value!r}: {_takes(name, spec)}"
            raise OptionError(msg)
    if mode not in MODES:
        msg = f"mode={mode!r} is not one of {', '.join(MODES)}"
        if mode in ("wrap", "grid-wrap"):
            msg += " (wrap needs the far edge of the image, which a chunk does not hold)"
        raise OptionError(msg)
    cval = params.get("cval", 0.0)
    if "cval" in params and mode != "constant":
        msg = f"cval={cval!r} is only used with mode='constant', not mode={mode!r}"
        raise OptionError(msg)
    if not (_is_real(cval) and not math.isnan(float(cval))):
        msg = f"cval={cval!r} must be a number (the value outside the image)"
        raise OptionError(msg)
    truncate = params.get("truncate", 4.0)
    if not (_is_real(truncate) and math.isfinite(float(truncate)) and float(truncate) > 0):
        msg = f"truncate={truncate!r} must be a positive number of sigmas, e.g. truncate=4"
        raise OptionError(msg)
    return float(cval), float(truncate)


# chunks ---------------------------------------------------------------------------------------


def _radius(spec: _Spec, axis: int) -> int:
    """Halo scipy needs along `axis` (0 where the filter does not reach)."""
    param = _REGISTRY[spec.name].param
    if param == "sigma":
        return int(spec.truncate * spec.sigma[axis] + 0.5)  # scipy's kernel radius
    if param == "size":
        return spec.size[axis] // 2
    return 1 if axis in spec.axes else 0


def halo_pixels(
    name: str,
    *,
    sigma: float | Sequence[float] | None = None,
    size: int | Sequence[int] | None = None,
    truncate: float = 4.0,
    **_: Any,
) -> int:
    """Return the widest halo (pixels) filter `name` exchanges along y or x.

    Examples
    --------
    >>> halo_pixels("gaussian", sigma=2), halo_pixels("median", size=5), halo_pixels("sobel")
    (8, 2, 1)
    """
    param = _REGISTRY[name].param if name in _REGISTRY else None
    if param == "sigma" and sigma is not None:
        values = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
        # values the checks refuse (nan, inf, text) have no halo: filter() says why
        ok = [float(v) for v in values if _is_real(v) and math.isfinite(float(v))]
        return max((int(truncate * v + 0.5) for v in ok if 0 <= v < 2**40), default=1)
    if param == "size" and size is not None:
        values = [size] if isinstance(size, int) else list(size)
        return max((int(v) // 2 for v in values if _is_int(v)), default=1)
    return 1


def _merge_chunks(chunks: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Merge neighbouring chunks (never split one) until each is at least `depth` long.

    Examples
    --------
    >>> _merge_chunks((16, 16, 13), 14), _merge_chunks((5, 5, 5, 2), 6)
    ((16, 29), (10, 7))
    """
    merged: list[int] = []
    run = 0
    for n in chunks:
        run += n
        if run >= depth:
            merged.append(run)
            run = 0
    if run:
        if merged:
            merged[-1] += run
        else:
            merged.append(run)
    return tuple(merged)


def _planned(stack: Stack, name: str, letters: str, purpose: Purpose) -> Stack:
    """Return `stack` in chunks planned for this filter, z whole for a 3-D one.

    A stack with a source is read again in such chunks (unless it is already); one without
    must hold z whole already for a 3-D filter: z halos are never exchanged.
    """
    split = "z" in letters and stack.data.numblocks[stack.axis("z")] > 1
    plan = stack.plan
    if stack.source is not None and (split or (plan is not None and plan.purpose != purpose)):
        whole = "z" if "z" in letters or plan is None else plan.whole
        return stack.replanned(whole=whole, purpose=purpose) or stack
    if split:
        msg = (
            f"z is split into {stack.data.numblocks[stack.axis('z')]} chunks but a 3-D {name} "
            f"needs the whole z axis in every chunk: open the stack with zchunk.open(...) "
            f"(whole z, the default), or pass per_plane=True to filter each plane in 2-D"
        )
        raise ChunkingError(msg)
    return stack


# public API -----------------------------------------------------------------------------------


def _filter_overlap(
    data: da.Array, spec: _Spec, axes: tuple[int, ...], dtype: np.dtype[Any], name: str
) -> da.Array:
    """Filter an arbitrary dask array: halos exchanged with dask's map_overlap.

    Halos only along split axes; chunks shallower than their halo are merged first.
    """
    chunks = list(data.chunks)
    depth: dict[int, int] = {}
    for i in axes:
        radius = _radius(spec, i)
        if radius and len(chunks[i]) > 1 and min(chunks[i]) < radius:
            chunks[i] = _merge_chunks(chunks[i], radius)
        depth[i] = radius if len(chunks[i]) > 1 else 0
    if tuple(chunks) != data.chunks:
        data = data.rechunk(tuple(chunks))
    filtered: da.Array = da.map_overlap(
        functools.partial(_filter_block, spec=spec),
        data,
        depth=depth,
        boundary="none",
        trim=True,
        allow_rechunk=False,
        dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype=dtype),
        token=f"zchunk-{name}",
    )
    return filtered


def _filter_region(
    source: Source,
    region: tuple[slice, ...],
    trim: tuple[slice, ...],
    spec: _Spec,
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
    block: np.ndarray = _filter_block(source.read(region), spec=spec)[trim]
    return np.ascontiguousarray(block)


def _filter_regions(
    source: Source,
    data: da.Array,
    spec: _Spec,
    axes: tuple[int, ...],
    dtype: np.dtype[Any],
    name: str,
) -> da.Array:
    """Filter a stack straight from its file: one task reads a chunk plus halo and filters it.

    Every task depends on nothing: no read task runs ahead of the filters holding blocks for
    neighbours (dask's threaded scheduler reads eagerly), so memory stays at one halo'd chunk
    per worker. The halo stops at the image edge, where scipy's `mode` applies, exactly as on
    the whole array.
    """
    from dask.base import tokenize

    shape = data.shape
    radius = {i: _radius(spec, i) for i in axes}

    def task(slices: tuple[slice, ...]) -> tuple[Any, ...]:
        region, trim = halo_region(slices, shape, radius)
        return (_filter_region, source, region, trim, spec, data.dtype)

    key = f"zchunk-{name}-{tokenize(data.name, spec, dtype.str)}"
    return from_tasks(key, data.chunks, dtype, task)


def filter(
    stack: Stack,
    /,
    name: FilterName,
    *,
    sigma: float | Sequence[float] | None = None,
    size: int | Sequence[int] | None = None,
    per_plane: bool | None = None,
    mode: Mode = "reflect",
    dtype: DTypeLike | None = None,
    **params: float,
) -> Stack:
    """Filter a stack in 3-D (z, y, x) or plane by plane, never across t or c.

    Parameters
    ----------
    stack : Stack
        Input with y and x axes (and maybe t, c, z); for a 3-D filter z is held whole in every
        chunk, as ``zchunk.open`` plans.
    name : str
        The filter, one of `FILTERS`: ``"gaussian"``, ``"sobel"``, ``"prewitt"``,
        ``"laplace"``, ``"gaussian_gradient_magnitude"``, ``"median"``, ``"uniform"``,
        ``"minimum"``, ``"maximum"``; see the module docstring for their exact semantics.
    sigma : float or sequence of float, optional
        Standard deviation in pixels, for gaussian and gaussian_gradient_magnitude (required):
        one value, or one per filtered axis in (z,) y, x order (>= 0, at least one > 0; every
        one > 0 for gaussian_gradient_magnitude).
    size : int or sequence of int, optional
        Window width in pixels, for median, uniform, minimum and maximum (required): one
        positive integer, or one per filtered axis.
    per_plane : bool, optional
        Filter each (y, x) plane in 2-D (ImageJ's stack mode) instead of the (z, y, x) volume.
        Default: True for sobel and prewitt (ImageJ's Find Edges), False for the others.
    mode : {"reflect", "nearest", "mirror", "constant"}
        How the image is extended beyond its borders, as in ``scipy.ndimage``.
    dtype : dtype, optional
        Cast the result, rounded to nearest and clipped (never wrapped).
    **params : float
        ``cval`` (value outside the image, with ``mode="constant"``; default 0) and, for the
        gaussian filters, ``truncate`` (kernel radius in sigmas, default 4).

    Returns
    -------
    Stack
        Lazy result of the input's shape, axes, scale and units, named ``"<filter>-<name>"``,
        with ``attrs["filter"]`` describing the filter. Its dtype is float32 (float64 for
        float64 input), or the input dtype for median, minimum and maximum, or `dtype`.

    Raises
    ------
    OptionError
        (a ValueError) For an unknown filter or mode, a missing parameter, one the filter does not take, or a
        sigma or size that is not positive or has the wrong number of values.
    ChunkingError
        For a 3-D filter of a stack whose z axis is split and cannot be reopened whole.
    StackFormatError
        If the stack has no y or x axis.

    Examples
    --------
    >>> img = np.zeros((2, 4, 6), dtype="uint8")
    >>> img[..., 3:] = 10
    >>> s = Stack(da.from_array(img, chunks=(2, 2, 3)), name="step")
    >>> edges = filter(s, "sobel")
    >>> edges.name, edges.data.dtype, edges.data.chunks == s.data.chunks
    ('sobel-step', dtype('float32'), True)
    >>> edges.data.compute()[0, 0]
    array([ 0.,  0., 40., 40.,  0.,  0.], dtype=float32)
    >>> filter(s, "median", size=3).data.dtype
    dtype('uint8')
    >>> filter(s, "gaussian", sigma=(0, 1, 1)).attrs["filter"]["sigma"]
    (0.0, 1.0, 1.0)
    """
    spec_entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec_entry is None:
        msg = f"filter {name!r} is not one of {', '.join(FILTERS)}"
        raise OptionError(msg)
    if per_plane is not None and not isinstance(per_plane, (bool, np.bool_)):
        msg = f"per_plane={per_plane!r} must be True, False or None (the filter's default)"
        raise OptionError(msg)
    plane = spec_entry.per_plane if per_plane is None else bool(per_plane)
    cval, truncate = _check_params(name, spec_entry, sigma, size, mode, dict(params))
    stack.axis("y")  # StackFormatError naming the axes there are
    stack.axis("x")
    letters = "".join(a for a in _SPATIAL if a in stack.axes and not (plane and a == "z"))
    sigmas = _check_sigma(name, sigma, letters) if spec_entry.param == "sigma" else ()
    sizes = _check_size(name, size, letters) if spec_entry.param == "size" else ()
    _check_kernel(name, stack, letters, sigmas, sizes, truncate)
    out_dtype = None if dtype is None else np.dtype(dtype)
    if out_dtype is not None and out_dtype.kind not in "iuf":
        msg = f"dtype={out_dtype} is not an integer or float type"
        raise OptionError(msg)
    halo = halo_pixels(name, sigma=sigma, size=size, truncate=truncate)
    purpose = Purpose.filter(halo)
    stack = _planned(stack, name, letters, purpose)

    axes = tuple(sorted(stack.axis(a) for a in letters))
    by_axis = {stack.axis(a): i for i, a in enumerate(letters)}
    ndim = stack.data.ndim
    in_dtype = stack.dtype
    if spec_entry.rank:
        work = in_dtype if in_dtype in _RANK_DTYPES else np.dtype(np.float32)
    else:
        work = np.dtype(np.float64 if in_dtype == np.float64 else np.float32)
    spec = _Spec(
        name=name,
        axes=axes,
        sigma=tuple(sigmas[by_axis[i]] if i in by_axis and sigmas else 0.0 for i in range(ndim)),
        size=tuple(sizes[by_axis[i]] if i in by_axis and sizes else 1 for i in range(ndim)),
        mode=mode,
        cval=cval,
        truncate=truncate,
        work=work,
        out=out_dtype,
    )

    result_dtype = out_dtype if out_dtype is not None else work
    source: FilteredSource | None = None
    if stack.source is not None and stack.source.reads_regions:
        # straight from the file: each task reads its chunk with the halo and filters it
        filtered = _filter_regions(stack.source, stack.data, spec, axes, result_dtype, name)
        call: dict[str, Any] = {"name": name, "sigma": sigma, "size": size}
        call |= {"per_plane": per_plane}
        call |= {"mode": mode, "dtype": dtype, **params}
        source = FilteredSource(
            name=filtered.name,
            source=stack.source,
            spec=spec,
            shape=stack.shape,
            radius=tuple((i, _radius(spec, i)) for i in axes),
            in_dtype=stack.dtype,
            call=tuple(call.items()),
            purpose=purpose,
        )
    else:
        filtered = _filter_overlap(stack.data, spec, axes, result_dtype, name)

    described: dict[str, Any] = {"name": name}
    if sigmas:
        described["sigma"] = sigmas
    if sizes:
        described["size"] = sizes
    described |= {"axes": letters, "per_plane": plane, "mode": mode}
    if mode == "constant":
        described["cval"] = cval
    if "truncate" in spec_entry.extras:
        described["truncate"] = truncate
    attrs = {**stack.attrs, "filter": described}
    # a projection of the result streams filtered planes from the file (see FilteredSource)
    return stack.replace(data=filtered, name=f"{name}-{stack.name}", attrs=attrs, source=source)
