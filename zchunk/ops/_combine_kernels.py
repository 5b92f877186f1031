"""Compiled combination of a filter's term planes: sums and gradient magnitudes, rounded out.

A linear filter of several terms (laplace: one per axis; sobel, prewitt and gradient
magnitudes: one derivative per axis) ends here: :func:`combine_store` sums the float32 terms,
or takes their magnitude ``sqrt(sum of squares)``, and rounds each row into the output block
while it is in L1; :func:`add_squares` and :func:`sqrt_into` are the magnitude of whole
float planes (squares summed in float64, no overflow, no loss, rounded once to float32).

A magnitude rounded to 8/16-bit integers is computed in float32, twice the vector lanes of
float64, with a float64 fallback for the rare pixels near a half-integer, so that the result
is the float64 magnitude's rounding exactly (see :func:`_round_magnitude_row`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np
from numba import njit

from zchunk.ops._round_kernels import store_row as _store_row

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = ["add_squares", "combine_store", "sqrt_into"]


def _jit[F: Callable[..., Any]](func: F) -> F:
    """Compile `func` with numba: serial, GIL released, FMA allowed, no reordering."""
    return cast("F", njit(nogil=True, cache=True, fastmath={"contract"})(func))


#: A float32 magnitude m of n <= 3 terms is within ``(n + 2) / 2 * 2**-24 * m`` of the float64
#: one (a rounding per square and per sum of squares, halved by the root, and the root's own);
#: a block with a pixel closer than ``m * _TIE`` (twice that) to a half-integer, or a NaN or
#: infinite one, is rounded from float64 instead.
_TIE: Final = np.float32(2.0**-21)
_HALF: Final = np.float32(0.5)
_BLOCK: Final = 64  # pixels per check: 1e-5 of the pixels of a typical sobel are near a tie


@_jit
def _round_magnitude_row(
    terms: tuple[NDArray[np.float32], ...],
    row: int,
    c0: int,
    bounds: NDArray[np.float32],
    acc: NDArray[np.float32],
    acc64: NDArray[np.float64],
    out: NDArray[Any],
) -> None:
    """``out = rint(sqrt(sum of squares))`` of the terms' `row` from column `c0`, at most 16-bit.

    Rounded and clipped as :func:`~zchunk.ops._round_kernels.store_row` rounds, in float32
    (twice the vector lanes of float64); a block of pixels with one too close to a
    half-integer to be rounded as the float64 magnitude would be (see `_TIE`) is recomputed
    in float64, so the result is exactly the float64 magnitude's rounding.
    """
    width = out.size
    t = terms[0][row, c0:]
    for x in range(width):
        v = t[x]
        acc[x] = v * v
    for i in range(1, len(terms)):
        t = terms[i][row, c0:]
        for x in range(width):
            v = t[x]
            acc[x] += v * v
    low = bounds[0]
    high = bounds[1]
    for x0 in range(0, width, _BLOCK):
        n = min(_BLOCK, width - x0)
        a = acc[x0:]
        o = out[x0:]
        near = np.int32(0)
        for x in range(n):
            m = np.sqrt(a[x])
            d = m - np.floor(m) - _HALF
            tol = m * _TIE
            near += np.int32(~((d > tol) | (d < -tol)))  # NaN and inf too
            v = min(max(m, low), high)
            v = 0 if np.isnan(v) else v
            o[x] = np.rint(v)
        if near == 0:
            continue
        t = terms[0][row, c0 + x0 :]
        for x in range(n):
            w = np.float64(t[x])
            acc64[x] = w * w
        for i in range(1, len(terms)):
            t = terms[i][row, c0 + x0 :]
            for x in range(n):
                w = np.float64(t[x])
                acc64[x] += w * w
        for x in range(n):
            v = min(max(np.sqrt(acc64[x]), np.float64(low)), np.float64(high))
            v = 0 if np.isnan(v) else v
            o[x] = np.rint(v)


@_jit
def combine_store(
    terms: tuple[NDArray[np.float32], ...],
    magnitude: bool,
    divisor: float,
    r0: int,
    c0: int,
    bounds: NDArray[Any],
    rounding: bool,
    out: NDArray[Any],
) -> None:
    """Combine float32 term planes into `out` (rows ``r0 ..``, columns ``c0 ..``), row by row.

    Sum (then divided by `divisor` when it is not 1) in float32, or the magnitude. A magnitude
    rounded to an integer type of at most 16 bits is computed in float32 with a float64
    fallback near ties (:func:`_round_magnitude_row`: the float64 result's rounding, exactly);
    otherwise squares are summed in float64 (no overflow, no loss) and the square root is
    rounded to float32, or kept in float64 when rounding to wider integers (`bounds` float64:
    a float32 magnitude above 2**24 is too coarse to round like scipy's). The terms are added
    in order, as :class:`~zchunk.ops._separable.PlaneFilter` does plane by plane.
    """
    width = out.shape[1]
    div = np.float32(divisor)
    acc32 = np.empty(width, np.float32)
    acc64 = np.empty(width, np.float64)
    bounds32 = bounds.astype(np.float32)
    narrow = rounding and bounds[1] - bounds[0] <= 65535
    for y in range(out.shape[0]):
        if magnitude and narrow:
            _round_magnitude_row(terms, r0 + y, c0, bounds32, acc32, acc64, out[y])
            continue
        if magnitude:
            t = terms[0][r0 + y, c0:]
            for x in range(width):
                v = np.float64(t[x])
                acc64[x] = v * v
            for i in range(1, len(terms)):
                t = terms[i][r0 + y, c0:]
                for x in range(width):
                    v = np.float64(t[x])
                    acc64[x] += v * v
            if rounding:
                for x in range(width):
                    acc64[x] = np.sqrt(acc64[x])
                _store_row(acc64, 0, bounds, True, out[y])
            else:
                for x in range(width):
                    acc32[x] = np.float32(np.sqrt(acc64[x]))
                _store_row(acc32, 0, bounds, False, out[y])
            continue
        t = terms[0][r0 + y, c0:]
        for x in range(width):
            acc32[x] = t[x]
        for i in range(1, len(terms)):
            t = terms[i][r0 + y, c0:]
            for x in range(width):
                acc32[x] += t[x]
        if div != 1:
            for x in range(width):
                acc32[x] = acc32[x] / div
        _store_row(acc32, 0, bounds, rounding, out[y])


@_jit
def add_squares(acc: NDArray[np.float64], term: NDArray[np.float32], first: bool) -> None:
    """``acc = term**2`` (first) or ``acc += term**2``, in float64."""
    a = acc.reshape(-1)
    t = term.reshape(-1)
    if first:
        for i in range(a.size):
            v = np.float64(t[i])
            a[i] = v * v
    else:
        for i in range(a.size):
            v = np.float64(t[i])
            a[i] += v * v


@_jit
def sqrt_into(acc: NDArray[np.float64], out: NDArray[np.float32]) -> None:
    """``out = sqrt(acc)`` rounded to float32."""
    a = acc.reshape(-1)
    o = out.reshape(-1)
    for i in range(a.size):
        o[i] = np.float32(np.sqrt(a[i]))
