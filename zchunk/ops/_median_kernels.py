"""Median filters of small odd windows (3x3, 3x3x3, up to 27 pixels), streamed plane by plane.

:class:`MedianFilter` pads each incoming plane by the mode (y and x), keeps a ring of the last
``size_z`` padded planes, and emits output plane k once plane ``k + size_z // 2`` arrived, as
the other streamed filters do (:mod:`zchunk.ops._separable`, :mod:`zchunk.ops._rank_kernels`).

Each output row is computed by *forgetful selection*, a selection network that needs no sort:
the median of n = 2j + 1 values is found by keeping a working set of j + 2 of them, moving
its smallest to the first slot and its largest to the last with compare-exchanges, dropping
both (the largest of j + 2 values has j + 1 values at or below it, so it can be ranked above
the median, and the smallest below it: dropping one value from each side keeps the median),
and loading the next value into the freed first slot; once every value is loaded the set
holds 3 and their middle is the median. Every step (one pass over the set) is a ``min``/``max`` over a whole row tile
(SIMD over x, branch-free): about 2n^2 / 4 comparisons per pixel (195 compare-exchanges
for 27 values, 24 for 9), and only order comparisons, so the result is the exact order
statistic scipy's ``median_filter`` selects, in the input dtype.

Only 8- to 32-bit integer inputs take this path (a NaN has no place in an order, and scipy
compares int64 in float64): other dtypes and larger windows use scipy's ``median_filter``.
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

__all__ = ["MAX_WINDOW", "MedianFilter"]

#: Most pixels in a window this filter takes (3 x 3 x 3); larger windows use scipy.
MAX_WINDOW: Final = 27
_TILE: Final = 512  # pixels of a row handled at once: the working set stays in L1


def _jit[F: Callable[..., Any]](func: F) -> F:
    return cast("F", njit(nogil=True, cache=True)(func))


@_jit
def _pad(src: NDArray[Any], ry: int, rx: int, mode: int, cval: Any, out: NDArray[Any]) -> None:
    """``out`` = `src` extended by `ry` rows and `rx` columns on each side, by the mode."""
    height, width = src.shape
    for yy in range(height + 2 * ry):
        o = out[yy]
        j = _source(yy - ry, height, mode)
        if j < 0:
            for x in range(o.size):
                o[x] = cval
            continue
        s = src[j]
        body = o[rx:]  # (an index rx + x of unknown sign costs a wraparound check per pixel)
        for x in range(width):
            body[x] = s[x]
        for x in range(rx):
            i = _source(x - rx, width, mode)
            o[x] = cval if i < 0 else s[i]
            i = _source(width + x, width, mode)
            o[rx + width + x] = cval if i < 0 else s[i]


@_jit
def _load(
    ring: NDArray[Any],
    slots: NDArray[np.int64],
    const: NDArray[Any],
    e: int,
    sy: int,
    sx: int,
    y: int,
    x0: int,
    w: NDArray[Any],
) -> None:
    """Load window element `e` (z slot, then dy, then dx) of row `y`, columns x0.. into `w`."""
    t = e // (sy * sx)
    r = e % (sy * sx)
    dy = r // sx
    dx = r % sx
    row = const[y + dy] if slots[t] < 0 else ring[slots[t], y + dy]
    src = row[x0 + dx :]  # indexed by x >= 0 only: numba checks no wraparound, LLVM vectorises
    for x in range(w.size):
        w[x] = src[x]


@_jit
def _median_plane(
    ring: NDArray[Any],
    slots: NDArray[np.int64],
    const: NDArray[Any],
    sy: int,
    sx: int,
    work: NDArray[Any],
    out: NDArray[Any],
) -> None:
    """``out`` = the median of each window of ``ring[slots]`` (padded planes), row by row.

    `slots` are the ring slots of the window's planes, -1 for the constant plane `const`;
    `work` has (n + 3) // 2 rows of at least one tile.
    """
    height, width = out.shape
    n = slots.size * sy * sx
    m = (n + 3) // 2 if n > 1 else 1
    for y in range(height):
        for x0 in range(0, width, _TILE):
            tw = min(_TILE, width - x0)
            for e in range(m):
                _load(ring, slots, const, e, sy, sx, y, x0, work[e, :tw])
            o = out[y, x0 : x0 + tw]
            if n == 1:
                o[:] = work[0, :tw]
                continue
            s = m
            nxt = m
            while True:
                # one pass: the smallest to slot 0, the largest to slot s - 1
                w0 = work[0]
                last = work[s - 1]
                for x in range(tw):
                    a = w0[x]
                    b = last[x]
                    w0[x] = min(a, b)
                    last[x] = max(a, b)
                for i in range(1, s - 1):
                    wi = work[i]
                    for x in range(tw):
                        a = w0[x]
                        b = wi[x]
                        c = last[x]
                        hi = max(a, b)
                        w0[x] = min(a, b)
                        wi[x] = min(hi, c)
                        last[x] = max(hi, c)
                if nxt == n:  # s == 3: the middle one is the median
                    w1 = work[1]
                    for x in range(tw):
                        o[x] = w1[x]
                    break
                _load(ring, slots, const, nxt, sy, sx, y, x0, work[0, :tw])
                nxt += 1
                s -= 1


class MedianFilter(RingEngine):
    """Median over an odd (size_z, size_y, size_x) box of at most 27 pixels, streamed along z.

    ``run(planes)`` yields ``(k, plane)`` in order; the plane is reused.
    """

    def __init__(
        self,
        sizes: tuple[int, int, int],
        mode: str,
        cval: float,
        nz: int,
        shape: tuple[int, int],
        dtype: np.dtype[Any],
    ) -> None:
        super().__init__(sizes, mode, cval, nz, dtype)
        self.ry = self.size_y // 2
        self.rx = self.size_x // 2
        height, width = shape
        padded = (height + 2 * self.ry, width + 2 * self.rx)
        self.ring = np.empty((self.depth, *padded), dtype)
        self.const = np.full(padded, self.cval, dtype)
        n = self.size_z * self.size_y * self.size_x
        self.work = np.empty(((n + 3) // 2, min(width, _TILE)), dtype)
        self.out = np.empty(shape, dtype)

    def _arrive(self, i: int, plane: NDArray[Any]) -> None:
        _pad(plane, self.ry, self.rx, self.mode, self.cval, self.ring[i % self.depth])

    def _emit(self, k: int) -> NDArray[Any]:
        slots = self._slots(k)
        _median_plane(self.ring, slots, self.const, self.size_y, self.size_x, self.work, self.out)
        return self.out
