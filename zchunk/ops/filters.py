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

A task of a freshly opened file streams its region (band and halo, whole z) plane by plane
through these: it holds a ring of ``2r + 1`` planes (r: the z radius) and its output chunk, never
the input chunk. On a deep stack the planner may split z for it: each task then also reads r
planes before and after its run (:func:`zchunk.chunking.plan`), and the results are the same.

dask-image's ``ndfilters`` wrappers are not used, for three reasons: they put a halo on every axis
(dask refuses a 3-D gaussian with ``sigma=2`` on a 7-plane stack, "overlapping depth 8 is larger
than your array 7", although z, held in one chunk, needs no halo), their sobel, prewitt and
laplace smooth across every axis (t and c included, and z in per-plane mode), and dask silently
rechunks when a halo is deeper than a chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from zchunk._types import FILTERS, MODES
from zchunk.budget import Budget
from zchunk.chunking import Purpose
from zchunk.errors import ChunkingError, OptionError
from zchunk.ops._engine import store_plane
from zchunk.ops._filter_graph import filter_overlap, filter_regions
from zchunk.ops._filter_spec import (
    RANK_DTYPES,
    REGISTRY,
    SPATIAL,
    Spec,
    check_kernel,
    check_memory,
    check_params,
    check_sigma,
    check_size,
    halo_pixels,
    halo_radius,
)
from zchunk.ops._filter_stream import (
    filter_region,
    filtered_planes,
    halo_region,
    separable,
    streamer,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from numpy.typing import DTypeLike

    from zchunk._types import FilterName, Mode
    from zchunk.stack import Source, Stack

__all__ = ["FILTERS", "MODES", "FilteredSource", "filter", "halo_pixels"]


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


# the Source of a filtered stack --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FilteredSource:
    """The Source of a stack filtered straight from a file: reads and streams filtered pixels.

    `source` is the file's Source, `shape` and `radius` the input's shape and the halo per
    axis, `call` the ``filter`` arguments (to filter a reopened input again).
    """

    name: str
    source: Source
    spec: Spec
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
        grown, trim = self._grown(region)
        return filter_region(self.source, grown, trim, self.spec, self.in_dtype)

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
        # a 3-D filter needs z whole too (it would reopen the input with z whole only)
        if len(self.spec.axes) == 3 and "z" not in whole:
            whole += "z"
        fresh = self.source.reopen(whole=whole, purpose=self.purpose)
        return _filter(fresh, whole_z=True, **dict(self.call))


# public API -----------------------------------------------------------------------------------


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
    return _filter(
        stack,
        name,
        whole_z=False,
        sigma=sigma,
        size=size,
        per_plane=per_plane,
        mode=mode,
        dtype=dtype,
        **params,
    )


def _filter(
    stack: Stack,
    /,
    name: FilterName,
    *,
    whole_z: bool,
    sigma: float | Sequence[float] | None = None,
    size: int | Sequence[int] | None = None,
    per_plane: bool | None = None,
    mode: Mode = "reflect",
    dtype: DTypeLike | None = None,
    **params: float,
) -> Stack:
    """Filter as :func:`filter`; `whole_z` keeps z whole in every chunk (for a projection).

    Otherwise a filter streaming from the file may split a deep stack along z (see `plan`).
    """
    spec_entry = REGISTRY.get(name) if isinstance(name, str) else None
    if spec_entry is None:
        msg = f"filter {name!r} is not one of {', '.join(FILTERS)}"
        raise OptionError(msg)
    if per_plane is not None and not isinstance(per_plane, (bool, np.bool_)):
        msg = f"per_plane={per_plane!r} must be True, False or None (the filter's default)"
        raise OptionError(msg)
    plane = spec_entry.per_plane if per_plane is None else bool(per_plane)
    cval, truncate = check_params(name, spec_entry, sigma, size, mode, dict(params))
    stack.axis("y")  # StackFormatError naming the axes there are
    stack.axis("x")
    letters = "".join(a for a in SPATIAL if a in stack.axes and not (plane and a == "z"))
    sigmas = check_sigma(name, sigma, letters) if spec_entry.param == "sigma" else ()
    sizes = check_size(name, size, letters) if spec_entry.param == "size" else ()
    check_kernel(name, stack, letters, sigmas, sizes, truncate)
    out_dtype = None if dtype is None else np.dtype(dtype)
    if out_dtype is not None and out_dtype.kind not in "iuf":
        msg = f"dtype={out_dtype} is not an integer or float type"
        raise OptionError(msg)
    axes = tuple(sorted(stack.axis(a) for a in letters))
    by_axis = {stack.axis(a): i for i, a in enumerate(letters)}
    ndim = stack.data.ndim
    in_dtype = stack.dtype
    if spec_entry.rank:
        work = in_dtype if in_dtype in RANK_DTYPES else np.dtype(np.float32)
    else:
        work = np.dtype(np.float64 if in_dtype == np.float64 else np.float32)
    spec = Spec(
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

    halo = halo_pixels(name, sigma=sigma, size=size, truncate=truncate)
    # a filter streaming from the file holds its output chunk, not the chunk it reads
    streamed = stack.source is not None and stack.source.streams and streamer(spec) is not None
    result_dtype = out_dtype if out_dtype is not None else work
    z_halo = None
    if not whole_z and "z" in stack.axes:  # a per-plane filter reads no planes beyond its own
        z_halo = halo_radius(spec, stack.axis("z")) if "z" in letters else 0
    purpose = Purpose.filter(
        halo,
        streamed=streamed,
        out_bytes=result_dtype.itemsize,
        in_bytes=stack.dtype.itemsize,
        z_halo=z_halo,
    )
    stack = _planned(stack, name, letters, purpose)

    plan = stack.plan  # its budget is the chunks' share: a 1/memory_factor of the user's
    budget = (
        Budget(plan.budget * plan.purpose.memory_factor, plan.workers)
        if plan is not None
        else Budget.parse(None)
    )
    check_memory(spec, stack.shape, budget.bytes, budget.workers)
    source: FilteredSource | None = None
    if stack.source is not None and stack.source.reads_regions:
        # straight from the file: each task reads its chunk with the halo and filters it
        filtered = filter_regions(stack.source, stack.data, spec, axes, result_dtype, name)
        call: dict[str, Any] = {"name": name, "sigma": sigma, "size": size}
        call |= {"per_plane": per_plane}
        call |= {"mode": mode, "dtype": dtype, **params}
        source = FilteredSource(
            name=filtered.name,
            source=stack.source,
            spec=spec,
            shape=stack.shape,
            radius=tuple((i, halo_radius(spec, i)) for i in axes),
            in_dtype=stack.dtype,
            call=tuple(call.items()),
            purpose=purpose,
        )
    else:
        filtered = filter_overlap(stack.data, spec, axes, result_dtype, name)

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
