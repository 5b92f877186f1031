"""What every streamed filter engine shares: the run along z, and storing its planes.

An engine (:class:`~zchunk.ops._separable.PlaneFilter`, :class:`~zchunk.ops._rank_kernels.MinMaxFilter`,
:class:`~zchunk.ops._median_kernels.MedianFilter`) filters the (rows, columns) planes of one
run along z as they arrive, in order. :meth:`Engine.run` yields each output plane (a buffer the
engine reuses); :meth:`Engine.store` writes the planes a task keeps, trimmed and cast, into its
output block: an engine that can write its last pass straight into the output (rounded while
the row is in cache) overrides it.

:class:`RingEngine` is the run of the rank filters: each incoming plane is filtered in y/x into
a ring of ``size_z`` slots, and output plane k is emitted once plane ``k + size_z // 2`` arrived.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from zchunk.ops._filter_kernels import MODE_CODES, plane_sources
from zchunk.ops._round_kernels import rounding_bounds, store_rounded
from zchunk.ops.projection import cast_rounded

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from numpy.typing import NDArray

__all__ = ["Engine", "RingEngine", "check_count", "store_plane"]


def store_plane(
    plane: NDArray[Any], trim: tuple[slice, slice], out: NDArray[Any], dtype: np.dtype[Any]
) -> None:
    """Write the `trim` part of a filtered plane into `out`, cast to `dtype` (rounded)."""
    if plane.dtype == dtype:
        out[...] = plane[trim]
    elif rounding_bounds(dtype, np.dtype(plane.dtype)) is not None:
        # float32 to 8/16-bit, float64 to 8/16/32-bit: rounded in one compiled pass
        rows, cols = trim
        store_rounded(plane, rows.start, cols.start, out)
    else:
        out[...] = cast_rounded(plane[trim], dtype)


def check_count(nz: int, last: int) -> None:
    """Raise ValueError unless the run had `nz` planes (`last` is the index of its last one)."""
    if last != nz - 1:
        msg = f"expected {nz} planes, got {last + 1}"
        raise ValueError(msg)


class Engine:
    """Filters the planes of one run of `nz` planes along z, in order."""

    nz: int

    def run(self, planes: Iterable[NDArray[Any]]) -> Iterator[tuple[int, NDArray[Any]]]:
        """Yield ``(k, filtered plane k)`` for k in 0..nz-1 as the planes arrive."""
        raise NotImplementedError

    def store(
        self,
        planes: Iterable[NDArray[Any]],
        k0: int,
        targets: NDArray[Any],
        trim: tuple[slice, slice],
    ) -> None:
        """Filter a run and write output planes ``k0 .. k0 + len(targets) - 1`` into `targets`.

        Each is the `trim` part of the filtered plane, cast to ``targets.dtype`` (rounded);
        the other planes (a halo along z) are filtered and dropped.
        """
        dtype = np.dtype(targets.dtype)
        for k, plane in self.run(planes):
            if k0 <= k < k0 + len(targets):
                store_plane(plane, trim, targets[k - k0], dtype)


class RingEngine(Engine):
    """A rank filter's run: y/x passes into a ring of ``size_z`` planes, then along z.

    Subclasses fill ring slot ``i % depth`` in :meth:`_arrive` and return output plane k,
    from the ring slots of :meth:`_slots`, in :meth:`_emit`.
    """

    def __init__(
        self, sizes: tuple[int, int, int], mode: str, cval: float, nz: int, dtype: np.dtype[Any]
    ) -> None:
        self.size_z, self.size_y, self.size_x = sizes
        self.mode = MODE_CODES[mode]
        self.mode_name = mode
        self.cval = dtype.type(cval)
        self.nz = nz
        self.left_z = self.size_z // 2
        self.reach = max(self.left_z, self.size_z - 1 - self.left_z)
        self.depth = min(2 * self.reach + 1, nz)

    def _arrive(self, i: int, plane: NDArray[Any]) -> None:
        raise NotImplementedError

    def _emit(self, k: int) -> NDArray[Any]:
        raise NotImplementedError

    def _slots(self, k: int) -> NDArray[np.int64]:
        """Ring slots of the planes output plane k's window covers (-1: the cval plane)."""
        planes = plane_sources(k, self.left_z, self.size_z, self.nz, self.mode_name)
        return np.where(planes < 0, -1, planes % self.depth)

    def run(self, planes: Iterable[NDArray[Any]]) -> Iterator[tuple[int, NDArray[Any]]]:
        """Yield ``(k, filtered plane k)`` for k in 0..nz-1 as the planes arrive."""
        k = 0
        i = -1
        for i, plane in enumerate(planes):
            self._arrive(i, plane)
            while k < self.nz and (k + self.reach <= i or i == self.nz - 1):
                yield k, self._emit(k)
                k += 1
        check_count(self.nz, i)
