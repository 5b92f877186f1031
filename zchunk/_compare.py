"""``zchunk compare``: are two images equal within a tolerance? One streamed pass over both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np

from zchunk.errors import OptionError

if TYPE_CHECKING:
    from zchunk.stack import Stack

__all__ = ["Comparison", "compare"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of :func:`compare`."""

    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    max_abs_diff: float | None  # None when the shapes differ
    differing: int | None  # pixels whose difference exceeds atol
    atol: float

    @property
    def equal(self) -> bool:
        """True when the shapes match and no pixel differs by more than `atol`."""
        return self.differing == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "shape_a": list(self.shape_a),
            "shape_b": list(self.shape_b),
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
            "max_abs_diff": self.max_abs_diff,
            "differing_pixels": self.differing,
            "atol": self.atol,
            "equal": self.equal,
        }


def _diff_stats(a: np.ndarray, b: np.ndarray, atol: float) -> np.ndarray:
    """(max |a - b|, count of |a - b| > atol) of one block; NaN equals NaN."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    both_nan = np.isnan(a) & np.isnan(b) if a.dtype.kind == "f" or b.dtype.kind == "f" else None
    if both_nan is not None:
        diff[both_nan] = 0.0
        diff[np.isnan(diff)] = np.inf  # NaN against a number
    stats = np.array([diff.max(initial=0.0), np.count_nonzero(diff > atol)])
    return stats.reshape((1,) * (a.ndim - 1) + (2,))


def compare(a: Stack, b: Stack, /, *, atol: float = 0.0) -> Comparison:
    """Compare two stacks pixel by pixel, chunk by chunk.

    Parameters
    ----------
    a, b : Stack
        The images; squeezed of length-1 axes before comparing (an ImageJ ``MaxZ.tif`` of shape
        (1, y, x) compares with a (y, x) projection).
    atol : float
        Largest absolute difference still counted as equal.

    Returns
    -------
    Comparison
        Shapes, dtypes, the largest absolute difference and the number of pixels over `atol`.

    Examples
    --------
    >>> x = Stack(da.from_array(np.array([[1, 2], [3, 4]], dtype="uint8")))
    >>> y = Stack(da.from_array(np.array([[1, 2], [3, 7]], dtype="uint16")))
    >>> c = compare(x, y)
    >>> c.max_abs_diff, c.differing, c.equal
    (3.0, 1, False)
    """
    if atol < 0 or not np.isfinite(atol):
        msg = f"atol must be a finite number >= 0, got {atol}"
        raise OptionError(msg)
    xa = _squeeze(a.data)
    xb = _squeeze(b.data)
    base = Comparison(a.shape, b.shape, str(a.dtype), str(b.dtype), None, None, atol)
    if xa.shape != xb.shape:
        return base
    xb = xb.rechunk(xa.chunks)
    chunks = [(1,) * n for n in xa.numblocks[:-1]] + [(2,) * xa.numblocks[-1]]
    stats = da.map_blocks(_diff_stats, xa, xb, atol, dtype=np.float64, chunks=tuple(chunks))
    pending = (stats[..., 0::2].max(), stats[..., 1::2].sum())
    max_diff, count = dask.compute(*pending)  # type: ignore[attr-defined,no-untyped-call]
    return Comparison(
        a.shape, b.shape, str(a.dtype), str(b.dtype), float(max_diff), int(count), atol
    )


def _squeeze(x: da.Array) -> da.Array:
    axes = tuple(i for i, n in enumerate(x.shape) if n == 1 and i < x.ndim - 2)
    return x.squeeze(axis=axes) if axes else x
