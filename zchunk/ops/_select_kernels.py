"""The compiled loops of :mod:`zchunk.ops._kernels`: exact order statistics by bisecting keys.

The algorithm is explained in :mod:`zchunk.ops._kernels` (the Python front end, which picks the
key type and tile size and calls :func:`select_kernel`). Every array holding keys has the
unsigned key dtype; `consts` holds, in that dtype, [0, 1, sign bit, all ones, float exponent
mask, bit width - 1] so that no arithmetic mixes uint64 with signed literals (numba would go
through float64). Inner loops run over pixels, are branch-free and vectorise; `mode` branches
only outside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np
from numba import njit

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = ["FLOAT", "SIGNED", "UNSIGNED", "select_kernel"]

#: `mode` of the kernels: how values map to order-preserving unsigned keys
UNSIGNED: Final = 0
SIGNED: Final = 1
FLOAT: Final = 2
_UNSIGNED: Final = UNSIGNED
_SIGNED: Final = SIGNED
_FLOAT: Final = FLOAT


def _jit[F: Callable[..., Any]](func: F) -> F:
    """Compile `func` with numba: serial, GIL released, strict IEEE maths, cached on disk."""
    return cast("F", njit(nogil=True, cache=True, fastmath=False)(func))


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


select_kernel = _select_kernel
