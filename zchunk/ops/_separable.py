"""Separable filters as a stream of planes: y/x passes per plane, a ring of planes along z.

A linear filter is described as scipy computes it: a sum of *terms* (laplace: one second
difference per axis; gradient magnitudes: one derivative per axis, combined as
``sqrt(sum of squares)``), each term a sequence of 1-D correlations (:class:`Pass`) along the
axes in scipy's order. :class:`PlaneFilter` runs such a filter on planes that arrive one at a
time, in z order:

1. the passes of a term that come before its z pass run on the incoming plane while it is in
   cache, and their float32 result goes into a ring of ``2r + 1`` slots (r: the z radius);
   terms with the same passes before z share a ring (a gaussian's z-first terms share the ring
   of converted input planes);
2. output plane k is computed as soon as plane ``min(k + r, Z - 1)`` has arrived: the z pass
   is the weighted sum of the ring's planes ``k - r .. k + r`` (borders by the mode, via
   :func:`~zchunk.ops._filter_kernels.plane_sources`: a stack thinner than the kernel is
   extended as scipy extends it), then the term's remaining y/x passes;
3. the terms are summed or combined into a magnitude, and the plane is handed on.

Memory: the rings and a few planes, whatever Z is. Passes along different axes commute exactly
(in real arithmetic) for every mode except ``constant`` with a non-zero ``cval``, so when that
is not the case each term runs z first, then y and x together (:func:`correlate_yx`, a row
through both passes while it is in L1); otherwise scipy's order is kept pass by pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from zchunk.ops import _combine_kernels as C
from zchunk.ops import _filter_kernels as K
from zchunk.ops._engine import Engine, check_count
from zchunk.ops._round_kernels import rounding_bounds

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from numpy.typing import NDArray

__all__ = ["Pass", "PlaneFilter", "Separable", "gaussian_weights"]


@dataclass(frozen=True, slots=True)
class Pass:
    """One 1-D correlation along `axis` ("z", "y" or "x"): scipy's ``correlate1d``.

    With a constant border the line is padded with ``cval * border``.
    """

    axis: str
    weights: tuple[float, ...]
    border: float = 1.0

    @property
    def left(self) -> int:
        """Taps before the centre (scipy's origin 0: ``len // 2``)."""
        return len(self.weights) // 2

    @property
    def right(self) -> int:
        """Taps after the centre."""
        return len(self.weights) - 1 - self.left


@dataclass(frozen=True, slots=True)
class Separable:
    """A linear filter: terms of passes, combined by ``sum`` or ``magnitude``, then divided.

    `divisor` divides the result once at the end: a uniform filter sums its window with
    weights of 1 (exact for integer data) and divides, so the mean is correctly rounded and
    a mean that is exactly halfway between two integers stays so (1/size weights would round
    such ties either way, and a cast back to integers would then differ from scipy's).
    """

    terms: tuple[tuple[Pass, ...], ...]
    combine: Literal["sum", "magnitude"]
    mode: str
    cval: float
    divisor: float = 1.0

    def reach(self, axis: str) -> int:
        """Pixels a filtered value reaches along `axis` on either side (the halo it needs)."""
        return max(
            (sum(max(p.left, p.right) for p in term if p.axis == axis) for term in self.terms),
            default=0,
        )

    def ordered(self) -> Separable:
        """Return the filter with each term's passes in z, y, x order, when that is exact."""
        if self.mode == "constant" and self.cval != 0:
            return self
        order = {"z": 0, "y": 1, "x": 2}
        terms = tuple(tuple(sorted(t, key=lambda p: order[p.axis])) for t in self.terms)
        return Separable(terms, self.combine, self.mode, self.cval, self.divisor)


def gaussian_weights(sigma: float, order: int, truncate: float) -> tuple[float, ...]:
    """Scipy's ``gaussian_filter1d`` weights (correlation order) for `sigma`, `order`.

    Examples
    --------
    >>> w = gaussian_weights(1.0, 0, 2.0)
    >>> len(w), round(sum(w), 12), w[0] == w[-1]
    (5, 1.0, True)
    """
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    p = np.polynomial.Polynomial([0, 0, -0.5 / (sigma * sigma)])
    phi = np.exp(p(x))
    phi /= phi.sum()
    if order > 0:
        q = np.polynomial.Polynomial([1])
        dp = p.deriv()
        for _ in range(order):
            q = q.deriv() + q * dp
        phi *= q(x)
    return tuple(float(v) for v in phi[::-1])


@dataclass(frozen=True, slots=True)
class _Term:
    before: tuple[Pass, ...]  # y/x passes applied to each incoming plane
    z: Pass | None
    after: tuple[Pass, ...]  # y/x passes applied to the z-summed plane


def _split(term: tuple[Pass, ...]) -> _Term:
    zs = [i for i, p in enumerate(term) if p.axis == "z"]
    if not zs:
        return _Term(term, None, ())
    i = zs[0]
    return _Term(term[:i], term[i], term[i + 1 :])


def _weights(p: Pass) -> NDArray[np.float32]:
    return np.asarray(p.weights, dtype=np.float32)


#: Output planes whose z pass runs together: each ring row is then loaded once for the group
#: (a 17-tap z pass loads 20 rows per 4 planes instead of 68). Measured on a (20, 256, 2048)
#: uint16 ring, one thread, a loaded machine: 114-173 Mvoxel/s one plane at a time, 262-420
#: in groups of 4.
GROUP = 4


class PlaneFilter(Engine):
    """Filter the (rows, columns) planes of one band, in z order, with a ring along z.

    ``run(planes)`` yields ``(k, plane)`` for every output plane k in order; the yielded
    float32 plane is reused (valid until the next is asked for). With `float64`, a magnitude
    is yielded as the float64 square root of the float64 sum of squares (for a cast to
    integers: a float32 magnitude above 2**14 is too coarse to round like scipy's).

    ``store(planes, k0, targets, trim)`` writes the output planes straight into a task's
    block: the last y/x pass of a single term (a gaussian's) filters only the rows the block
    keeps and rounds each row into it while the row is in L1
    (:func:`~zchunk.ops._filter_kernels.correlate_yx_store`); terms are summed or combined
    into a magnitude and rounded in one pass (:func:`~zchunk.ops._combine_kernels.combine_store`),
    with no float32 or float64 plane of the result in between.
    """

    def __init__(
        self,
        sep: Separable,
        nz: int,
        shape: tuple[int, int],
        dtype: np.dtype[Any],
        *,
        float64: bool = False,
    ) -> None:
        sep = sep.ordered()
        self.mode = K.MODE_CODES[sep.mode]
        self.mode_name = sep.mode
        self.cval = float(sep.cval)
        self.divisor = np.float32(sep.divisor)
        self.nz = nz
        self.shape = shape
        self.terms = [_split(t) for t in sep.terms]
        self.rz = max((max(t.z.left, t.z.right) for t in self.terms if t.z), default=0)
        self.group = min(GROUP, nz) if self.rz else 1
        self.depth = min(2 * self.rz + self.group, nz)
        # the ring of input planes keeps their type when float32 holds it exactly
        raw = dtype if dtype.kind in "iu" and dtype.itemsize <= 2 else np.dtype(np.float32)
        chains = list(dict.fromkeys(t.before for t in self.terms))
        self.rings = {c: np.empty((self.depth, *shape), np.float32 if c else raw) for c in chains}
        self.raw = raw
        self.work = np.empty(shape, np.float32)  # an input plane of another type, converted
        self.tmp = np.empty(shape, np.float32)
        self.zbuf = np.empty((self.group, *shape), np.float32)
        self.magnitude = sep.combine == "magnitude"
        self.float64 = float64 and self.magnitude
        # planes of the results, allocated by the first run() or store() that needs them
        self._out: NDArray[np.float32] | None = None
        self._acc: NDArray[np.float64] | None = None
        self._term_out: NDArray[np.float32] | None = None
        self._kept: dict[int, NDArray[np.float32]] = {}

    # passes -----------------------------------------------------------------------------

    def _passes(self, src: NDArray[Any], passes: tuple[Pass, ...], out: NDArray[Any]) -> None:
        """Apply y/x `passes` in order to `src` into `out` (which may not be `src`)."""
        if not passes:
            np.copyto(out, src, casting="unsafe")
            return
        yx = self._yx(passes)
        if yx is not None:
            K.correlate_yx(src, *yx, self.mode, self._cval(passes[0]), out)
            return
        current = src
        for i, p in enumerate(passes):
            target = out if (len(passes) - i) % 2 == 1 else self.tmp
            func = K.correlate_y if p.axis == "y" else K.correlate_x
            func(current, _weights(p), p.left, self.mode, self._cval(p), target)
            current = target

    @staticmethod
    def _yx(passes: tuple[Pass, ...]) -> tuple[Any, int, Any, int] | None:
        """(wy, left_y, wx, left_x) when `passes` are one y pass then one x pass, same border."""
        if len(passes) != 2 or passes[0].axis != "y" or passes[1].axis != "x":
            return None
        y, x = passes
        if y.border != x.border:
            return None
        return _weights(y), y.left, _weights(x), x.left

    def _cval(self, p: Pass) -> float:
        return self.cval * p.border

    def _arrive(self, i: int, plane: NDArray[Any]) -> None:
        slot = i % self.depth
        source = plane
        for chain, ring in self.rings.items():
            if not chain:
                np.copyto(ring[slot], plane, casting="unsafe")
                continue
            # the passes convert 8/16-bit and float32 input as they load it (the kernels
            # compiled ahead take those); other inputs are converted once here
            if source is plane and not (
                plane.dtype == self.raw and plane.flags.c_contiguous and plane.flags.writeable
            ):
                np.copyto(self.work, plane, casting="unsafe")
                source = self.work
            self._passes(source, chain, ring[slot])

    def _z_group(self, ring: NDArray[Any], z: Pass, k0: int, n: int, out: NDArray[Any]) -> None:
        """Run the z pass of output planes k0 .. k0+n-1 into ``out[:n]``."""
        taps = len(z.weights)
        w = np.asarray(z.weights, dtype=np.float32)
        sources = [K.plane_sources(k0 + b, z.left, taps, self.nz, self.mode_name) for b in range(n)]
        planes = sorted({int(p) for src in sources for p in src if p >= 0})
        index = {p: i for i, p in enumerate(planes)}
        coef = np.zeros((n, max(len(planes), 1)), np.float32)
        used = np.zeros(coef.shape, np.uint8)
        const = np.zeros(n, np.float32)
        for b, src in enumerate(sources):
            for t, p in enumerate(src):
                if p < 0:
                    const[b] += w[t] * np.float32(self.cval * z.border)
                else:
                    coef[b, index[p]] += w[t]
                    used[b, index[p]] = 1
        slots = np.array([p % self.depth for p in planes] or [0], dtype=np.int64)
        if not planes:
            used[:] = 0
        K.correlate_z_group(ring, slots, coef, used, const, out[:n])

    def _groups(self, planes: Iterable[NDArray[Any]]) -> Iterator[tuple[int, int]]:
        """Take the planes in; yield (k0, n) when output planes k0 .. k0+n-1 can be emitted."""
        k = 0
        i = -1
        for i, plane in enumerate(planes):
            self._arrive(i, plane)
            while k < self.nz:
                n = min(self.group, self.nz - k)
                if k + n - 1 + self.rz > i and i != self.nz - 1:
                    break
                yield k, n
                k += n
        check_count(self.nz, i)

    # run: whole float planes --------------------------------------------------------------

    def _emit(self, k0: int, n: int) -> NDArray[Any]:
        """Compute output planes k0 .. k0+n-1; return the planes (float32, or float64)."""
        if self._out is None:
            self._out = np.empty((self.group, *self.shape), np.float32)
            self._term_out = np.empty(self.shape, np.float32)
            if self.magnitude:
                self._acc = np.empty((self.group, *self.shape), np.float64)
        out, acc, term_out = self._out, self._acc, self._term_out
        assert term_out is not None
        single = len(self.terms) == 1 and acc is None
        for t, term in enumerate(self.terms):
            ring = self.rings[term.before]
            if term.z is not None:
                self._z_group(ring, term.z, k0, n, self.zbuf)
            for b in range(n):
                source = self.zbuf[b] if term.z is not None else ring[(k0 + b) % self.depth]
                if single:
                    self._passes(source, term.after, out[b])
                    continue
                target = source
                if term.after or source.dtype != np.float32:  # else: no copy to combine it
                    target = term_out
                    self._passes(source, term.after, target)
                if acc is not None:
                    C.add_squares(acc[b], target, t == 0)
                elif t == 0:
                    np.copyto(out[b], target)
                else:
                    np.add(out[b], target, out=out[b])
        if acc is not None and not self.float64:
            for b in range(n):
                C.sqrt_into(acc[b], out[b])
        if acc is not None and self.float64:
            np.sqrt(acc[:n], out=acc[:n])
            return acc
        if self.divisor != 1:
            np.divide(out[:n], self.divisor, out=out[:n])
        return out

    def run(self, planes: Iterable[NDArray[Any]]) -> Iterator[tuple[int, NDArray[Any]]]:
        """Yield ``(k, filtered plane k)`` for k in 0..Z-1 as the planes arrive."""
        for k0, n in self._groups(planes):
            result = self._emit(k0, n)
            for b in range(n):
                yield k0 + b, result[b]

    # store: straight into a block ---------------------------------------------------------

    def _rounding(self, dtype: np.dtype[Any]) -> tuple[NDArray[Any], bool] | None:
        """(bounds, rounding) to store into `dtype` in the compiled passes, or None."""
        if dtype.kind in "iu":
            work = np.dtype(np.float64 if self.magnitude else np.float32)
            bounds = rounding_bounds(dtype, work)
            return None if bounds is None else (bounds, True)
        if dtype in (np.float32, np.float64):
            return np.zeros(2, np.float64 if self.magnitude else np.float32), False
        return None

    def store(
        self,
        planes: Iterable[NDArray[Any]],
        k0: int,
        targets: NDArray[Any],
        trim: tuple[slice, slice],
    ) -> None:
        """Filter a run and write planes ``k0 ..`` into `targets` (see :class:`Engine`)."""
        how = self._rounding(np.dtype(targets.dtype))
        if how is None:
            super().store(planes, k0, targets, trim)
            return
        bounds, rounding = how
        rows, cols = trim
        for g0, n in self._groups(planes):
            dests = [
                targets[g0 + b - k0] if k0 <= g0 + b < k0 + len(targets) else None for b in range(n)
            ]
            if any(d is not None for d in dests):
                self._emit_into(g0, n, dests, rows.start, cols.start, bounds, rounding)

    def _kept_planes(self, t: int) -> NDArray[np.float32]:
        """Planes of term t kept for the combination (one per plane of a group)."""
        if t not in self._kept:
            self._kept[t] = np.empty((self.group, *self.shape), np.float32)
        return self._kept[t]

    def _emit_into(
        self,
        k0: int,
        n: int,
        dests: list[NDArray[Any] | None],
        r0: int,
        c0: int,
        bounds: NDArray[Any],
        rounding: bool,
    ) -> None:
        """Compute output planes k0 .. k0+n-1 into `dests` (None: not kept)."""
        nrows = next(d for d in dests if d is not None).shape[0]
        terms: list[list[NDArray[Any]]] = [[] for _ in range(n)]
        last = len(self.terms) == 1 and not self.magnitude and self.divisor == 1
        in_zbuf: tuple[tuple[Pass, ...], Pass] | None = None  # the z pass zbuf holds
        for t, term in enumerate(self.terms):
            ring = self.rings[term.before]
            kept = None
            if term.z is not None and term.after:
                kept = self.zbuf
                if in_zbuf != (term.before, term.z):  # a gradient's y and x terms share it
                    self._z_group(ring, term.z, k0, n, kept)
                    in_zbuf = (term.before, term.z)
            elif term.z is not None:
                kept = self._kept_planes(t)
                self._z_group(ring, term.z, k0, n, kept)
            yx = self._yx(term.after)
            for b, dest in enumerate(dests):
                if dest is None:
                    continue
                source = kept[b] if kept is not None else ring[(k0 + b) % self.depth]
                if yx is not None and last:  # the only pass left: straight into the block
                    cval = self._cval(term.after[0])
                    K.correlate_yx_store(
                        source, *yx, self.mode, cval, r0, c0, bounds, rounding, dest
                    )
                    continue
                if yx is not None:  # only the rows the block keeps
                    plane = self._kept_planes(t)[b]
                    cval = self._cval(term.after[0])
                    rows = plane[r0 : r0 + nrows]
                    K.correlate_yx_store(source, *yx, self.mode, cval, r0, 0, bounds, False, rows)
                    source = plane
                elif term.after or source.dtype != np.float32:
                    plane = self._kept_planes(t)[b]
                    self._passes(source, term.after, plane)
                    source = plane
                terms[b].append(source)
        if last and self._yx(self.terms[0].after) is not None:
            return
        for b, dest in enumerate(dests):
            if dest is not None:
                C.combine_store(
                    tuple(terms[b]), self.magnitude, float(self.divisor), r0, c0, bounds,
                    rounding, dest,
                )  # fmt: skip
