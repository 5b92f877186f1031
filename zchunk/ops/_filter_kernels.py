"""Compiled float32 passes of separable filters: along y and x in a plane, along z over a ring.

Every linear filter zchunk has (gaussian, its derivatives, uniform, sobel, prewitt, laplace) is
a sum of *terms*, each a sequence of 1-D correlations along z, y and x in the order
``scipy.ndimage`` applies them. These kernels are those 1-D correlations, with scipy's borders
(``reflect``, ``mirror``, ``nearest``, ``constant``: the index maps of :func:`_source`, periodic
for lines shorter than the kernel, as scipy's ``NI_ExtendLine`` extends them).

- :func:`correlate_y` and :func:`correlate_x`: one pass along the rows / columns of a plane.
  :func:`correlate_yx` runs both row by row: the y-filtered row goes straight into the padded
  line of the x pass, so a row passes through both while it is in L1.
- :func:`correlate_z`: output plane k as the weighted sum of the planes k-r..k+r of a ring
  (slots chosen by the caller with :func:`plane_sources`), row by row.
- :func:`add_squares` and :func:`sqrt_into`: the gradient magnitude of several terms, squares
  summed in float64 (no overflow, no loss) and rounded once to float32.

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

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = [
    "MODE_CODES",
    "add_squares",
    "correlate_x",
    "correlate_y",
    "correlate_yx",
    "correlate_z",
    "correlate_z_group",
    "plane_sources",
    "sqrt_into",
    "store_rounded",
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
    """o[x] = sum_k w[k] * line[x + k] (line padded: len(o) + len(w) - 1)."""
    width = o.size
    w0 = w[0]
    for x in range(width):
        o[x] = w0 * line[x]
    for k in range(1, w.size):
        wk = w[k]
        for x in range(width):
            o[x] += wk * line[x + k]


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
    """o[x] = sum_k w[k] * src[y + k - left, x], rows extended by the mode."""
    height, width = src.shape
    for x in range(width):
        o[x] = 0.0
    for k in range(w.size):
        j = _source(y + k - left, height, mode)
        wk = w[k]
        if j < 0:
            c = np.float32(wk * np.float32(cval))
            for x in range(width):
                o[x] += c
        else:
            s = src[j]
            for x in range(width):
                o[x] += wk * np.float32(s[x])


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
    for y in range(height):
        s = src[y]
        for x in range(width):
            line[left + x] = s[x]
        _x_row(line, w, left, mode, cval, out[y])


@_jit
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
    height, width = src.shape
    line = np.empty(width + wx.size - 1, dtype=np.float32)
    for y in range(height):
        _y_row(src, y, wy, left_y, mode, cval, line[left_x : left_x + width])
        _x_row(line, wx, left_x, mode, cval, out[y])


@_jit
def correlate_z(
    ring: NDArray[Any],
    slots: NDArray[np.int64],
    w: NDArray[np.float32],
    cval: float,
    out: NDArray[np.float32],
) -> None:
    """``out = sum_k w[k] * ring[slots[k]]`` (``cval`` where ``slots[k] < 0``), row by row."""
    height, width = out.shape
    for y in range(height):
        o = out[y]
        for x in range(width):
            o[x] = 0.0
        for k in range(w.size):
            wk = w[k]
            s = slots[k]
            if s < 0:
                c = np.float32(wk * np.float32(cval))
                for x in range(width):
                    o[x] += c
            else:
                r = ring[s, y]
                for x in range(width):
                    o[x] += wk * np.float32(r[x])


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

    Each source row is loaded once for all the outputs that use it (a group of B outputs of a
    (2r+1)-tap kernel loads 2r+B rows instead of B(2r+1)).
    `used[b, s]` says whether source s is in output b's window (a weight of 0 inside the
    window still multiplies, as in scipy: 0 * inf is NaN).
    """
    nb, height, width = out.shape
    ns = slots.size
    for y in range(height):
        for b in range(nb):
            o = out[b, y]
            c = const[b]
            for x in range(width):
                o[x] = c
        for s in range(ns):
            r = ring[slots[s], y]
            for b in range(nb):
                if used[b, s]:
                    cb = coef[b, s]
                    o = out[b, y]
                    for x in range(width):
                        o[x] += cb * np.float32(r[x])


@_jit
def _store_rounded32(
    src: NDArray[np.float32], r0: int, c0: int, lo: float, hi: float, out: NDArray[Any]
) -> None:
    height, width = out.shape
    low = np.float32(lo)
    high = np.float32(hi)
    magic = np.float32(1.5 * 2**23)  # v + magic - magic rounds |v| < 2**22 half to even
    for y in range(height):
        s = src[r0 + y]
        o = out[y]
        for x in range(width):
            v = s[c0 + x]
            v = max(v, low)
            v = min(v, high)
            v = np.float32(0.0) if np.isnan(v) else v
            o[x] = (v + magic) - magic


@_jit
def _store_rounded64(
    src: NDArray[np.float64], r0: int, c0: int, lo: float, hi: float, out: NDArray[Any]
) -> None:
    height, width = out.shape
    magic = 1.5 * 2.0**52  # v + magic - magic rounds |v| < 2**51 half to even
    for y in range(height):
        s = src[r0 + y]
        o = out[y]
        for x in range(width):
            v = s[c0 + x]
            v = max(v, lo)
            v = min(v, hi)
            v = 0.0 if np.isnan(v) else v
            o[x] = (v + magic) - magic


def store_rounded(
    src: NDArray[Any], r0: int, c0: int, lo: float, hi: float, out: NDArray[Any]
) -> None:
    """``out = clip(rint(src[r0:, c0:]), lo, hi)`` cast to out's integer dtype; NaN gives 0.

    float32 `src` for 8- and 16-bit targets, float64 for targets up to 32 bits (the bounds
    are then exact in `src`'s type, and so is the rounding).
    :func:`zchunk.ops.projection.cast_rounded` on a plane, without temporaries.
    """
    if src.dtype == np.float64:
        _store_rounded64(src, r0, c0, lo, hi, out)
    else:
        _store_rounded32(src, r0, c0, lo, hi, out)


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
