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

The numba kernels are serial, release the GIL (dask threads run tiles in parallel), compile lazily
once per key width (uint8/16/32/64) and are cached on disk.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np
from numba import njit
from numpy.lib.array_utils import normalize_axis_index

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike, NDArray

__all__ = ["median", "order_statistics", "percentile"]

# Bytes of the per-tile key buffer (Z * P * itemsize): half of a 1 MiB L2. Bigger tiles mean longer
# SIMD runs per row (less loop overhead), which matters for large Z; measured on an AMD EPYC.
_TILE_BYTES: Final = 512 * 1024
_MIN_TILE: Final = 64  # pixels; a multiple of every SIMD width
_MAX_TILE: Final = 2048  # keeps the per-pixel state (lo, hi, mid, counts) in L1

_UNSIGNED: Final = 0
_SIGNED: Final = 1
_FLOAT: Final = 2

# key dtype by item size, and the narrow counter dtype with its largest safe run of z
_KEY_DTYPES: Final = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_COUNTERS: Final = {
    1: (np.uint8, 255),
    2: (np.uint16, 65535),
    4: (np.uint32, 2**32 - 1),
    8: (np.uint32, 2**32 - 1),
}
_EXPONENT_MASKS: Final = {4: 0x7F80_0000, 8: 0x7FF0_0000_0000_0000}


def _jit[F: Callable[..., Any]](func: F) -> F:
    """Compile `func` with numba: serial, GIL released, strict IEEE maths, cached on disk."""
    return cast("F", njit(nogil=True, cache=True, fastmath=False)(func))


# --------------------------------------------------------------------------------------------
# numba kernels. Every array holding keys has the unsigned key dtype; `consts` holds, in that
# dtype, [0, 1, sign bit, all ones, float exponent mask, bit width - 1] so that no arithmetic mixes
# uint64 with signed literals (numba would go through float64). Inner loops run over pixels, are
# branch-free and vectorise; `mode` branches only outside them.
# --------------------------------------------------------------------------------------------


@_jit
def _load_tile(
    src: NDArray[Any],
    t0: int,
    npx: int,
    mode: int,
    consts: NDArray[Any],
    buf: NDArray[Any],
    lo: NDArray[Any],
    hi: NDArray[Any],
    nanf: NDArray[np.uint8],
) -> None:
    """Copy src[:, t0:t0+npx] as keys into buf[:, :npx]; per-pixel min/max keys and NaN flags."""
    zero = consts[0]
    signbit = consts[2]
    allones = consts[3]
    expmask = consts[4]
    shift = consts[5]
    absmask = allones ^ signbit
    for p in range(npx):
        lo[p] = allones
        hi[p] = zero
        nanf[p] = 0
    for z in range(src.shape[0]):
        s = src[z, t0 : t0 + npx]
        b = buf[z]
        if mode == _UNSIGNED:
            for p in range(npx):
                x = s[p]
                b[p] = x
                lo[p] = min(lo[p], x)
                hi[p] = max(hi[p], x)
        elif mode == _SIGNED:
            for p in range(npx):
                key = s[p] ^ signbit
                b[p] = key
                lo[p] = min(lo[p], key)
                hi[p] = max(hi[p], key)
        else:
            for p in range(npx):
                x = s[p]
                # negative: all bits flipped; positive: sign bit set. NaN (any sign) -> top key.
                # (numba computes in 64 bits: `& allones` truncates before the min/max)
                isnan = (x & absmask) > expmask
                key = allones if isnan else (x ^ ((zero - (x >> shift)) | signbit)) & allones
                b[p] = key
                nanf[p] |= isnan
                lo[p] = min(lo[p], key)
                hi[p] = max(hi[p], key)


@_jit
def _count_le(
    buf: NDArray[Any],
    thr: NDArray[Any],
    npx: int,
    zblock: int,
    cnt: NDArray[Any],
    total: NDArray[np.int64],
) -> None:
    """total[p] = number of z with buf[z, p] <= thr[p], for p < npx."""
    nz = buf.shape[0]
    for p in range(npx):
        total[p] = 0
    for z0 in range(0, nz, zblock):
        for p in range(npx):
            cnt[p] = 0
        z1 = min(nz, z0 + zblock)
        z = z0
        while z + 4 <= z1:  # four rows per pass over the counters: fewer loads and stores
            b0 = buf[z]
            b1 = buf[z + 1]
            b2 = buf[z + 2]
            b3 = buf[z + 3]
            for p in range(npx):
                t = thr[p]
                cnt[p] += (b0[p] <= t) + (b1[p] <= t) + (b2[p] <= t) + (b3[p] <= t)
            z += 4
        for zz in range(z, z1):
            b = buf[zz]
            for p in range(npx):
                cnt[p] += b[p] <= thr[p]
        for p in range(npx):
            total[p] += cnt[p]


@_jit
def _next_key(
    buf: NDArray[Any],
    v: NDArray[Any],
    k: int,
    npx: int,
    zblock: int,
    allones: Any,
    cnt: NDArray[Any],
    total: NDArray[np.int64],
    nxt: NDArray[Any],
) -> None:
    """nxt[p] = (k+1)-th smallest key of pixel p (0-based), given v[p], its k-th smallest."""
    nz = buf.shape[0]
    for p in range(npx):
        total[p] = 0
        nxt[p] = allones
    for z0 in range(0, nz, zblock):
        for p in range(npx):
            cnt[p] = 0
        for z in range(z0, min(nz, z0 + zblock)):
            b = buf[z]
            for p in range(npx):
                x = b[p]
                le = x <= v[p]
                cnt[p] += le
                nxt[p] = min(nxt[p], allones if le else x)
        for p in range(npx):
            total[p] += cnt[p]
    for p in range(npx):
        # at least k+2 keys <= v: the (k+1)-th is v too; else it is the smallest key above v
        nxt[p] = v[p] if total[p] > k + 1 else nxt[p]


@_jit
def _bisect(
    buf: NDArray[Any],
    k: int,
    npx: int,
    zblock: int,
    consts: NDArray[Any],
    lo: NDArray[Any],
    hi: NDArray[Any],
    mid: NDArray[Any],
    cnt: NDArray[Any],
    total: NDArray[np.int64],
) -> None:
    """Narrow [lo[p], hi[p]] (which holds the k-th smallest key) to lo[p] == hi[p] == it."""
    zero = consts[0]
    one = consts[1]
    width = hi[0] - hi[0]
    for p in range(npx):
        width = max(width, hi[p] - lo[p])
    rounds = 0
    while width > zero:
        width = width >> one
        rounds += 1
    for _ in range(rounds):
        for p in range(npx):
            mid[p] = lo[p] + ((hi[p] - lo[p]) >> one)
        _count_le(buf, mid, npx, zblock, cnt, total)
        for p in range(npx):
            m = mid[p]
            ge = total[p] > k
            hi[p] = m if ge else hi[p]
            lo[p] = lo[p] if ge else m + one


@_jit
def _select_kernel(
    src: NDArray[Any],
    mode: int,
    ks: NDArray[np.int64],
    consts: NDArray[Any],
    tile: int,
    counter: NDArray[Any],
    zblock: int,
    out: NDArray[Any],
    nan_out: NDArray[np.uint8],
) -> None:
    """out[i, n] = ks[i]-th smallest of src[:, n] (value bits); nan_out[n] = column has NaN.

    `src` is (Z, N) C-contiguous with the unsigned dtype of the input's item size (a view of the
    input bits), `ks` sorted and unique in [0, Z), `counter` a (tile,) array of the narrow count
    dtype, `out` (len(ks), N) of src's dtype.
    """
    nz, n = src.shape
    zero = consts[0]
    one = consts[1]
    signbit = consts[2]
    allones = consts[3]
    shift = consts[5]
    buf = np.empty((nz, tile), dtype=src.dtype)
    tmin = np.empty(tile, dtype=src.dtype)
    tmax = np.empty(tile, dtype=src.dtype)
    lo = np.empty(tile, dtype=src.dtype)
    hi = np.empty(tile, dtype=src.dtype)
    mid = np.empty(tile, dtype=src.dtype)
    nxt = np.empty(tile, dtype=src.dtype)
    cnt = np.empty_like(counter)
    total = np.empty(tile, dtype=np.int64)
    nanf = np.empty(tile, dtype=np.uint8)
    for t0 in range(0, n, tile):
        npx = min(tile, n - t0)
        _load_tile(src, t0, npx, mode, consts, buf, tmin, tmax, nanf)
        have_next = False
        for i in range(ks.size):
            k = ks[i]
            if have_next:  # ks[i] == ks[i-1] + 1, found by _next_key below
                for p in range(npx):
                    lo[p] = nxt[p]
            else:
                start = i > 0  # ks ascend, so the previous answer bounds this one from below
                for p in range(npx):
                    lo[p] = lo[p] if start else tmin[p]
                    hi[p] = tmax[p]
                _bisect(buf, k, npx, zblock, consts, lo, hi, mid, cnt, total)
            have_next = i + 1 < ks.size and ks[i + 1] == k + 1
            if have_next:
                _next_key(buf, lo, k, npx, zblock, allones, cnt, total, nxt)
            o = out[i, t0 : t0 + npx]
            if mode == _UNSIGNED:
                for p in range(npx):
                    o[p] = lo[p]
            elif mode == _SIGNED:
                for p in range(npx):
                    o[p] = lo[p] ^ signbit
            else:
                for p in range(npx):
                    key = lo[p]
                    o[p] = key ^ (signbit | (zero - (one ^ (key >> shift))))
        for p in range(npx):
            nan_out[t0 + p] = nanf[p]


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
