"""The options every command that reads a stack, computes and writes shares: one frozen object.

``zchunk project``, ``filter`` and ``convert`` (and :mod:`zchunk.pipeline`'s ``run_*`` behind
them) read the input the same way (axes, calibration, file-name pattern, incomplete inputs),
compute on the same schedulers within the same budget, and write outputs with the same rules
(overwrite, resume, compression, pyramid, NGFF version). :class:`RunOptions` holds these once:
the CLI builds it from its flags, a script builds it with keywords, and the pipeline reads it;
no function forwards the list keyword by keyword.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zchunk.budget import Budget

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    from distributed import Client

    from zchunk._types import SourceLike
    from zchunk.io import OpenArgs

__all__ = ["RunOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How a run reads its input, where it computes, and how it writes its outputs.

    Attributes
    ----------
    axes, scale, pattern, allow_incomplete :
        Reading: axis letters overriding the metadata, pixel sizes by axis for inputs without
        calibration, a folder's file-name pattern, and whether an input with missing blocks is
        read (as zeros) rather than refused; as :func:`zchunk.open` takes them.
    memory_limit, workers, scheduler, scheduler_file, progress :
        Computing: the budget of all workers together (``"2GiB"``, bytes or a
        :class:`~zchunk.budget.Budget`), worker threads or processes, the scheduler (see
        :func:`zchunk.pipeline.compute_context`), and the progress bar (None: when stderr
        is a terminal).
    overwrite, resume, compression, pyramid, ngff_version :
        Writing: as :func:`zchunk.save` takes them.

    Examples
    --------
    >>> RunOptions(memory_limit="2GiB", workers=2).budget()
    Budget(bytes=2147483648, workers=2)
    >>> RunOptions(pyramid=2).save_options()
    {'overwrite': False, 'compression': None, 'resume': False, 'pyramid': 2}
    """

    axes: str | None = None
    scale: Mapping[str, float] | None = None
    pattern: str | None = None
    allow_incomplete: bool = False
    memory_limit: int | str | Budget | None = None
    workers: int | None = None
    scheduler: str | Client | None = None
    scheduler_file: str | os.PathLike[str] | None = None
    progress: bool | None = None
    overwrite: bool = False
    resume: bool = False
    compression: str | None = None
    pyramid: int = 0
    ngff_version: str | None = None

    def budget(self) -> Budget:
        """Return the memory budget, parsed (``workers`` default: dask's threaded pool)."""
        return Budget.parse(self.memory_limit, self.workers)

    def open_args(self, source: SourceLike, budget: Budget) -> OpenArgs:
        """Return how to read `source` (within `budget`): axes, scale, pattern, incomplete."""
        from zchunk.io import OpenArgs

        scale = None if self.scale is None else dict(self.scale)
        return OpenArgs(source, self.axes, budget, self.allow_incomplete, scale, self.pattern)

    def save_options(self) -> dict[str, Any]:
        """Return the keywords of :func:`zchunk.save` (and ``save_many``) these options set."""
        out: dict[str, Any] = {
            "overwrite": self.overwrite,
            "compression": self.compression,
            "resume": self.resume,
        }
        if self.pyramid:
            out["pyramid"] = self.pyramid
        if self.ngff_version is not None:
            out["ngff_version"] = self.ngff_version
        return out
