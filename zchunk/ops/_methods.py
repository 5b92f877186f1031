"""The projection methods: one frozen :class:`Method` per name, in :data:`METHODS`.

A method says how NumPy and ImageJ compute it on a block holding the whole reduced axis, and
whether it also has an exact plane-by-plane form (:class:`Running`), which streamed TIFF
projections use. :mod:`zchunk.ops.projection` builds the graphs; adding a projection is adding
one entry to :data:`METHODS` (and its name to ``zchunk._types.ProjectionMethod``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from zchunk.errors import OptionError

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import DTypeLike

__all__ = ["METHODS", "Method", "Running", "cast_rounded"]

#: A reduction of one block along `axis`: ``reduce(block, axis=axis)``.
type Reducer = Callable[..., np.ndarray]


def cast_rounded(values: np.ndarray, dtype: DTypeLike, *, inplace: bool = False) -> np.ndarray:
    """Cast to `dtype`, rounding to nearest and clipping to its range (never wrapping).

    With ``inplace=True`` a float `values` (a temporary of the caller) is rounded and clipped
    in place, so the cast costs no working copy.

    Examples
    --------
    >>> cast_rounded(np.array([-3.0, 2.5, 70000.0, np.nan]), "uint16")
    array([    0,     2, 65535,     0], dtype=uint16)
    """
    target = np.dtype(dtype)
    if target.kind in "iu":
        info = np.iinfo(target)
        if values.dtype.kind != "f":  # integers: clip to the bounds both types hold
            source = np.iinfo(values.dtype)
            lo, hi = max(info.min, source.min), min(info.max, source.max)
            clipped: np.ndarray = np.clip(values, values.dtype.type(lo), values.dtype.type(hi))
            return clipped.astype(target)
        # at most one working copy: chunks are large. float32 is exact here when the
        # target's bounds are float32 numbers (8- and 16-bit targets).
        exact = target.itemsize <= 2 and values.dtype.itemsize >= 4
        if inplace and exact:
            rounded = np.rint(values, out=values)
        else:
            rounded = np.rint(values, dtype=values.dtype if exact else np.float64)
        np.nan_to_num(rounded, copy=False, nan=0.0)
        np.clip(rounded, info.min, info.max, out=rounded)
        return rounded.astype(target)
    if target.kind == "f":
        return values.astype(target)
    msg = f"dtype={target} is not an integer or float type"
    raise OptionError(msg)


# NumPy's semantics ----------------------------------------------------------------------


def _numpy(func: Callable[..., Any], block: np.ndarray, *, axis: int) -> np.ndarray:
    return np.asarray(func(block, axis=axis))


def _median(block: np.ndarray, *, axis: int) -> np.ndarray:
    from zchunk.ops import _kernels  # numba: loaded by the methods that use it only

    return _kernels.median(block, axis=axis)


def _percentile(block: np.ndarray, *, axis: int, q: float) -> np.ndarray:
    from zchunk.ops import _kernels

    return _kernels.percentile(block, q, axis=axis)


# ImageJ's semantics (Image > Stacks > Z Project) --------------------------------------------


def _float32_running_sum(block: np.ndarray, axis: int) -> np.ndarray:
    """ImageJ's ``fpixels[i] += v`` slice after slice, in float32."""
    moved = np.moveaxis(block, axis, 0)
    acc = np.zeros(moved.shape[1:], dtype=np.float32)
    for plane in moved:
        np.add(acc, plane, out=acc, dtype=np.float32, casting="unsafe")
    return acc


def _round_half_up(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """ImageJ's ``(int)(value + 0.5)`` with clipping (TypeConverter without scaling)."""
    info = np.iinfo(dtype)
    out = np.floor(values.astype(np.float64) + 0.5)
    return np.clip(np.nan_to_num(out, nan=0.0), info.min, info.max).astype(dtype)


def _ij_float_extreme(block: np.ndarray, method: str, axis: int) -> np.ndarray:
    """ImageJ's Max/Min of 32-bit: ``if (v > acc) acc = v`` from -/+Float.MAX_VALUE.

    A NaN never wins the comparison, so NaN is skipped and a column of NaN only gives
    -Float.MAX_VALUE (max) or Float.MAX_VALUE (min).
    """
    func = np.fmax if method == "max" else np.fmin
    out = np.asarray(func.reduce(block, axis=axis)).astype(np.float32)
    big = np.finfo(np.float32).max
    return np.where(np.isnan(out), -big if method == "max" else big, out).astype(np.float32)


def _ij_float_average(block: np.ndarray, axis: int) -> np.ndarray:
    """ImageJ 1.54's Average of 32-bit: the double mean of the non-NaN values of all slices.

    ``sum += v; count++`` for every v that is not NaN, slice after slice, then
    ``(float)(sum / count)``: NaN for a column of NaN only.
    """
    planes = np.moveaxis(block, axis, 0)
    total = np.zeros(planes.shape[1:], np.float64)
    count = np.zeros(planes.shape[1:], np.int64)
    for plane in planes:
        ok = ~np.isnan(plane)
        total += np.where(ok, plane, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(np.float32)


def _ij_extreme(method: str, block: np.ndarray, *, axis: int) -> np.ndarray:
    if block.dtype.kind == "f":
        return _ij_float_extreme(block, method, axis)
    return np.asarray(getattr(np, method)(block, axis=axis))


def _ij_sum(block: np.ndarray, *, axis: int) -> np.ndarray:
    return _float32_running_sum(block, axis)


def _ij_mean(block: np.ndarray, *, axis: int) -> np.ndarray:
    if block.dtype.kind == "f":
        return _ij_float_average(block, axis)
    avg = _float32_running_sum(block, axis) / np.float32(block.shape[axis])
    return _round_half_up(avg, block.dtype)


def _ij_std(block: np.ndarray, *, axis: int) -> np.ndarray:
    """ImageJ's Standard Deviation: float32 from double sums, ddof=1, 0 for one slice."""
    n = block.shape[axis]
    s1 = np.zeros(np.delete(block.shape, axis), np.float64)
    s2 = np.zeros_like(s1)
    for plane in np.moveaxis(block.astype(np.float64), axis, 0):
        s1 += plane
        s2 += plane * plane
    if n < 2:
        return np.zeros(s1.shape, np.float32)
    var = (n * s2 - s1 * s1) / n
    with np.errstate(invalid="ignore"):
        sd = np.where(var > 0, np.sqrt(var / (n - 1.0)), 0.0)
    return sd.astype(np.float32)


def _ij_median(block: np.ndarray, *, axis: int) -> np.ndarray:
    """ImageJ's Median: sorted as float32, the middle pair averaged in float32."""
    from zchunk.ops import _kernels

    n = block.shape[axis]
    values32 = block.astype(np.float32)
    if n % 2:
        med = _kernels.order_statistics(values32, (n // 2,), axis=axis)[0]
    else:
        lo, hi = _kernels.order_statistics(values32, (n // 2 - 1, n // 2), axis=axis)
        med = (lo + hi) / np.float32(2)
    return _round_half_up(med, block.dtype) if block.dtype == np.uint8 else med.astype(np.float32)


# plane by plane -----------------------------------------------------------------------------


@dataclass(slots=True)
class _PartialSum:
    """A running integer sum: the last planes in a 32-bit `partial`, widened into `total`."""

    partial: np.ndarray
    total: np.ndarray | None
    count: int  # planes in `partial`


@dataclass(frozen=True, slots=True)
class Running:
    """A projection computed plane by plane: ``acc = ufunc(acc, plane)`` in z order.

    Sums of 8- and 16-bit integers (and bools) add each plane to a 32-bit partial sum, which
    holds `block` planes without overflow, and widen it to `acc_dtype` once per block (the
    64-bit adds cost twice as much per plane). Integer sums are exact, so this gives the
    same values in any order.
    """

    ufunc: np.ufunc
    acc_dtype: np.dtype[Any]
    mean: bool  # divide by the count at the end
    imagej_round: np.dtype[Any] | None  # ImageJ's Average of 8/16-bit: round half up to this
    out_dtype: np.dtype[Any] | None  # dtype= cast
    nan_to: float | None = None  # ImageJ's 32-bit Max/Min: a column of NaN only gives this
    partial: np.dtype[Any] | None = None  # 32-bit partial sums of small integers
    block: int = 0  # planes a partial sum holds without overflow

    def start(self, plane: np.ndarray) -> Any:
        if self.partial is not None:
            return _PartialSum(plane.astype(self.partial, copy=True), None, 1)
        if self.ufunc is np.add:  # from zero, as the running sums of NumPy and ImageJ
            acc = np.zeros(plane.shape, self.acc_dtype)
            self.add(acc, plane)
            return acc
        return plane.astype(self.acc_dtype, copy=True)

    def add(self, acc: Any, plane: np.ndarray) -> None:
        if not isinstance(acc, _PartialSum):
            self.ufunc(acc, plane, out=acc, dtype=self.acc_dtype, casting="unsafe")
        elif acc.count < self.block:
            np.add(acc.partial, plane, out=acc.partial, casting="unsafe")
            acc.count += 1
        else:
            self._widen(acc)
            np.copyto(acc.partial, plane, casting="unsafe")
            acc.count = 1

    def _widen(self, acc: _PartialSum) -> np.ndarray:
        if acc.total is None:
            acc.total = acc.partial.astype(self.acc_dtype)
        else:
            np.add(acc.total, acc.partial, out=acc.total, casting="unsafe")
        acc.count = 0
        return acc.total

    def finish(self, acc: Any, n: int) -> np.ndarray:
        if isinstance(acc, _PartialSum):
            acc = self._widen(acc)
        if self.mean:  # as np.mean (float64 sum / count) and ImageJ (float32 sum / float32 n)
            acc = acc / (np.float32(n) if self.acc_dtype == np.float32 else n)
        if self.imagej_round is not None:
            acc = _round_half_up(acc, self.imagej_round)
        if self.nan_to is not None:
            acc[np.isnan(acc)] = self.nan_to
        return acc if self.out_dtype is None else cast_rounded(acc, self.out_dtype, inplace=True)


def _extreme_running(method: str, like: str, dtype: np.dtype[Any]) -> Running | None:
    if like == "imagej" and dtype.kind == "f":
        big = float(np.finfo(np.float32).max)  # NaN skipped (see _ij_float_extreme)
        skip_nan: np.ufunc = np.fmax if method == "max" else np.fmin
        return Running(skip_nan, dtype, False, None, None, -big if method == "max" else big)
    return Running(np.maximum if method == "max" else np.minimum, dtype, False, None, None)


def _sum_running(method: str, like: str, dtype: np.dtype[Any]) -> Running | None:
    mean = method == "mean"
    if like == "imagej":
        if mean and dtype.kind == "f":
            return None  # a double sum and a count of the non-NaN values (_ij_float_average)
        return Running(np.add, np.dtype(np.float32), mean, dtype if mean else None, None)
    if dtype.kind not in "uib":
        return None  # float sums: NumPy may sum pairwise, in another order
    acc = np.dtype(np.float64) if mean else np.sum(np.zeros(1, dtype)).dtype
    if dtype.itemsize > 2:
        return Running(np.add, acc, mean, None, None)
    partial, block = _partial_sum(dtype)
    return Running(np.add, acc, mean, None, None, partial=partial, block=block)


def _partial_sum(dtype: np.dtype[Any]) -> tuple[np.dtype[Any], int]:
    """Return the 32-bit partial sum dtype of an 8/16-bit (or bool) dtype, and its planes.

    Examples
    --------
    >>> _partial_sum(np.dtype("uint16")), _partial_sum(np.dtype("int8"))
    ((dtype('uint32'), 65537), (dtype('int32'), 16777215))
    """
    if dtype.kind == "i":
        return np.dtype(np.int32), (2**31 - 1) // (2 ** (8 * dtype.itemsize - 1))
    return np.dtype(np.uint32), (2**32 - 1) // (2 ** (8 * dtype.itemsize) - 1)


def _no_running(method: str, like: str, dtype: np.dtype[Any]) -> Running | None:
    return None  # median and percentile need the whole column; std, two passes


# the registry -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Method:
    """One projection method.

    Attributes
    ----------
    name : str
        Its name in ``project(stack, name)`` and ``zchunk project -m``.
    numpy, imagej : callable
        ``reduce(block, axis=axis, **params)`` with NumPy's or ImageJ's values and dtypes;
        `imagej` is None when ImageJ has no such projection.
    running : callable
        ``running(name, like, dtype)``: the exact plane-by-plane form, or None.
    parameter : str or None
        The one parameter it takes (``"q"`` for percentile), named in its results.
    """

    name: str
    numpy: Reducer
    imagej: Reducer | None
    running: Callable[[str, str, np.dtype[Any]], Running | None] = _no_running
    parameter: str | None = None

    def reducer(self, like: str, value: float | None, out_dtype: np.dtype[Any] | None) -> Reducer:
        """Return ``reduce(block, axis=axis)`` with `like`'s semantics, `value` bound, cast."""
        base = self.imagej if like == "imagej" else self.numpy
        if base is None:
            msg = f"method {self.name!r} has no ImageJ equivalent; use like='numpy'"
            raise OptionError(msg)
        func = functools.partial(base, **({self.parameter: value} if self.parameter else {}))
        if out_dtype is None:
            return func
        return functools.partial(_cast_after, func, out_dtype)

    def plane_by_plane(
        self, like: str, dtype: np.dtype[Any], out_dtype: np.dtype[Any] | None
    ) -> Running | None:
        """Return the exact plane-by-plane form, or None when it has none."""
        running = self.running(self.name, like, dtype)
        return None if running is None else dataclasses.replace(running, out_dtype=out_dtype)

    def result_name(self, value: float | None) -> str:
        """File stem of a result: ``max``, ``percentile95``.

        Examples
        --------
        >>> METHODS["percentile"].result_name(99.5), METHODS["max"].result_name(None)
        ('percentile99.5', 'max')
        """
        return f"{self.name}{value:g}" if self.parameter and value is not None else self.name


def _cast_after(
    func: Reducer, out_dtype: np.dtype[Any], block: np.ndarray, *, axis: int
) -> np.ndarray:
    return cast_rounded(func(block, axis=axis), out_dtype)


#: Every projection, by name: the one place to add one.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "max",
            functools.partial(_numpy, np.max),
            functools.partial(_ij_extreme, "max"),
            _extreme_running,
        ),
        Method(
            "min",
            functools.partial(_numpy, np.min),
            functools.partial(_ij_extreme, "min"),
            _extreme_running,
        ),
        Method("sum", functools.partial(_numpy, np.sum), _ij_sum, _sum_running),
        Method("mean", functools.partial(_numpy, np.mean), _ij_mean, _sum_running),
        Method("std", functools.partial(_numpy, np.std), _ij_std),
        Method("median", _median, _ij_median),
        Method("percentile", _percentile, None, parameter="q"),
    )
}
