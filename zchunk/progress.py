"""How far a computation is: a rich progress bar on stderr, under local schedulers or a Client.

Under dask's local schedulers the bar is a dask ``Callback``; under a ``distributed.Client``,
:func:`gather_with_progress` counts the outputs the scheduler finishes, with distributed's public
``as_completed`` (no subclass of distributed's own bar, whose drawing hook is private).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dask.callbacks import Callback

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["ProgressBar", "gather_with_progress"]


class ProgressBar(Callback):
    """A rich progress bar on stderr: work done / total, MB/s, time left.

    Entered as a context manager it follows dask's local schedulers (it is a dask
    ``Callback``). Under a ``distributed.Client``, :func:`compute_context` feeds it with
    :meth:`update` from the outputs the scheduler finishes instead (one per stored block).

    Parameters
    ----------
    description : str
        Label of the bar.
    nbytes : int
        Bytes of input the computation reads, for the MB/s column (0: no rate).
    """

    def __init__(self, description: str, *, nbytes: int = 0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        from rich.console import Console
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
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None, rate="")
        self._started = 0.0
        self._running = False

    def begin(self, total: int, done: int = 0) -> None:
        """Start showing a computation of `total` tasks, `done` of them already finished."""
        self._started = time.perf_counter()
        self._progress.update(self._task, total=total, completed=done)
        if not self._running:
            self._progress.start()
            self._running = True

    def update(self, done: int, total: int | None = None) -> None:
        """Show `done` tasks finished (of `total`, if it changed)."""
        if total is not None:
            self._progress.update(self._task, total=total)
        total = int(self._progress.tasks[0].total or 1)
        rate = ""
        elapsed = time.perf_counter() - self._started
        if self._nbytes and elapsed > 0:
            rate = f"{self._nbytes * done / total / elapsed / 1e6:.0f} MB/s"
        self._progress.update(self._task, completed=done, rate=rate)

    def end(self) -> None:
        """Stop the bar, leaving its last state on stderr."""
        if self._running:
            self._progress.stop()
            self._running = False

    def _start_state(self, dsk: Any, state: Any) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.begin(total, len(state["finished"]))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self.update(len(state["finished"]))

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        self.end()


def gather_with_progress(client: Client, packed: Any, bar: ProgressBar) -> Any:
    """Return the results of the futures in `packed`, counting them on `bar` as they finish.

    The bar counts the computation's outputs: a writer's ``da.store`` asks for one key per
    block it stores, so the count is the blocks read, computed and written. They are followed
    with distributed's public ``as_completed``; the first that fails stops the count, and the
    gather raises its error.
    """
    from distributed import as_completed, futures_of

    futures = futures_of(packed)
    bar.begin(len(futures))
    for done, future in enumerate(as_completed(futures, loop=client.loop), start=1):
        if future.status == "error":
            break
        bar.update(done)
    return client.gather(packed)
