"""Running minimum and maximum filters (van Herk / Gil-Werman), streamed plane by plane.

A minimum (maximum) over a box is separable and exact in any order: the 1-D minimum along z
of the 1-D minima along y and x, with scipy's borders (constant borders too: the minimum of a
window that crosses the border includes ``cval`` whichever pass sees the crossing). So
:class:`MinMaxFilter` takes each incoming plane through the y and x passes, keeps a ring of
``size_z`` filtered planes, and emits output plane k once plane ``k + size_z // 2`` arrived
as the minimum of its ring slots, as the linear filters stream (:mod:`zchunk.ops._separable`).

The y and x passes are van Herk / Gil-Werman running minima: the extended line (borders by
the mode) is cut into blocks of `size`; ``g`` holds the minimum from each block's start, ``h``
the minimum to its end, and the window starting at p is ``min(h[p], g[p + size - 1])``: three
comparisons per pixel whatever the size. Along y the lines are whole rows, so every step is a
SIMD loop over x. Along x a line is one row, and the scan along it is scalar: for windows up to
:data:`BRUTE_X` wide the direct ``min`` of the shifted row (SIMD over x, ``size - 1``
comparisons for 16 pixels at a time) is faster, so it runs instead (measured on one thread,
a 256 x 2048 uint16 plane: scan 125-160 Mpixel/s at every size, direct 1460 at size 5, 670 at
31, 436 at 63). Along z the window is at most the ring, whose rows are minimised directly (SIMD).

Values are compared in the input dtype, so results are bit-exact with
``scipy.ndimage.minimum_filter``/``maximum_filter`` for data without NaN (scipy's comparisons
skip a NaN in some positions of the window and not in others).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np
from numba import njit

from zchunk.ops._engine import RingEngine
from zchunk.ops._filter_kernels import _source

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = ["BRUTE_X", "MinMaxFilter"]

#: Widest x window minimised directly (SIMD over the row) instead of by the running scan.
BRUTE_X: Final = 64


def _jit[F: Callable[..., Any]](func: F) -> F:
    return cast("F", njit(nogil=True, cache=True)(func))


@_jit
def _pick(a: Any, b: Any, is_max: bool) -> Any:
    return max(a, b) if is_max else min(a, b)


@_jit
def _load_row(src: NDArray[Any], j: int, cval: Any, row: NDArray[Any]) -> None:
    """Copy row `j` of `src` into `row`; `cval` everywhere when j < 0 (mode "constant")."""
    if j < 0:
        for x in range(row.size):
            row[x] = cval
    else:
        s = src[j]
        for x in range(row.size):
            row[x] = s[x]


@_jit
def _minmax_y(
    src: NDArray[Any],
    size: int,
    left: int,
    mode: int,
    cval: Any,
    is_max: bool,
    g: NDArray[Any],
    h: NDArray[Any],
    out: NDArray[Any],
) -> None:
    """out[y] = min of rows y-left .. y-left+size-1 (extended by the mode), van Herk over rows."""
    height, width = src.shape
    n = height + size - 1
    row = np.empty(width, dtype=src.dtype)
    # g: running minimum from each block start, forwards
    for p in range(n):
        _load_row(src, _source(p - left, height, mode), cval, row)
        gp = g[p]
        if p % size == 0:
            for x in range(width):
                gp[x] = row[x]
        else:
            prev = g[p - 1]
            for x in range(width):
                gp[x] = _pick(prev[x], row[x], is_max)
    # h: running minimum to each block end, backwards
    for p in range(n - 1, -1, -1):
        _load_row(src, _source(p - left, height, mode), cval, row)
        hp = h[p]
        if p % size == size - 1 or p == n - 1:
            for x in range(width):
                hp[x] = row[x]
        else:
            nxt = h[p + 1]
            for x in range(width):
                hp[x] = _pick(nxt[x], row[x], is_max)
    for y in range(height):
        a = h[y]
        b = g[y + size - 1]
        o = out[y]
        for x in range(width):
            o[x] = _pick(a[x], b[x], is_max)


@_jit
def _minmax_x(
    src: NDArray[Any],
    size: int,
    left: int,
    mode: int,
    cval: Any,
    is_max: bool,
    brute: int,
    out: NDArray[Any],
) -> None:
    """out[:, x] = min of columns x-left .. x-left+size-1 (extended by the mode)."""
    height, width = src.shape
    n = width + size - 1
    line = np.empty(n, dtype=src.dtype)
    g = np.empty(n, dtype=src.dtype)
    h = np.empty(n, dtype=src.dtype)
    for y in range(height):
        s = src[y]
        body = line[left:]  # indexed by x >= 0 only: no wraparound check, vectorised
        for x in range(width):
            body[x] = s[x]
        for p in range(left):
            j = _source(p - left, width, mode)
            line[p] = cval if j < 0 else s[j]
        for p in range(left + width, n):
            j = _source(p - left, width, mode)
            line[p] = cval if j < 0 else s[j]
        o = out[y]
        if size <= brute:
            for x in range(width):
                o[x] = line[x]
            for k in range(1, size):
                for x in range(width):
                    o[x] = _pick(o[x], line[x + k], is_max)
            continue
        for p in range(n):
            g[p] = line[p] if p % size == 0 else _pick(g[p - 1], line[p], is_max)
        for p in range(n - 1, -1, -1):
            last = p % size == size - 1 or p == n - 1
            h[p] = line[p] if last else _pick(h[p + 1], line[p], is_max)
        for x in range(width):
            o[x] = _pick(h[x], g[x + size - 1], is_max)


@_jit
def _minmax_z(
    ring: NDArray[Any], slots: NDArray[np.int64], cval: Any, is_max: bool, out: NDArray[Any]
) -> None:
    """Out = min over ring[slots[k]] (and cval where a slot is -1), row by row."""
    height, width = out.shape
    use_cval = False
    for k in range(slots.size):
        use_cval = use_cval or slots[k] < 0
    for y in range(height):
        o = out[y]
        first = True
        for k in range(slots.size):
            s = slots[k]
            if s < 0:
                continue
            r = ring[s, y]
            if first:
                for x in range(width):
                    o[x] = r[x]
                first = False
            else:
                for x in range(width):
                    o[x] = _pick(o[x], r[x], is_max)
        if use_cval:
            for x in range(width):
                o[x] = cval if first else _pick(o[x], cval, is_max)


class MinMaxFilter(RingEngine):
    """Minimum or maximum over a (size_z, size_y, size_x) box, streamed along z.

    `sizes` has 3 entries (z, y, x); a per-plane filter has ``size_z == 1``. ``run(planes)``
    yields ``(k, plane)`` in order; the plane is reused.
    """

    def __init__(
        self,
        sizes: tuple[int, int, int],
        mode: str,
        cval: float,
        is_max: bool,
        nz: int,
        shape: tuple[int, int],
        dtype: np.dtype[Any],
    ) -> None:
        super().__init__(sizes, mode, cval, nz, dtype)
        self.is_max = is_max
        height, width = shape
        self.ring = np.empty((self.depth, height, width), dtype)
        self.tmp = np.empty(shape, dtype)
        self.out = np.empty(shape, dtype)
        n = height + self.size_y - 1
        self.g = np.empty((n, width), dtype) if self.size_y > 1 else self.tmp
        self.h = np.empty((n, width), dtype) if self.size_y > 1 else self.tmp

    def _arrive(self, i: int, plane: NDArray[Any]) -> None:
        target = self.ring[i % self.depth]
        source = plane
        if self.size_y > 1:
            dest = self.tmp if self.size_x > 1 else target
            _minmax_y(
                source, self.size_y, self.size_y // 2, self.mode, self.cval, self.is_max,
                self.g, self.h, dest,
            )  # fmt: skip
            source = dest
        if self.size_x > 1:
            _minmax_x(
                source, self.size_x, self.size_x // 2, self.mode, self.cval, self.is_max,
                BRUTE_X, target,
            )  # fmt: skip
        elif source is plane:
            np.copyto(target, plane)

    def _emit(self, k: int) -> NDArray[Any]:
        if self.size_z == 1:
            plane: NDArray[Any] = self.ring[k % self.depth]
            return plane
        _minmax_z(self.ring, self._slots(k), self.cval, self.is_max, self.out)
        return self.out
