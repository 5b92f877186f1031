"""Compiled float32 passes of separable filters: along y and x in a plane, along z over a ring.

Every linear filter zchunk has (gaussian, its derivatives, uniform, sobel, prewitt, laplace) is
a sum of *terms*, each a sequence of 1-D correlations along z, y and x in the order
``scipy.ndimage`` applies them. These kernels are those 1-D correlations, with scipy's borders
(``reflect``, ``mirror``, ``nearest``, ``constant``: the index maps of :func:`_source`, periodic
for lines shorter than the kernel, as scipy's ``NI_ExtendLine`` extends them).

- :func:`correlate_y` and :func:`correlate_x`: one pass along the rows / columns of a plane.
  :func:`correlate_yx` runs both row by row: the y-filtered row goes straight into the padded
  line of the x pass, so a row passes through both while it is in L1.
- :func:`correlate_z_group`: output planes k.. as weighted sums of the planes k-r..k+r of a
  ring (slots chosen by the caller with :func:`plane_sources`), row by row.
- :func:`correlate_yx_store`: the last pass of a filter, each row rounded into the output
  block as it is finished (with the row kernel of :mod:`zchunk.ops._round_kernels`).

Terms are combined (sums, magnitudes) by :mod:`zchunk.ops._combine_kernels`.

Arithmetic is float32, accumulated tap by tap in scipy's order with the taps in the innermost
position of the loop over x: every inner loop is a branch-free ``out[x] += w * src[x]`` that
LLVM vectorises (AVX-512 here). ``fastmath`` is limited to ``contract`` (fused multiply-add):
it changes a result by less than float32 rounding and allows no reordering of sums, so results
do not depend on the vector width. The kernels release the GIL, so dask's threads filter
bands in parallel, and are compiled once for float32 and cached on disk.

Why numba and not OpenCV: ``cv2.sepFilter2D`` (opencv-python-headless 5.0.0, float32,
``BORDER_REFLECT``, ``cv2.setNumThreads(1)``) and :func:`correlate_yx` were timed on one thread
on the same 512 x 2048 float32 plane with 17 taps along y and x (a gaussian of sigma 2), on the
project's 2-core AMD EPYC (AVX-512), interleaved, median of 15 calls, three rounds on a machine
shared with other jobs: numba 447-480 Mpixel/s, OpenCV 342-376 Mpixel/s,
``scipy.ndimage.gaussian_filter`` (float32) 36-55 Mpixel/s; both agree with scipy's float64
result to 2.2e-7 of the data range (``benchmarks/bench_kernel.py``, ``benchmarks/RESULTS.md``).
numba is faster, gives scipy's four modes exactly (OpenCV pads a plane shorter than the kernel
otherwise, and has no mode for a z ring), runs the z pass, derivatives and scipy's pass orders
with one code path, and adds no dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np
from numba import njit

from zchunk.ops._round_kernels import store_row as _store_row

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = [
    "MODE_CODES",
    "correlate_x",
    "correlate_y",
    "correlate_yx",
    "correlate_yx_store",
    "correlate_z_group",
    "plane_sources",
]

#: scipy's mode names -> the codes the kernels take
MODE_CODES: Final = {"reflect": 0, "mirror": 1, "nearest": 2, "constant": 3}
_REFLECT: Final = 0
_MIRROR: Final = 1
_NEAREST: Final = 2


def _jit[F: Callable[..., Any]](func: F) -> F:
    """Compile `func` with numba: serial, GIL released, FMA allowed, no reordering."""
    return cast("F", njit(nogil=True, cache=True, fastmath={"contract"})(func))


@_jit
def _source(i: int, n: int, mode: int) -> int:
    """Index of the line element that position `i` of the extended line holds; -1 for cval.

    reflect: d c b a | a b c d | d c b a (period 2n); mirror: d c b | a b c d | c b a (period
    2n - 2, a line of one element repeats it); nearest: a a | a b c d | d d; constant: -1.
    """
    if 0 <= i < n:
        return i
    if mode == _NEAREST:
        return 0 if i < 0 else n - 1
    if mode == _REFLECT:
        period = 2 * n
        j = i % period
        return j if j < n else period - 1 - j
    if mode == _MIRROR:
        if n == 1:
            return 0
        period = 2 * n - 2
        j = i % period
        return j if j < n else period - j
    return -1


@_jit
def _source_array(start: int, count: int, n: int, mode: int, out: NDArray[np.int64]) -> None:
    for k in range(count):
        out[k] = _source(start + k, n, mode)


def plane_sources(k: int, left: int, taps: int, n: int, mode: str) -> NDArray[np.int64]:
    """Planes (indices in [0, n), or -1 for cval) that taps 0..taps-1 of output plane k read.

    Examples
    --------
    >>> plane_sources(0, 2, 5, 4, "reflect").tolist(), plane_sources(3, 1, 3, 4, "mirror").tolist()
    ([1, 0, 0, 1, 2], [2, 3, 2])
    """
    out = np.empty(taps, dtype=np.int64)
    _source_array(k - left, taps, n, MODE_CODES[mode], out)
    return out


@_jit
def _pad_line(line: NDArray[np.float32], left: int, right: int, mode: int, cval: float) -> None:
    """Fill ``line[:left]`` and ``line[left+n:]`` (n = len - left - right) by the mode."""
    n = line.size - left - right
    for i in range(left):
        j = _source(i - left, n, mode)
        line[i] = cval if j < 0 else line[left + j]
    for i in range(left + n, line.size):
        j = _source(i - left, n, mode)
        line[i] = cval if j < 0 else line[left + j]


@_jit
def _x_pass(line: NDArray[np.float32], w: NDArray[np.float32], o: NDArray[np.float32]) -> None:
    """o[x] = sum_k w[k] * line[x + k] (line padded: len(o) + len(w) - 1).

    Taps are added in order, eight per sweep over the row (then one): ``o[x]`` stays in a
    register between them instead of a load and a store per tap, and the sums are those of
    one tap at a time. (Each sweep reads a slice ``line[k:]`` at indices ``x + i``, known
    non-negative: an index ``x + k`` with a ``k`` of unknown sign costs a wraparound check
    per element, which stops vectorisation.)
    """
    width = o.size
    n = w.size
    w0 = w[0]
    for x in range(width):
        o[x] = w0 * line[x]
    k = 1
    for _ in range((n - 1) // 8):
        a, b, c, d = w[k], w[k + 1], w[k + 2], w[k + 3]
        e, f, g, h = w[k + 4], w[k + 5], w[k + 6], w[k + 7]
        s = line[k:]
        for x in range(width):
            v = o[x] + a * s[x]
            v = v + b * s[x + 1]
            v = v + c * s[x + 2]
            v = v + d * s[x + 3]
            v = v + e * s[x + 4]
            v = v + f * s[x + 5]
            v = v + g * s[x + 6]
            o[x] = v + h * s[x + 7]
        k += 8
    for j in range(k, n):
        a = w[j]
        s = line[j:]
        for x in range(width):
            o[x] += a * s[x]


@_jit
def _x_row(
    line: NDArray[np.float32],
    w: NDArray[np.float32],
    left: int,
    mode: int,
    cval: float,
    o: NDArray[np.float32],
) -> None:
    """Correlate a row along x: `line` holds it after `left` slots; they are padded first."""
    _pad_line(line, left, w.size - 1 - left, mode, cval)
    _x_pass(line, w, o)


@_jit
def _y_row(
    src: NDArray[Any],
    y: int,
    w: NDArray[np.float32],
    left: int,
    mode: int,
    cval: float,
    o: NDArray[np.float32],
) -> None:
    """o[x] = sum_k w[k] * src[y + k - left, x], rows extended by the mode.

    Taps in order, four rows per sweep when none of them is a cval row (see :func:`_x_pass`).
    """
    height, width = src.shape
    n = w.size
    for x in range(width):
        o[x] = 0.0
    k = 0
    while k < n:
        j = _source(y + k - left, height, mode)
        if k + 4 <= n and j >= 0:
            j1 = _source(y + k + 1 - left, height, mode)
            j2 = _source(y + k + 2 - left, height, mode)
            j3 = _source(y + k + 3 - left, height, mode)
            if j1 >= 0 and j2 >= 0 and j3 >= 0:
                a, b, c, d = w[k], w[k + 1], w[k + 2], w[k + 3]
                s0, s1, s2, s3 = src[j], src[j1], src[j2], src[j3]
                for x in range(width):
                    v = o[x] + a * np.float32(s0[x])
                    v = v + b * np.float32(s1[x])
                    v = v + c * np.float32(s2[x])
                    o[x] = v + d * np.float32(s3[x])
                k += 4
                continue
        wk = w[k]
        if j < 0:
            c = np.float32(wk * np.float32(cval))
            for x in range(width):
                o[x] += c
        else:
            s = src[j]
            for x in range(width):
                o[x] += wk * np.float32(s[x])
        k += 1


@_jit
def correlate_y(
    src: NDArray[Any],
    w: NDArray[np.float32],
    left: int,
    mode: int,
    cval: float,
    out: NDArray[np.float32],
) -> None:
    """``out = scipy.ndimage.correlate1d(src, w, axis=0, ...)`` in float32, rows in order."""
    for y in range(src.shape[0]):
        _y_row(src, y, w, left, mode, cval, out[y])


@_jit
def correlate_x(
    src: NDArray[Any],
    w: NDArray[np.float32],
    left: int,
    mode: int,
    cval: float,
    out: NDArray[np.float32],
) -> None:
    """``out = scipy.ndimage.correlate1d(src, w, axis=1, ...)`` in float32."""
    height, width = src.shape
    line = np.empty(width + w.size - 1, dtype=np.float32)
    body = line[left:]  # indexed by x >= 0 only: no wraparound check, vectorised
    for y in range(height):
        s = src[y]
        for x in range(width):
            body[x] = s[x]
        _x_row(line, w, left, mode, cval, out[y])


@_jit
def correlate_z_group(
    ring: NDArray[Any],
    slots: NDArray[np.int64],
    coef: NDArray[np.float32],
    used: NDArray[np.uint8],
    const: NDArray[np.float32],
    out: NDArray[np.float32],
) -> None:
    """Several output planes of a z pass at once: ``out[b] = const[b] + sum_s coef[b, s] * ring[slots[s]]``.

    Row by row, the outputs of a group read the same few ring rows while they are in cache
    (a group of B outputs of a (2r+1)-tap kernel reads 2r+B rows instead of B(2r+1)); each
    output adds its sources in order, four per sweep over the row (see :func:`_x_pass`).
    `used[b, s]` says whether source s is in output b's window (a weight of 0 inside the
    window still multiplies, as in scipy: 0 * inf is NaN).
    """
    nb, height, width = out.shape
    ns = slots.size
    order = np.empty((nb, ns), np.int64)
    count = np.zeros(nb, np.int64)
    for b in range(nb):
        for s in range(ns):
            if used[b, s]:
                order[b, count[b]] = s
                count[b] += 1
    for y in range(height):
        for b in range(nb):
            o = out[b, y]
            c = const[b]
            for x in range(width):
                o[x] = c
            m = count[b]
            i = 0
            while i + 4 <= m:
                s0, s1, s2, s3 = order[b, i], order[b, i + 1], order[b, i + 2], order[b, i + 3]
                c0, c1, c2, c3 = coef[b, s0], coef[b, s1], coef[b, s2], coef[b, s3]
                r0, r1 = ring[slots[s0], y], ring[slots[s1], y]
                r2, r3 = ring[slots[s2], y], ring[slots[s3], y]
                for x in range(width):
                    v = o[x] + c0 * np.float32(r0[x])
                    v = v + c1 * np.float32(r1[x])
                    v = v + c2 * np.float32(r2[x])
                    o[x] = v + c3 * np.float32(r3[x])
                i += 4
            while i < m:
                s = order[b, i]
                cb = coef[b, s]
                r = ring[slots[s], y]
                for x in range(width):
                    o[x] += cb * np.float32(r[x])
                i += 1


@_jit
def correlate_yx_store(
    src: NDArray[Any],
    wy: NDArray[np.float32],
    left_y: int,
    wx: NDArray[np.float32],
    left_x: int,
    mode: int,
    cval: float,
    r0: int,
    c0: int,
    bounds: NDArray[Any],
    rounding: bool,
    out: NDArray[Any],
) -> None:
    """Rows ``r0 ..`` and columns ``c0 ..`` of :func:`correlate_yx`, stored into `out` as it goes.

    Only the rows `out` keeps are computed (the rows of a halo are read, not filtered), and
    each row is rounded (`rounding`, see :func:`_store_row`) or cast into `out` while in L1.
    """
    width = src.shape[1]
    line = np.empty(width + wx.size - 1, dtype=np.float32)
    row = np.empty(width, dtype=np.float32)
    for y in range(out.shape[0]):
        _y_row(src, r0 + y, wy, left_y, mode, cval, line[left_x : left_x + width])
        _x_row(line, wx, left_x, mode, cval, row)
        _store_row(row, c0, bounds, rounding, out[y])


def correlate_yx(
    src: NDArray[Any],
    wy: NDArray[np.float32],
    left_y: int,
    wx: NDArray[np.float32],
    left_x: int,
    mode: int,
    cval: float,
    out: NDArray[np.float32],
) -> None:
    """Correlate along y then along x, row by row (the row stays in L1 between the two)."""
    correlate_yx_store(src, wy, left_y, wx, left_x, mode, cval, 0, 0, _NO_BOUNDS, False, out)


_NO_BOUNDS: Final = np.zeros(2, np.float32)
