"""Run lazy results: the scheduler, the progress bar, and the open -> ops -> sink jobs.

Library code never sets global dask configuration; the CLI and scripts choose the scheduler
here, inside ``with`` blocks.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any

import dask
from dask.callbacks import Callback

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["ProgressBar", "compute_context", "progress_enabled"]

SCHEDULERS = ("threads", "processes", "synchronous")


def progress_enabled(flag: bool | None) -> bool:
    """``--progress``/``--no-progress`` if given, else on when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


class ProgressBar(Callback):
    """A rich progress bar over dask tasks: tasks done, rate, time left. Local schedulers."""

    def __init__(self, description: str, *, nbytes: int = 0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._nbytes = nbytes
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None, rate="")
        self._started = 0.0

    def _start_state(self, dsk: Any, state: Any) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._started = time.perf_counter()
        self._progress.update(self._task, total=total, completed=len(state["finished"]))
        self._progress.start()

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        done = len(state["finished"])
        total = self._progress.tasks[0].total or 1
        rate = ""
        elapsed = time.perf_counter() - self._started
        if self._nbytes and elapsed > 0:
            rate = f"{self._nbytes * done / total / elapsed / 1e6:.0f} MB/s"
        self._progress.update(self._task, completed=done, rate=rate)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        self._progress.stop()


@contextlib.contextmanager
def compute_context(
    scheduler: str = "threads",
    *,
    workers: int | None = None,
    progress: bool = False,
    description: str = "computing",
    nbytes: int = 0,
) -> Iterator[None]:
    """Compute everything inside on `scheduler` with `workers`, showing a progress bar.

    Parameters
    ----------
    scheduler : {"threads", "processes", "synchronous"}
        dask's local schedulers.
    workers : int, optional
        Worker threads or processes (dask's default: one per core).
    progress : bool
        Show a rich progress bar on stderr.
    description, nbytes :
        Label of the bar and the input bytes, for the MB/s column.
    """
    if scheduler not in SCHEDULERS:
        msg = f"scheduler={scheduler!r} is not one of {', '.join(SCHEDULERS)}"
        raise ValueError(msg)
    if workers is not None and workers < 1:
        msg = f"workers={workers} must be at least 1"
        raise ValueError(msg)
    config: dict[str, Any] = {"scheduler": scheduler}
    if workers is not None:
        config["num_workers"] = workers
    with contextlib.ExitStack() as stack:
        stack.enter_context(dask.config.set(config))
        if progress:
            stack.enter_context(ProgressBar(description, nbytes=nbytes))
        yield
