"""Compiled casts of float32/float64 rows and planes to the output type, rounded like numpy.

This module owns how a filter's float result becomes an integer output: round half to even
(``np.rint``), clip to the type's range, NaN to 0, in one pass while the row is in cache.
:func:`store_row` is the row kernel the filter passes call as they finish a row
(:mod:`zchunk.ops._filter_kernels`); :func:`store_rounded` does a whole plane, and
:func:`rounding_bounds` says which (float, integer) pairs these kernels round exactly. It is
:func:`zchunk.ops.projection.cast_rounded` without temporaries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numba import njit

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = ["rounding_bounds", "store_rounded", "store_row"]


def _jit[F: Callable[..., Any]](func: F) -> F:
    """Compile `func` with numba: serial, GIL released, cached on disk."""
    return cast("F", njit(nogil=True, cache=True)(func))


@_jit
def store_row(
    src: NDArray[Any], c0: int, bounds: NDArray[Any], rounding: bool, out: NDArray[Any]
) -> None:
    """``out = src[c0:c0 + len(out)]``, rounded half to even and clipped to `bounds` (NaN: 0).

    Without `rounding`, a plain cast. The arithmetic is in `src`'s type: `bounds` has it.
    """
    s = src[c0:]
    if not rounding:
        for x in range(out.size):
            out[x] = s[x]
        return
    low = bounds[0]
    high = bounds[1]
    for x in range(out.size):
        v = s[x]
        v = max(v, low)
        v = min(v, high)
        v = 0 if np.isnan(v) else v
        out[x] = np.rint(v)


@_jit
def _store_rounded(
    src: NDArray[Any], r0: int, c0: int, bounds: NDArray[Any], out: NDArray[Any]
) -> None:
    for y in range(out.shape[0]):
        store_row(src[r0 + y], c0, bounds, True, out[y])


def rounding_bounds(dtype: np.dtype[Any], work: np.dtype[Any]) -> NDArray[Any] | None:
    """Return the clip bounds for rounding `work` values to integer `dtype`, or None.

    None when `dtype` is not an integer type the compiled rounding takes from `work`:
    8- and 16-bit from float32, up to 32-bit from float64 (the bounds are then exact in
    `work`, and so is the rounding; rint is exact below 2**23 and 2**52).
    """
    if dtype.kind not in "iu" or dtype.itemsize > work.itemsize // 2:
        return None
    info = np.iinfo(dtype)
    return np.array([info.min, info.max], dtype=work)


def store_rounded(src: NDArray[Any], r0: int, c0: int, out: NDArray[Any]) -> None:
    """``out = clip(rint(src[r0:, c0:]), lo, hi)`` cast to out's integer dtype; NaN gives 0.

    float32 `src` for 8- and 16-bit targets, float64 for targets up to 32 bits (see
    :func:`rounding_bounds`). :func:`zchunk.ops.projection.cast_rounded` on a plane, without
    temporaries.
    """
    bounds = rounding_bounds(np.dtype(out.dtype), np.dtype(src.dtype))
    if bounds is None:
        msg = f"cannot round {src.dtype} to {out.dtype} in one pass"
        raise ValueError(msg)
    _store_rounded(src, r0, c0, bounds, out)
