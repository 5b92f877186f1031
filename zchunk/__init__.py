"""zchunk: project and filter microscopy image stacks bigger than memory.

Stacks open as dask arrays chunked in y/x with the whole z axis in every chunk, so projections
and filters run per tile, in parallel, in memory set by a budget.
"""

from zchunk._version import __version__
from zchunk.compare import compare
from zchunk.describe import info
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
from zchunk.io import open
from zchunk.ops.filters import filter
from zchunk.ops.projection import project, project_many
from zchunk.sinks import save, save_many
from zchunk.stack import Stack

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
