"""The Stack: a lazy dask array with named axes and physical calibration, and its Source.

``zchunk.open`` builds a Stack whose `data` is a dask array of the file's chunks. Operations
can often do better than those chunks when they read the file themselves: a projection
streams planes in file order, a filter reads its chunk together with its halo in one task, a
projection along t reopens the file with the whole t axis in every chunk. The reader offers
these through ``Stack.source``, typed by the :class:`Source` protocol; it describes the array
it opened only, so the Stack drops it as soon as its data are derived from that array.
Sources are picklable (paths and layouts, never an open file): tasks hold them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from zchunk.errors import StackFormatError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    import dask.array as da

    from zchunk.chunking import ChunkPlan, Purpose

__all__ = ["AXIS_ORDER", "Source", "Stack", "normalize_unit"]

#: Axis letters zchunk knows, in the canonical order of OME-Zarr.
AXIS_ORDER = "tczyx"

_UNIT_ALIASES = {
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",  # Greek mu
    "\\u00b5m": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "micrometre": "micrometer",
    "micrometer": "micrometer",
    "nm": "nanometer",
    "nanometre": "nanometer",
    "nanometer": "nanometer",
    "mm": "millimeter",
    "millimetre": "millimeter",
    "millimeter": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "meter": "meter",
    "s": "second",
    "sec": "second",
    "second": "second",
    "seconds": "second",
    "ms": "millisecond",
    "millisecond": "millisecond",
    "min": "minute",
    "minute": "minute",
    "h": "hour",
    "hour": "hour",
}

_UNKNOWN_UNITS = {"", "pixel", "pixels", "px", "none"}


def normalize_unit(unit: str | None) -> str | None:
    """Return the OME-Zarr (UDUNITS) name of a unit string, or None when unknown.

    Examples
    --------
    >>> normalize_unit("micron"), normalize_unit("µm"), normalize_unit("pixel")
    ('micrometer', 'micrometer', None)
    """
    if unit is None:
        return None
    key = unit.strip()
    if key.lower() in _UNKNOWN_UNITS:
        return None
    return _UNIT_ALIASES.get(key, _UNIT_ALIASES.get(key.lower(), key))


type Region = tuple[slice, ...]


class Source(Protocol):
    """The storage a Stack was opened from, read directly by the operations that can.

    Attributes
    ----------
    name : str
        Name of the dask array this source backs (``Stack.data.name`` when opened).
    reads_regions : bool
        :meth:`read` reads any region from storage within a task (a file; not an array
        held in memory, which tasks should not carry).
    streams : bool
        :meth:`planes` and :meth:`bands` read in file order, without chunks (TIFF).
    row_align : int
        Band heights that decode no stored segment twice (the strip or tile height; 1 for
        uncompressed rows).
    plane_copies : int
        Memory one streamed plane costs, in planes of the stack's dtype (1 for a file; a
        filter streaming through a ring of planes holds more).
    """

    @property
    def name(self) -> str:
        """Name of the dask array this source backs."""
        ...

    @property
    def reads_regions(self) -> bool:
        """Whether :meth:`read` reads from storage within a task."""
        ...

    @property
    def streams(self) -> bool:
        """Whether :meth:`planes` and :meth:`bands` read in file order."""
        ...

    @property
    def row_align(self) -> int:
        """Band heights that decode no stored segment twice."""
        ...

    @property
    def plane_copies(self) -> int:
        """Memory of one streamed plane, in planes of the stack's dtype."""
        ...

    def read(self, region: Region, /) -> np.ndarray:
        """Return the pixels of `region` (one slice per axis, steps of 1)."""
        ...

    def planes(self, region: Region, /) -> Iterator[np.ndarray]:
        """Yield the (rows, columns) planes of `region` one by one, in file order."""
        ...

    def bands(self, region: Region, rows: int, /) -> Iterator[np.ndarray]:
        """Yield `region` in bands of about `rows` rows (aligned up to `row_align`)."""
        ...

    def reopen(self, *, whole: str, purpose: Purpose) -> Stack:
        """Open the same input again, `whole` held whole in chunks planned for `purpose`."""
        ...


@dataclass(frozen=True, slots=True)
class Stack:
    """A lazy image stack: a dask array plus axis names and calibration.

    Parameters
    ----------
    data : dask.array.Array
        The pixels; for projections the reduced axis must be one chunk.
    axes : str
        One distinct letter of ``"tczyx"`` per dimension, in the order of `data`.
    scale : tuple of float or None
        Physical size of one pixel along each axis (the frame interval for t); ``None``
        where unknown. ``()`` means unknown everywhere.
    units : tuple of str or None
        Unit of each entry of `scale` (``"micrometer"``, ``"second"``...); ``()`` means unknown.
    name : str
        A short label (the file name), used in messages and metadata.
    attrs : Mapping
        Metadata that could be written as JSON: ``channel_names``, ``source``, ``layout``...
    plan : ChunkPlan or None
        The chunk plan ``zchunk.open`` made (budget, workers, memory estimate); kept by
        operations, shown by ``zchunk.info``.
    source : Source or None
        The storage `data` was opened from, for operations that read it directly (see
        :class:`Source`). It describes that array only: a Stack whose `data` is another
        array (any dask operation on it) drops it. Not compared, not shown in the repr.

    Examples
    --------
    >>> s = Stack(da.zeros((3, 4, 5), dtype="uint16"), scale=(2.0, 0.5, 0.5))
    >>> s.axes, s.sizes["z"], s.units
    ('zyx', 3, (None, None, None))
    """

    data: da.Array
    axes: str = ""
    scale: tuple[float | None, ...] = ()
    units: tuple[str | None, ...] = ()
    name: str = ""
    attrs: Mapping[str, Any] = field(default_factory=dict)
    plan: ChunkPlan | None = field(default=None, compare=False, repr=False)
    source: Source | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        import dask.array as da  # here: zchunk info and --version need no dask array

        data = self.data
        if isinstance(data, np.ndarray):
            data = da.from_array(data)
            object.__setattr__(self, "data", data)
        if not isinstance(data, da.Array):
            msg = f"Stack.data must be a dask or numpy array, not {type(data).__name__}"
            raise TypeError(msg)
        if self.source is not None and self.source.name != data.name:
            object.__setattr__(self, "source", None)  # derived data: the source is not its own
        axes = self.axes or default_axes(data.ndim)
        if len(axes) != data.ndim or len(set(axes)) != len(axes) or set(axes) - set(AXIS_ORDER):
            msg = (
                f"axes={axes!r} does not fit an array of {data.ndim} dimensions: "
                f"give one distinct letter of {AXIS_ORDER!r} per dimension"
            )
            raise StackFormatError(msg)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "scale", _per_axis(self.scale, data.ndim, "scale"))
        object.__setattr__(self, "units", _per_axis(self.units, data.ndim, "units"))
        for value in self.scale:
            if value is not None and not (np.isfinite(value) and value > 0):
                msg = f"scale must hold positive finite pixel sizes or None, got {self.scale}"
                raise StackFormatError(msg)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the data."""
        return tuple(int(n) for n in self.data.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Data type of the pixels."""
        dtype: np.dtype[Any] = np.dtype(self.data.dtype)
        return dtype

    @property
    def sizes(self) -> dict[str, int]:
        """Length of each axis, by letter."""
        return dict(zip(self.axes, self.shape, strict=True))

    def axis(self, letter: str) -> int:
        """Index of axis `letter` in `data`; raise StackFormatError naming the axes there are."""
        if letter not in self.axes:
            msg = f"axis {letter!r} is not in this stack, whose axes are {self.axes!r}"
            raise StackFormatError(msg)
        return self.axes.index(letter)

    def replace(self, **changes: Any) -> Stack:
        """Return a copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def replanned(self, *, whole: str, purpose: Purpose) -> Stack | None:
        """Return this stack read again from its source in other chunks; None without a source.

        The chunks hold the axes `whole` whole and are planned for `purpose` within the
        budget the stack was opened with; axes, calibration, name and attrs are kept.
        """
        if self.source is None:
            return None
        fresh = self.source.reopen(whole=whole, purpose=purpose)
        return self.replace(data=fresh.data, plan=fresh.plan, source=fresh.source)

    def in_order(self, order: str) -> Stack:
        """Return this stack with its axes in the order they have in `order` (lazily transposed).

        Axes of `order` the stack lacks are skipped; calibration follows its axis.

        >>> s = Stack(np.zeros((2, 3, 4), "uint8"), axes="zcx", scale=(2.0, None, 0.5))
        >>> t = s.in_order("tczyx")
        >>> t.axes, t.shape, t.scale
        ('czx', (3, 2, 4), (None, 2.0, 0.5))
        """
        perm = [self.axes.index(a) for a in order if a in self.axes]
        if perm == list(range(len(perm))):
            return self
        return self.replace(
            data=self.data.transpose(perm),
            axes="".join(self.axes[i] for i in perm),
            scale=tuple(self.scale[i] for i in perm),
            units=tuple(self.units[i] for i in perm),
        )

    def drop_axis(self, letter: str, data: da.Array) -> Stack:
        """Return a Stack holding `data`, which is this stack with axis `letter` reduced away."""
        i = self.axis(letter)
        keep = [j for j in range(len(self.axes)) if j != i]
        return Stack(
            data,
            axes=self.axes.replace(letter, ""),
            scale=tuple(self.scale[j] for j in keep),
            units=tuple(self.units[j] for j in keep),
            name=self.name,
            attrs=dict(self.attrs),
            plan=self.plan,
        )


def default_axes(ndim: int) -> str:
    """Axes assumed when nothing says otherwise: yx, zyx, tzyx, tczyx."""
    if not 2 <= ndim <= 5:
        msg = f"cannot guess the axes of a {ndim}-D array: pass axes= (letters of 'tczyx')"
        raise StackFormatError(msg)
    return {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}[ndim]


def _per_axis(values: tuple[Any, ...], ndim: int, what: str) -> tuple[Any, ...]:
    values = tuple(values)
    if not values:
        return (None,) * ndim
    if len(values) != ndim:
        msg = f"{what} has {len(values)} entries for {ndim} axes: give one per axis or ()"
        raise StackFormatError(msg)
    return values
