"""Run lazy results: the scheduler, the progress bar, and the open -> ops -> sink jobs.

Library code never sets global dask configuration; the CLI and scripts choose the scheduler
here, inside ``with`` blocks.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import dask
from dask.callbacks import Callback

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "FORMATS",
    "ProgressBar",
    "compute_context",
    "output_paths",
    "peak_rss_mb",
    "progress_enabled",
    "result_name",
    "run_filter",
    "run_project",
]

SCHEDULERS = ("threads", "processes", "synchronous")


def progress_enabled(flag: bool | None) -> bool:
    """``--progress``/``--no-progress`` if given, else on when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


class ProgressBar(Callback):
    """A rich progress bar over dask tasks: tasks done, rate, time left. Local schedulers."""

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


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, from the OS (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: Output formats of the CLI's ``--format`` and the file suffix each one gets.
FORMATS = {"tif": ".tif", "ome.tif": ".ome.tif", "zarr": ".zarr", "ome.zarr": ".ome.zarr"}


def result_name(method: str, q: float | None) -> str:
    """File stem of a projection result: ``max``, ``median``, ``percentile95``.

    Examples
    --------
    >>> result_name("max", None), result_name("percentile", 99.5)
    ('max', 'percentile99.5')
    """
    return f"percentile{q:g}" if method == "percentile" and q is not None else method


def output_paths(out: str, names: Sequence[str], fmt: str | None) -> tuple[dict[str, str], bool]:
    """Where each result goes: `out` itself for one result named with a suffix, else a folder.

    Returns the paths by name and whether `out` is a folder of results.
    """
    from zchunk.sinks import SUFFIXES

    if fmt is not None and fmt not in FORMATS:
        msg = f"format {fmt!r} is not one of {', '.join(FORMATS)}"
        raise ValueError(msg)
    is_file = out.lower().endswith(SUFFIXES) and not os.path.isdir(out)
    if len(names) == 1 and is_file:
        return {names[0]: out}, False
    if is_file:
        msg = (
            f"{len(names)} results need a folder for -o, not the file name {out!r}: "
            "each result is written as <method>.tif inside it"
        )
        raise ValueError(msg)
    suffix = FORMATS[fmt or "tif"]
    return {n: os.path.join(out, f"{n}{suffix}") for n in names}, True


def run_project(
    source: Any,
    methods: Sequence[str],
    out: str,
    *,
    axis: str = "z",
    q: float | None = None,
    like: str = "numpy",
    dtype: str | None = None,
    fmt: str | None = None,
    compression: str | None = None,
    axes: str | None = None,
    memory_limit: int | str | None = None,
    workers: int | None = None,
    scheduler: str = "threads",
    overwrite: bool = False,
    progress: bool | None = None,
    prefilter: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Open `source`, project it with every method in one read, and write the results.

    `prefilter` = (filter name, parameters) filters the stack before projecting, in the same
    streamed pass (each chunk is read, filtered and projected without being stored).

    Returns a JSON-ready summary: inputs, outputs, methods, wall time, peak memory.
    """
    import zchunk
    from zchunk.io import _tiff

    t0 = time.perf_counter()
    names = [result_name(m, q) for m in methods]
    paths, _ = output_paths(out, names, fmt)
    _tiff.READ_STATS.reset()
    with compute_context(scheduler, workers=workers):
        stack = zchunk.open(source, axes=axes, memory_limit=memory_limit, whole=axis)
        if prefilter is not None:
            stack = zchunk.filter(stack, prefilter[0], **prefilter[1])  # type: ignore[arg-type]
        results = zchunk.project_many(
            stack,
            list(methods),
            axis=axis,
            q=q,
            like=like,
            dtype=dtype,
        )
        by_name = {result_name(m, q): r for m, r in results.items()}
        with compute_context(
            scheduler,
            workers=workers,
            progress=progress_enabled(progress),
            description=f"{'+'.join(names)} of {stack.name}",
            nbytes=int(stack.data.nbytes),
        ):
            written = zchunk.save_many(by_name, paths, overwrite=overwrite, compression=compression)
    wall = time.perf_counter() - t0
    return {
        "command": "project",
        "input": str(source),
        "input_shape": list(stack.shape),
        "input_axes": stack.axes,
        "input_bytes": int(stack.data.nbytes),
        "methods": list(methods),
        "axis": axis,
        "like": like,
        "outputs": {k: str(v) for k, v in written.items()},
        "output_shape": list(next(iter(results.values())).shape),
        "wall_s": round(wall, 3),
        "MB_per_s": round(stack.data.nbytes / wall / 1e6, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "bytes_read": _tiff.READ_STATS.bytes_read,
        "workers": workers,
        "scheduler": scheduler,
    }


def run_filter(
    source: Any,
    name: str,
    out: str,
    *,
    params: dict[str, Any],
    compression: str | None = None,
    axes: str | None = None,
    memory_limit: int | str | None = None,
    workers: int | None = None,
    scheduler: str = "threads",
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Open `source`, filter the whole volume chunk by chunk and write it to `out`.

    Returns a JSON-ready summary: input, output, filter, wall time, peak memory.
    """
    import zchunk
    from zchunk.io import _tiff

    t0 = time.perf_counter()
    _tiff.READ_STATS.reset()
    with compute_context(scheduler, workers=workers):
        stack = zchunk.open(source, axes=axes, memory_limit=memory_limit)
        result = zchunk.filter(stack, name, **params)  # type: ignore[arg-type]
        with compute_context(
            scheduler,
            workers=workers,
            progress=progress_enabled(progress),
            description=f"{name} of {stack.name}",
            nbytes=int(stack.data.nbytes),
        ):
            written = zchunk.save(result, out, overwrite=overwrite, compression=compression)
    wall = time.perf_counter() - t0
    return {
        "command": "filter",
        "input": str(source),
        "input_shape": list(stack.shape),
        "input_axes": stack.axes,
        "input_bytes": int(stack.data.nbytes),
        "filter": dict(result.attrs.get("filter", {"name": name})),
        "outputs": {name: str(written)},
        "output_dtype": str(result.dtype),
        "wall_s": round(wall, 3),
        "MB_per_s": round(stack.data.nbytes / wall / 1e6, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "bytes_read": _tiff.READ_STATS.bytes_read,
        "workers": workers,
        "scheduler": scheduler,
    }
