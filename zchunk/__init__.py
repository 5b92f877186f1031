"""zchunk: project and filter microscopy image stacks bigger than memory.

Stacks open as dask arrays chunked in y/x with the whole z axis in every chunk, so projections
and filters run per tile, in parallel, in memory set by a budget.

The public functions are imported on first use (PEP 562 ``__getattr__``): ``import zchunk``
costs no dask, zarr, scipy or numba, so ``zchunk --version`` and ``zchunk info`` start at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zchunk._version import __version__
from zchunk.errors import (
    ChunkingError,
    CorruptDataError,
    DiskSpaceError,
    IncompleteOutputError,
    InputChangedError,
    OptionError,
    OutputExistsError,
    OutputInUseError,
    OutputNotWritableError,
    PartialOutputError,
    ResumeMismatchError,
    SourceNotFoundError,
    StackFormatError,
    ZChunkError,
)

if TYPE_CHECKING:
    from zchunk._compare import compare
    from zchunk.describe import info
    from zchunk.io import open
    from zchunk.ops.filters import filter
    from zchunk.ops.projection import project, project_many
    from zchunk.sinks import save, save_many
    from zchunk.stack import Stack

#: Where each lazily imported public name lives.
_LAZY = {
    "Stack": "zchunk.stack",
    "compare": "zchunk._compare",
    "filter": "zchunk.ops.filters",
    "info": "zchunk.describe",
    "open": "zchunk.io",
    "project": "zchunk.ops.projection",
    "project_many": "zchunk.ops.projection",
    "save": "zchunk.sinks",
    "save_many": "zchunk.sinks",
}

__all__ = [
    "ChunkingError",
    "CorruptDataError",
    "DiskSpaceError",
    "IncompleteOutputError",
    "InputChangedError",
    "OptionError",
    "OutputExistsError",
    "OutputInUseError",
    "OutputNotWritableError",
    "PartialOutputError",
    "ResumeMismatchError",
    "SourceNotFoundError",
    "Stack",
    "StackFormatError",
    "ZChunkError",
    "__version__",
    "compare",
    "filter",
    "info",
    "open",
    "project",
    "project_many",
    "save",
    "save_many",
]


def __getattr__(name: str) -> Any:
    """Import a public function or class on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'zchunk' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
