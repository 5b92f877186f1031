"""The memory budget: how many bytes all workers together may hold, and how many workers.

A :class:`Budget` is parsed once, where the user gives it (``zchunk.open(memory_limit=)``, the
CLI, the pipeline), and passed on to the planner (:mod:`zchunk.chunking`) and the scheduler. This
module also owns the size texts zchunk reads (``"2GiB"``) and prints, and the defaults: the
smaller of 1 GiB and a quarter of the RAM, one worker per core. It imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

from zchunk.errors import OptionError

__all__ = ["Budget", "default_memory_limit", "format_bytes", "parse_memory"]


def parse_memory(value: int | str) -> int:
    """Return a byte count from ``"2GiB"``, ``"500 MB"``, ``"1.5g"`` or an int (dask's units).

    Raises
    ------
    OptionError
        If the text is not a positive size (a ValueError).

    Examples
    --------
    >>> parse_memory("2GiB"), parse_memory("500MB"), parse_memory(4096)
    (2147483648, 500000000, 4096)
    """
    from dask.utils import parse_bytes

    if isinstance(value, bool):
        msg = f"memory limit must be a size like '2GiB', not {value!r}"
        raise OptionError(msg)
    try:
        n = int(parse_bytes(value))
    except (ValueError, TypeError):
        msg = f"memory limit {value!r} is not a size: write e.g. '2GiB', '512MB' or 1073741824"
        raise OptionError(msg) from None
    if n <= 0:
        msg = f"memory limit must be positive, got {value!r}"
        raise OptionError(msg)
    return n


def format_bytes(n: float) -> str:
    """Return a short human size, binary units: dask's ``format_bytes``, written out.

    The same text as ``dask.utils.format_bytes`` (a test holds them equal), without importing
    dask for it: ``zchunk info`` prints sizes and needs nothing else from dask (0.2 s).

    Examples
    --------
    >>> format_bytes(3 * 1024**3), format_bytes(1536), format_bytes(12)
    ('3.00 GiB', '1.50 kiB', '12 B')
    """
    n = int(n)
    for prefix, k in (("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("ki", 2**10)):
        if n >= k * 0.9:
            return f"{n / k:.2f} {prefix}B"
    return f"{n} B"


def default_memory_limit() -> int:
    """Return the default budget: the smaller of 1 GiB and a quarter of the machine's RAM."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        import psutil

        ram = psutil.virtual_memory().total
    return int(min(1024**3, ram // 4))


def _default_workers() -> int:
    """Worker threads dask's threaded scheduler uses here (its pool size).

    ``dask.config``'s ``num_workers`` is read when dask is imported already (whoever set it
    imported it); otherwise one per core, without importing dask for it.
    """
    dask = sys.modules.get("dask")
    n = dask.config.get("num_workers", None) if dask is not None else None
    return int(n) if n else max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True, slots=True)
class Budget:
    """Memory for all workers together, and how many workers compute chunks at once.

    Examples
    --------
    >>> Budget.parse("2GiB", workers=4)
    Budget(bytes=2147483648, workers=4)
    """

    bytes: int
    workers: int

    def __post_init__(self) -> None:
        if self.bytes <= 0 or self.workers <= 0:
            msg = f"{self} must have a positive memory limit and at least one worker"
            raise OptionError(msg)

    @classmethod
    def parse(
        cls, memory_limit: int | str | Budget | None = None, workers: int | None = None
    ) -> Budget:
        """Return the budget a user gave (``"2GiB"``, bytes, None for the default).

        `workers` defaults to the pool size of dask's threaded scheduler (one per core, or
        ``dask.config``'s ``num_workers``); a Budget is returned as it is (with `workers`, if
        given).
        """
        if isinstance(memory_limit, Budget):
            return memory_limit if workers is None else memory_limit.with_workers(workers)
        if workers is not None and (isinstance(workers, bool) or workers < 1):
            msg = f"workers={workers!r} must be at least 1"
            raise OptionError(msg)
        n = default_memory_limit() if memory_limit is None else parse_memory(memory_limit)
        return cls(n, workers or _default_workers())

    def with_workers(self, workers: int) -> Budget:
        """Return this budget shared by `workers` workers."""
        return dataclasses.replace(self, workers=workers)
