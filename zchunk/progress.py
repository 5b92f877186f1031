"""How far a computation is: a rich progress bar on stderr, under local schedulers or a Client.

Under dask's local schedulers the bar is a dask ``Callback``; under a ``distributed.Client``,
:func:`gather_with_progress` feeds it from the scheduler while the results are gathered.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any

from dask.callbacks import Callback

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures

    from distributed import Client

__all__ = ["ProgressBar", "gather_with_progress"]

#: Longest wait, in seconds, for the scheduler's last progress report after a computation.
_PROGRESS_TIMEOUT = 10.0


class ProgressBar(Callback):
    """A rich progress bar on stderr over dask tasks: tasks done / total, MB/s, time left.

    Entered as a context manager it follows dask's local schedulers (it is a dask
    ``Callback``). Under a ``distributed.Client``, :func:`compute_context` feeds it with
    :meth:`update` from the scheduler's task counts instead.

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


@functools.cache
def _scheduler_watcher() -> type[Any]:
    """Return the class that relays a scheduler's task counts to a :class:`ProgressBar`.

    It is distributed's own progress machinery (the one behind ``distributed.progress``): a
    temporary plugin on the scheduler counts the tasks that the given futures depend on and
    reports the number left every 100 ms over a separate connection.
    """
    from distributed.diagnostics.progressbar import ProgressBar as DistributedProgressBar

    class Watcher(DistributedProgressBar):
        def __init__(self, futures: list[Any], address: str, bar: ProgressBar) -> None:
            super().__init__(  # type: ignore[no-untyped-call]
                futures, scheduler=address, interval="100ms", complete=True
            )
            self.bar = bar
            self.begun = False

        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
            if not self.begun:
                self.bar.begin(all, all - remaining)
                self.begun = True
            else:
                self.bar.update(all - remaining, all)

    return Watcher


def gather_with_progress(client: Client, packed: Any, bar: ProgressBar) -> Any:
    """Return the results of the futures in `packed`, showing the scheduler's progress on `bar`."""
    from distributed import futures_of

    futures = futures_of(packed)
    watcher = _scheduler_watcher()(futures, str(client.scheduler.address), bar)  # type: ignore[union-attr]
    import asyncio  # distributed's own loop: only under a distributed client

    loop: asyncio.AbstractEventLoop = client.loop.asyncio_loop  # type: ignore[union-attr]
    listening = asyncio.run_coroutine_threadsafe(watcher.listen(), loop)
    try:
        result = client.gather(packed)
    except BaseException:  # an error or Ctrl-C: no last report to wait for
        _stop_watching(listening, watcher, loop)
        raise
    # the futures stay referenced until the scheduler's last report (or a timeout): the
    # watcher waits for their keys to exist on the scheduler
    with contextlib.suppress(Exception):
        listening.result(timeout=_PROGRESS_TIMEOUT)
    _stop_watching(listening, watcher, loop)
    return result


def _stop_watching(
    listening: concurrent.futures.Future[Any], watcher: Any, loop: asyncio.AbstractEventLoop
) -> None:
    """Stop a scheduler watcher that is still listening and close its connection."""
    if listening.done():
        return
    listening.cancel()
    comm = getattr(watcher, "comm", None)
    if comm is not None:
        loop.call_soon_threadsafe(comm.abort)
