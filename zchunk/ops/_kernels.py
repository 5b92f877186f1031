"""Exact order statistics, median and percentile along one axis, without sorting.

These are the hot loops behind ``project(stack, "median")`` and ``project(stack, "percentile")``:
plain NumPy in, NumPy out, called by ``dask.array.map_blocks`` on blocks of shape (Z, ...) that hold
the whole reduced axis.

Algorithm (per tile of P pixels of the (Z, N) block, N = pixels, P chosen so Z*P fits in L2):

1. copy the tile into a contiguous (Z, P) buffer of order-preserving unsigned keys (identity for
   unsigned ints, sign bit flipped for signed ints, IEEE trick for floats with NaN as the top key),
   recording each pixel's min/max key and whether it holds a NaN;
2. bisect the key range of every pixel at once: ``mid = lo + (hi - lo) // 2``,
   ``count = sum_z(key <= mid)`` (z outer, pixels inner: a branch-free SIMD loop), then
   ``hi = mid`` where ``count > k`` else ``lo = mid + 1``; ``bit_length(max(hi - lo))`` rounds
   (<= 8 for uint8, <= 16 for uint16) give the exact k-th smallest key;
3. the (k+1)-th smallest comes from one more pass (``count(key <= v_k)`` and the smallest key
   above ``v_k``), so the two middle values of an even count cost one pass, not a second search;
4. keys map back to values; the mean / linear interpolation is done by NumPy on the (N,) results
   with exactly the operations ``np.median`` / ``np.percentile`` use, so results are bit-equal.

The numba kernels (:mod:`zchunk.ops._select_kernels`) are serial, release the GIL (dask threads run tiles in parallel), compile lazily
once per key width (uint8/16/32/64) and are cached on disk.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.lib.array_utils import normalize_axis_index

from zchunk.ops._select_kernels import FLOAT as _FLOAT
from zchunk.ops._select_kernels import SIGNED as _SIGNED
from zchunk.ops._select_kernels import UNSIGNED as _UNSIGNED
from zchunk.ops._select_kernels import select_kernel as _select_kernel

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike, NDArray

__all__ = ["median", "order_statistics", "percentile"]

# Bytes of the per-tile key buffer (Z * P * itemsize): half of a 1 MiB L2. Bigger tiles mean longer
# SIMD runs per row (less loop overhead), which matters for large Z; measured on an AMD EPYC.
_TILE_BYTES: Final = 512 * 1024
_MIN_TILE: Final = 64  # pixels; a multiple of every SIMD width
_MAX_TILE: Final = 2048  # keeps the per-pixel state (lo, hi, mid, counts) in L1


# key dtype by item size, and the narrow counter dtype with its largest safe run of z
_KEY_DTYPES: Final = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_COUNTERS: Final = {
    1: (np.uint8, 255),
    2: (np.uint16, 65535),
    4: (np.uint32, 2**32 - 1),
    8: (np.uint32, 2**32 - 1),
}
_EXPONENT_MASKS: Final = {4: 0x7F80_0000, 8: 0x7FF0_0000_0000_0000}


# --------------------------------------------------------------------------------------------
# Python front end
# --------------------------------------------------------------------------------------------


def _check_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.kind in "ui" and dtype.itemsize in _KEY_DTYPES:
        return
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return
    msg = (
        f"unsupported dtype {dtype}: expected an 8/16/32/64-bit integer or a float16/32/64 "
        "array (cast bool or complex data explicitly)"
    )
    raise TypeError(msg)


def _as_columns(block: ArrayLike, axis: int) -> tuple[NDArray[Any], tuple[int, ...]]:
    """Return `block` as a C-contiguous (Z, N) array (native byte order) and the result shape."""
    a = np.asarray(block)
    _check_dtype(a.dtype)
    ax = normalize_axis_index(axis, a.ndim)
    if a.shape[ax] == 0:
        msg = f"cannot reduce an empty axis: block.shape[{axis}] == 0 (block shape {a.shape})"
        raise ValueError(msg)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if ax != 0:
        a = np.moveaxis(a, ax, 0)
    rest = a.shape[1:]
    return np.ascontiguousarray(a).reshape(a.shape[0], math.prod(rest)), rest


def _tile_pixels(nz: int, itemsize: int, n: int) -> int:
    per_tile = _TILE_BYTES // (nz * itemsize) // _MIN_TILE * _MIN_TILE
    return max(1, min(n, max(_MIN_TILE, min(_MAX_TILE, per_tile))))


def _select(
    data: NDArray[Any], ks: NDArray[np.int64]
) -> tuple[NDArray[Any], NDArray[np.bool_] | None]:
    """Order statistics `ks` (sorted, unique, in range) of the columns of (Z, N) `data`.

    Returns the (len(ks), N) values in data's dtype and, for floats, the (N,) NaN mask.
    """
    dtype = data.dtype
    if dtype == np.float16:  # float16 -> float32 is exact and keeps the order
        values, nan = _select(data.astype(np.float32), ks)
        return values.astype(np.float16), nan
    nz, n = data.shape
    size = dtype.itemsize
    key = np.dtype(_KEY_DTYPES[size])
    mode = {"u": _UNSIGNED, "i": _SIGNED, "f": _FLOAT}[dtype.kind]
    bits = 8 * size
    consts = np.array(
        [0, 1, 1 << (bits - 1), (1 << bits) - 1, _EXPONENT_MASKS.get(size, 0), bits - 1],
        dtype=key,
    )
    tile = _tile_pixels(nz, size, n)
    counter_dtype, zblock = _COUNTERS[size]
    out = np.empty((ks.size, n), dtype=key)
    nan_out = np.zeros(n, dtype=np.uint8)
    if n:
        _select_kernel(
            data.view(key),
            mode,
            ks,
            consts,
            tile,
            np.empty(tile, dtype=counter_dtype),
            min(zblock, nz),
            out,
            nan_out,
        )
    return out.view(dtype), (nan_out.view(np.bool_) if mode == _FLOAT else None)


def order_statistics(block: ArrayLike, ks: Sequence[int], axis: int = 0) -> NDArray[Any]:
    """Return the k-th smallest values along an axis, exactly, for several k.

    Parameters
    ----------
    block : array_like
        Input of shape (..., Z, ...) with an 8/16/32/64-bit integer or float16/32/64 dtype.
    ks : sequence of int
        0-based ranks along `axis`, each in [-Z, Z) (negative ranks count from the largest).
    axis : int, optional
        The reduced axis; 0 with C-contiguous data is the fast path.

    Returns
    -------
    ndarray
        Shape ``(len(ks),) + shape without axis`` and the input dtype:
        ``np.sort(block, axis=axis)`` indexed at `ks` along `axis`. NaN sorts last, as in
        ``np.sort``; a -0.0 sorts before a 0.0 (NumPy treats them as equal, in any order).

    Raises
    ------
    TypeError
        If the dtype is bool, complex or another unsupported kind.
    ValueError
        If the axis is empty or a rank is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[3, 9], [1, 7], [2, 8]], dtype=np.uint16)
    >>> order_statistics(a, (0, -1))
    array([[1, 7],
           [3, 9]], dtype=uint16)
    """
    data, rest = _as_columns(block, axis)
    nz = data.shape[0]
    ranks = [operator.index(k) for k in ks]
    bad = [k for k in ranks if not -nz <= k < nz]
    if bad:
        msg = f"ks={tuple(ranks)}: ranks {bad} are out of range for an axis of length {nz}"
        raise ValueError(msg)
    wanted = np.array([k % nz for k in ranks], dtype=np.int64)
    unique, inverse = np.unique(wanted, return_inverse=True)
    values, _ = _select(data, unique.astype(np.int64))
    return values[inverse].reshape((len(ranks), *rest))


def median(block: ArrayLike, axis: int = 0) -> NDArray[Any]:
    """Return the exact median along an axis, equal to ``np.median(block, axis=axis)``.

    Parameters
    ----------
    block : array_like
        Input of shape (..., Z, ...) with an 8/16/32/64-bit integer or float16/32/64 dtype.
    axis : int, optional
        The reduced axis; 0 with C-contiguous data is the fast path (other axes are moved
        and copied first).

    Returns
    -------
    ndarray
        The input shape without `axis` (0-d for 1-d input). dtype as NumPy's: float64 for
        integers, the input dtype for floats. An even count gives the mean of the two middle
        values, computed as ``np.mean`` does (float64 for integers, float32 for float32), so the
        values are bit-equal to NumPy's, zero signs included (NumPy's sum starts from +0.0, so a
        zero median is +0.0). A column holding a NaN gives NaN (NumPy's propagation; the NaN is
        the default quiet NaN rather than NumPy's copy of one input NaN).

    Raises
    ------
    TypeError
        If the dtype is bool, complex or another unsupported kind.
    ValueError
        If the reduced axis has length 0.

    Notes
    -----
    No sort: the kernels bisect the value range of a tile of pixels at once, counting values
    below the pivot with SIMD (see the module docstring). Overflow to inf in the float mean
    (e.g. two float32 values near the maximum) and inf - inf give inf / NaN as in NumPy,
    without NumPy's RuntimeWarning.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[1, 10], [4, 20], [2, 30], [3, 40]], dtype=np.uint8)
    >>> median(a)
    array([ 2.5, 25. ])
    >>> median(np.array([[1.0, np.nan], [2.0, 0.0], [5.0, 1.0]], dtype=np.float32), axis=0)
    array([ 2., nan], dtype=float32)
    """
    data, rest = _as_columns(block, axis)
    nz = data.shape[0]
    dtype = data.dtype
    work = data.astype(np.float32) if dtype == np.float16 else data
    ranks = np.array(sorted({(nz - 1) // 2, nz // 2}), dtype=np.int64)
    values, nan = _select(work, ranks)
    # np.mean of the middle value(s) as numpy/_core/_methods.py computes it: np.add.reduce from
    # +0.0 (so -0.0 comes out as 0.0) in float64 (integers) or float32 (float16 and float32),
    # then true division by the count
    sum_dtype = np.float64 if dtype.kind in "ui" else work.dtype
    result: NDArray[Any] = np.zeros(values.shape[1], dtype=sum_dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        for middle in values:
            np.add(result, middle, out=result, casting="unsafe")
        if nz % 2 == 0:
            np.true_divide(result, np.intp(2), out=result, casting="unsafe")
    if dtype == np.float16:
        result = result.astype(np.float16)
    if nan is not None:
        result[nan] = np.nan
    return result.reshape(rest)


def percentile(block: ArrayLike, q: float, axis: int = 0) -> NDArray[Any]:
    """Return the q-th percentile along an axis, equal to ``np.percentile(block, q, axis=axis)``.

    Parameters
    ----------
    block : array_like
        Input of shape (..., Z, ...) with an 8/16/32/64-bit integer or float16/32/64 dtype.
    q : float
        Percentile in [0, 100]; converted to a Python float, so the result is that of NumPy
        called with ``float(q)``.
    axis : int, optional
        The reduced axis; 0 with C-contiguous data is the fast path.

    Returns
    -------
    ndarray
        The input shape without `axis`; float64 for integer input, the input dtype for floats.
        NumPy's default 'linear' method: the two neighbouring order statistics are interpolated
        with NumPy's own ``_lerp`` formula (``a + (b - a) * t``, or ``b - (b - a) * (1 - t)``
        when ``t >= 0.5``) in the same dtypes, so results are bit-equal to NumPy's (the tests
        check exact equality for every dtype). A column holding a NaN gives NaN. One exception:
        -0.0 sorts before 0.0 here, while NumPy's partition leaves tied zeros in any order, so a
        zero result interpolated between zeros of both signs may carry the other sign.

    Raises
    ------
    TypeError
        If the dtype is bool, complex or another unsupported kind.
    ValueError
        If `q` is outside [0, 100] (or NaN), or the reduced axis has length 0.

    Notes
    -----
    One deliberate difference: NumPy computes ``b - a`` in the input dtype, which wraps for
    signed integers whose two neighbours are more than the dtype's max apart (e.g. int8 -100 and
    100, giving a value outside [a, b]); here the difference is exact, so the result is NumPy's
    on the same data cast to int64 (or to Python ints, for int64).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]], dtype=np.uint16)
    >>> percentile(a, 90)
    array([ 4.6, 46. ])
    >>> percentile(a, 0)
    array([ 1., 10.])
    """
    if not isinstance(q, int | float | np.integer | np.floating) or isinstance(q, bool):
        msg = f"q must be a real number in [0, 100], got q={q!r}"
        raise TypeError(msg)
    qf = float(q)
    if not 0.0 <= qf <= 100.0:
        msg = f"q must be in [0, 100], got q={q!r}"
        raise ValueError(msg)
    data, rest = _as_columns(block, axis)
    nz = data.shape[0]
    # numpy's 'linear' method (numpy/lib/_function_base_impl.py: _quantile, _get_indexes, _lerp)
    virtual = (nz - 1) * (qf / 100)
    if virtual >= nz - 1:  # numpy takes index -1 twice, and gamma = virtual - (-1)
        i = j = nz - 1
        gamma = virtual + 1.0
    else:
        i = math.floor(virtual)
        j = i + 1
        gamma = virtual - i
    ranks = np.array(sorted({i, j}), dtype=np.int64)
    values, nan = _select(data, ranks)
    a, b = values[0], values[-1]
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, float overflow: as numpy
        if data.dtype.kind == "i":  # exact b - a, where numpy's would wrap in the input dtype
            diff: NDArray[Any] = (
                b.astype(np.int64) - a.astype(np.int64)
                if data.dtype.itemsize < 8
                else b.view(np.uint64) - a.view(np.uint64)
            )
        else:
            diff = b - a
        result = np.subtract(b, diff * (1 - gamma)) if gamma >= 0.5 else np.add(a, diff * gamma)
    if nan is not None:
        result[nan] = np.nan
    return np.asarray(result).reshape(rest)


#: Pixel types compiled ahead by :func:`compile_all` (``make install`` runs it).
PRECOMPILED: Final = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def compile_all() -> None:
    """Compile the kernels for every type of `PRECOMPILED` into numba's on-disk cache.

    Run once after installing (``make install`` and ``make demo`` do), so that a user's first
    median does not spend seconds compiling. Later processes load the cached machine code.
    """
    for name in PRECOMPILED:
        block = np.arange(3 * 70, dtype=name).reshape(3, 70)
        median(block)
        percentile(block, 90.0)


if __name__ == "__main__":  # python -m zchunk.ops._kernels
    compile_all()
