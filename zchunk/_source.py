"""What a reader leaves on the Stack it opens: the :class:`Source` protocol.

``zchunk.open`` builds a Stack whose `data` is a dask array of the file's chunks. Operations
can often do better than those chunks when they read the file themselves: a projection
streams planes in file order, a filter reads its chunk together with its halo in one task, a
projection along t reopens the file with the whole t axis in every chunk. The reader offers
these through ``Stack.source``, typed by this protocol; it describes the array it opened only,
so the Stack drops it as soon as its data are derived from that array (see
:class:`zchunk.stack.Stack`).

Sources are picklable (paths and layouts, never an open file): tasks hold them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

    from zchunk.chunking import Purpose
    from zchunk.stack import Stack

__all__ = ["Source"]

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
    def name(self) -> str: ...

    @property
    def reads_regions(self) -> bool: ...

    @property
    def streams(self) -> bool: ...

    @property
    def row_align(self) -> int: ...

    @property
    def plane_copies(self) -> int: ...

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
