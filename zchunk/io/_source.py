"""How an input is read (:class:`OpenArgs`), and the Source ``zchunk.open`` leaves on it.

:class:`OpenedSource` is the :class:`zchunk.stack.Source` of the stacks ``zchunk.open``
builds: it reads regions of the input within tasks, streams it, and reopens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from zchunk.io._tiff import RegionReader

if TYPE_CHECKING:
    from collections.abc import Iterator

    from zchunk._types import SourceLike
    from zchunk.budget import Budget
    from zchunk.chunking import Purpose
    from zchunk.stack import Stack

__all__ = ["OpenArgs", "OpenedSource"]


@dataclass(frozen=True, slots=True)
class OpenArgs:
    """An input and how to read it: what ``zchunk.open`` takes, but the axes held whole.

    The one owner of the reading options: :func:`zchunk.io.open` and the pipeline build it,
    :func:`zchunk.io.find` and :func:`zchunk.io.open_planned` take it, and the stack's source
    keeps it to open the input again.
    """

    source: SourceLike
    axes: str | None
    budget: Budget
    allow_incomplete: bool = False
    scale: dict[str, float] | None = None
    pattern: str | None = None

    def open(self, whole: str, purpose: Purpose) -> Stack:
        """Open the input again with `whole` held whole in chunks planned for `purpose`."""
        from zchunk.io import open_planned

        return open_planned(self, whole=whole, purpose=purpose)


@dataclass(frozen=True, slots=True)
class OpenedSource:
    """A file (TIFF or zarr) or array opened by ``zchunk.open``; see the Source protocol.

    `reader` reads regions of a file within a task (``reader[region]``): a
    :class:`~zchunk.io._tiff.RegionReader`, which also streams, or a zarr array; None for an
    array in memory, which tasks should not carry.
    """

    name: str
    args: OpenArgs
    reader: Any = None

    @property
    def reads_regions(self) -> bool:
        """Whether :meth:`read` reads from a file (worth doing inside a task)."""
        return self.reader is not None

    @property
    def streams(self) -> bool:
        """Whether :meth:`planes` and :meth:`bands` read in file order without chunks."""
        return isinstance(self.reader, RegionReader)

    @property
    def row_align(self) -> int:
        """Band heights that decode no stored segment twice."""
        return self.reader.row_align if isinstance(self.reader, RegionReader) else 1

    @property
    def plane_copies(self) -> int:
        """A streamed plane is one plane of the file."""
        return 1

    def read(self, region: tuple[slice, ...], /) -> np.ndarray:
        """Return the pixels of `region`."""
        source: Any = self.reader if self.reader is not None else self.args.source
        return np.asarray(source[region])

    def planes(self, region: tuple[slice, ...], /) -> Iterator[np.ndarray]:
        """Yield the (rows, columns) planes of `region` in file order."""
        if isinstance(self.reader, RegionReader):
            return self.reader.planes(region)
        block = self.read(region)
        return iter(block.reshape(-1, *block.shape[-2:]))

    def bands(self, region: tuple[slice, ...], rows: int, /) -> Iterator[np.ndarray]:
        """Yield `region` in bands of `rows` rows (rounded up to :attr:`row_align`)."""
        if isinstance(self.reader, RegionReader):
            return self.reader.bands(region, rows)
        ys = region[-2]
        step = max(rows, 1)
        return (
            self.read((*region[:-2], slice(a, min(a + step, ys.stop)), region[-1]))
            for a in range(ys.start, ys.stop, step)
        )

    def reopen(self, *, whole: str, purpose: Purpose) -> Stack:
        """Open the same input again, `whole` held whole in chunks planned for `purpose`."""
        return self.args.open(whole, purpose)
