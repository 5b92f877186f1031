"""Exceptions raised by zchunk.

Every error a user can cause derives from :class:`ZChunkError`; each subclass also inherits the
builtin exception that describes it best, so ``except ValueError`` keeps working. The CLI prints a
``ZChunkError`` as one line on stderr and exits with code 2.
"""

from __future__ import annotations

import contextvars

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
    "StackFormatError",
    "ZChunkError",
    "option",
]


class ZChunkError(Exception):
    """Base class of every error zchunk raises on purpose."""


class SourceNotFoundError(ZChunkError, FileNotFoundError):
    """The input path, folder or glob does not exist or matches nothing."""


class StackFormatError(ZChunkError, ValueError):
    """The input is not a readable image stack (not a TIFF, mismatched files, bad axes...)."""


class CorruptDataError(StackFormatError):
    """The input is damaged: truncated, missing pages or chunks, undecodable data."""


class IncompleteOutputError(StackFormatError):
    """The input is the partial output of an interrupted zchunk run (``allow_incomplete=False``)."""


class InputChangedError(ZChunkError, RuntimeError):
    """An input file changed on disk between opening the stack and reading it."""


class ChunkingError(ZChunkError, ValueError):
    """The chunk layout does not allow the operation (e.g. the reduced axis is split)."""


class OptionError(ZChunkError, ValueError):
    """An option has an invalid value (sigma, size, q, method, memory limit, suffix...)."""


class OutputExistsError(ZChunkError, FileExistsError):
    """The output exists and ``overwrite`` was not given, or the output would replace an input."""


class PartialOutputError(OutputExistsError):
    """An interrupted run left a partial output: continue it (``resume``) or ``overwrite`` it."""


class OutputNotWritableError(ZChunkError, PermissionError):
    """The output's folder cannot be written (read-only file system, permissions)."""


class OutputInUseError(ZChunkError, RuntimeError):
    """Another run is writing the same output (its lock file names the host, pid and time)."""


class ResumeMismatchError(ZChunkError, ValueError):
    """A partial output was started with other settings (input, operation, dtype...)."""


class DiskSpaceError(ZChunkError, OSError):
    """Not enough free disk space for the output (checked before writing, or the disk filled)."""


#: Whether messages are read by a command-line user ("cli") or a Python caller ("python").
SPEAKING: contextvars.ContextVar[str] = contextvars.ContextVar("zchunk_speaking", default="python")


def option(name: str, value: object) -> str:
    """Spell an option as the reader of the message writes it: ``--like numpy`` or ``like='numpy'``.

    The CLI sets :data:`SPEAKING` to ``"cli"`` while it runs a command.

    Examples
    --------
    >>> option("like", "numpy")
    "like='numpy'"
    >>> token = SPEAKING.set("cli"); option("like", "numpy"); SPEAKING.reset(token)
    '--like numpy'
    """
    if SPEAKING.get() == "cli":
        return f"--{name.replace('_', '-')} {value}"
    return f"{name}={value!r}"
