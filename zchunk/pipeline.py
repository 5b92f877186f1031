"""The open -> ops -> sink jobs behind the CLI: project, filter and convert, with a run summary.

Every job takes its shared options as one :class:`~zchunk._options.RunOptions` and runs the
same sequence, owned by :class:`_Run`: choose the scheduler (:mod:`zchunk.scheduler`), open
the input planned for what it is for, compute and write with a progress bar (removing output
folders the run created if it fails), then summarise.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any, Self

from zchunk._options import RunOptions
from zchunk.chunking import PROJECTION, Purpose
from zchunk.errors import OptionError
from zchunk.scheduler import (
    SCHEDULERS,
    WORKER_OVERHEAD,
    ProgressBar,
    compute_context,
    is_scheduler_address,
    progress_enabled,
    scheduler_label,
    worker_memory_limit,
)
from zchunk.sinks import FORMATS, SUFFIXES

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType

    from distributed import Client

    from zchunk.stack import Stack

__all__ = [
    "FORMATS",
    "SCHEDULERS",
    "WORKER_OVERHEAD",
    "ProgressBar",
    "RunOptions",
    "compute_context",
    "is_scheduler_address",
    "output_paths",
    "peak_rss_mb",
    "progress_enabled",
    "result_name",
    "run_convert",
    "run_filter",
    "run_project",
    "worker_memory_limit",
]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, from the OS (MiB).

    Linux's ``VmHWM`` (the high-water mark of this address space): unlike ``ru_maxrss``, it
    does not inherit the resident size the parent had when it forked this process.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # not Linux: getrusage, which is per process elsewhere
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result_name(method: str, q: float | None) -> str:
    """File stem of a projection result: ``max``, ``median``, ``percentile95``.

    Examples
    --------
    >>> result_name("max", None), result_name("percentile", 99.5)
    ('max', 'percentile99.5')
    """
    from zchunk.ops._methods import METHODS

    spec = METHODS.get(method)
    return spec.result_name(q) if spec is not None else method


def output_paths(out: str, names: Sequence[str], fmt: str | None) -> tuple[dict[str, str], bool]:
    """Where each result goes: `out` itself for one result named with a suffix, else a folder.

    One result and an output suffix (``.tif``, ``.zarr``...) means `out` is the output, even
    when a folder of that name exists (it is then replaced with ``--overwrite``, or refused).
    Returns the paths by name and whether `out` is a folder of results.

    Examples
    --------
    >>> output_paths("a.zarr", ["max"], None)
    ({'max': 'a.zarr'}, False)
    >>> output_paths("res", ["max", "min"], None)[0]["min"]
    'res/min.tif'
    """
    if fmt is not None and fmt not in FORMATS:
        msg = f"format {fmt!r} is not one of {', '.join(FORMATS)}"
        raise OptionError(msg)
    named = out.lower().endswith(SUFFIXES)
    if len(names) == 1 and named:
        return {names[0]: out}, False
    if named and not os.path.isdir(out):
        msg = (
            f"{len(names)} results need a folder for -o, not the file name {out!r}: "
            "each result is written as <method>.tif inside it"
        )
        raise OptionError(msg)
    suffix = FORMATS[fmt or "tif"]
    return {n: os.path.join(out, f"{n}{suffix}") for n in names}, True


@contextlib.contextmanager
def _no_empty_new_folders(paths: Sequence[str]) -> Iterator[None]:
    """Remove the output folders this run creates if it fails and leaves them empty.

    A run that stops at a decode error must not leave an empty results folder behind; a
    folder holding a partial output (to resume) is kept.
    """
    new: set[str] = set()
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        while folder and not os.path.exists(folder):
            new.add(folder)
            folder = os.path.dirname(folder)
    try:
        yield
    except BaseException:
        for folder in sorted(new, key=len, reverse=True):  # innermost first
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty
        raise


def _imagej_readable(
    result: Stack, path: str, method: str, dtype: Any, n: int, notes: list[str]
) -> Stack:
    """Return `result` as float32 when it goes to a TIFF that ImageJ could not open (64-bit).

    ImageJ opens 8-, 16- and 32-bit TIFFs only. A 64-bit result (NumPy's float64 mean,
    median, std, percentile; uint64/int64 sums) is written as float32, exactly when float32
    holds its values (the median of 8/16-bit data); otherwise a note says so. ``--dtype
    float64`` keeps float64 (for readers other than ImageJ).
    """
    import numpy as np

    from zchunk.ops.projection import exact_in_float32

    if not path.lower().endswith((".tif", ".tiff")) or result.dtype.itemsize < 8:
        return result
    if not exact_in_float32(method, dtype, n):
        notes.append(
            f"{os.path.basename(path)}: {result.dtype} values written as float32, rounded to "
            "7 significant digits (ImageJ opens no 64-bit TIFF); --dtype float64 keeps them"
        )
    return result.replace(data=result.data.astype(np.float32))


class _Run:
    """One job: its options, budget, scheduler, clock and read counts (a context manager).

    Entering resets the read counts, parses the budget and enters the job's
    :func:`compute_context`; :meth:`open`, :meth:`computing` and :meth:`summary` are the
    steps every job takes with them.
    """

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.budget = options.budget()
        self.client: Client | None = None
        self.label = ""
        self.t0 = time.perf_counter()
        self._stack = contextlib.ExitStack()

    def _where(self) -> dict[str, Any]:
        o = self.options
        return {
            "workers": o.workers,
            "memory_limit": self.budget,
            "scheduler_file": o.scheduler_file,
        }

    def __enter__(self) -> Self:
        from zchunk.io import _tiff

        _tiff.READ_STATS.reset()
        with self._stack as stack:
            self.client = stack.enter_context(
                compute_context(self.options.scheduler, **self._where())
            )
            self.label = scheduler_label(self.options.scheduler, self.client)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._stack.__exit__(kind, exc, tb)

    def open(
        self, source: Any, prefilter: tuple[str, dict[str, Any]] | None, *, whole: str
    ) -> tuple[Stack, Stack]:
        """Open `source` (planned for the filter, if any) and apply the filter: (opened, result).

        The chunks are planned for what they are for (:class:`zchunk.chunking.Purpose`): for a
        filter, its halo; ``zchunk.filter`` then plans them as from Python, re-planning (a cheap
        reopen: 2-3 ms for a 954-page TIFF) when the filter streams from the file and needs
        less memory. A cluster's threads share the budget unless ``workers`` says.
        """
        import zchunk
        from zchunk.io import open_planned

        budget = self.budget
        threads = sum(self.client.nthreads().values()) if self.client is not None else 0
        if threads and self.options.workers is None:
            budget = budget.with_workers(threads)
        purpose = PROJECTION
        if prefilter is not None:
            from zchunk.ops.filters import halo_pixels

            purpose = Purpose.filter(halo_pixels(prefilter[0], **prefilter[1]))
        stack = open_planned(self.options.open_args(source, budget), whole=whole, purpose=purpose)
        if prefilter is None:
            return stack, stack
        return stack, zchunk.filter(stack, prefilter[0], **prefilter[1])  # type: ignore[arg-type]

    @contextlib.contextmanager
    def computing(self, description: str, stack: Stack, outputs: Sequence[str]) -> Iterator[None]:
        """Compute inside with the progress bar over `stack`'s bytes; clean new empty folders."""
        with (
            compute_context(
                self.options.scheduler,
                **self._where(),
                progress=progress_enabled(self.options.progress),
                description=description,
                nbytes=int(stack.data.nbytes),
            ),
            _no_empty_new_folders(outputs),
        ):
            yield

    def summary(
        self, command: str, source: Any, stack: Stack, written: dict[str, Any], **fields: Any
    ) -> dict[str, Any]:
        """Return the JSON-ready summary of the job (`stack` is the input as opened)."""
        from zchunk.io import _tiff

        wall = time.perf_counter() - self.t0
        return {
            "command": command,
            "input": str(source),
            "input_shape": list(stack.shape),
            "input_axes": stack.axes,
            "input_bytes": int(stack.data.nbytes),
            "outputs": {k: str(v) for k, v in written.items()},
            "wall_s": round(wall, 3),
            "MB_per_s": round(stack.data.nbytes / wall / 1e6, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            # counted in this process: unknown when workers in other processes read
            "bytes_read": None if self.client is not None else _tiff.READ_STATS.bytes_read,
            "workers": self.options.workers,
            "scheduler": self.label,
            **fields,
        }


def run_project(
    source: Any,
    methods: Sequence[str],
    out: str,
    options: RunOptions | None = None,
    *,
    axis: str = "z",
    q: float | None = None,
    like: str = "numpy",
    dtype: str | None = None,
    fmt: str | None = None,
    prefilter: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Open `source`, project it with every method in one read, and write the results.

    `options` say how to read, compute and write (resume, overwrite, scheduler...).
    `prefilter` = (filter name, parameters) filters the stack before projecting, in the same
    streamed pass (each chunk is read, filtered and projected without being stored).

    Returns a JSON-ready summary: inputs, outputs, methods, wall time, peak memory.
    """
    import zchunk

    names = [result_name(m, q) for m in methods]
    paths, _ = output_paths(out, names, fmt)
    with _Run(options or RunOptions()) as run:
        source_stack, stack = run.open(source, prefilter, whole=axis)
        results = zchunk.project_many(stack, list(methods), axis=axis, q=q, like=like, dtype=dtype)
        by_name = {result_name(m, q): r for m, r in results.items()}
        notes: list[str] = []
        if dtype is None:
            n = stack.sizes[axis]
            for (method, result), name in zip(results.items(), names, strict=True):
                by_name[name] = _imagej_readable(result, paths[name], method, stack.dtype, n, notes)
        description = f"{'+'.join(names)} of {source_stack.name}"
        with run.computing(description, source_stack, list(paths.values())):
            written = zchunk.save_many(by_name, paths, **run.options.save_options())
    return run.summary(
        "project",
        source,
        source_stack,
        written,
        methods=list(methods),
        axis=axis,
        like=like,
        output_shape=list(next(iter(results.values())).shape),
        output_dtypes={k: str(v.dtype) for k, v in by_name.items()},
        notes=notes,
    )


def run_filter(
    source: Any,
    name: str,
    out: str,
    options: RunOptions | None = None,
    *,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Open `source`, filter the whole volume chunk by chunk and write it to `out`.

    `params` are the filter's (sigma, size...); `options` say how to read, compute and write.

    Returns a JSON-ready summary: input, output, filter, wall time, peak memory.
    """
    import zchunk

    with _Run(options or RunOptions()) as run:
        stack, result = run.open(source, (name, params), whole="z")
        with run.computing(f"{name} of {stack.name}", stack, [out]):
            written = zchunk.save(result, out, **run.options.save_options())
    return run.summary(
        "filter",
        source,
        stack,
        {name: written},
        filter=dict(result.attrs.get("filter", {"name": name})),
        output_dtype=str(result.dtype),
    )


def run_convert(source: Any, out: str, options: RunOptions | None = None) -> dict[str, Any]:
    """Open `source` and write it to `out` (format from the suffix), pixels unchanged.

    Axes, calibration and channel names and colours go with the pixels; the dtype is kept
    (a 64-bit input gives a TIFF that ImageJ cannot open: convert to zarr instead). Resumable
    as every output; ``options.pyramid`` adds levels to an OME-Zarr output.

    Returns a JSON-ready summary: input, output, wall time, peak memory.
    """
    import zchunk

    with _Run(options or RunOptions()) as run:
        stack, _ = run.open(source, None, whole="z")
        with run.computing(f"convert {stack.name}", stack, [out]):
            written = zchunk.save(stack, out, **run.options.save_options())
    return run.summary(
        "convert", source, stack, {"convert": written}, output_dtype=str(stack.dtype)
    )
