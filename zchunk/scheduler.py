"""Where computations run: dask's local schedulers, a local cluster, or a running scheduler.

Library code never sets global dask configuration; the CLI and scripts choose the scheduler
here, inside ``with compute_context(...)`` blocks: dask's threads (default), a local
``dask.distributed`` cluster of processes, or a running scheduler by address or file. How far
a computation is, :mod:`zchunk.progress` shows.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import dask.local
import dask.threaded

from zchunk.budget import Budget
from zchunk.errors import OptionError
from zchunk.progress import ProgressBar, gather_with_progress

if TYPE_CHECKING:
    from collections.abc import Iterator

    from distributed import Client

__all__ = [
    "SCHEDULERS",
    "WORKER_OVERHEAD",
    "ProgressBar",
    "compute_context",
    "is_scheduler_address",
    "progress_enabled",
    "scheduler_label",
    "worker_memory_limit",
]

SCHEDULERS = ("threads", "processes", "synchronous")

#: Memory a worker process of ``scheduler="processes"`` gets on top of its share of the
#: budget: the interpreter, imports and compiled kernels (about 210 MiB measured), plus
#: headroom so that a worker within its share stays below the nanny's pause (80 %) and
#: terminate (95 %) thresholds.
WORKER_OVERHEAD = 512 * 2**20

#: The local schedulers as the functions dask calls. ``dask.config`` holds the function, not its
#: name: given a name (or nothing), every ``compute`` first imports ``distributed`` to look for
#: a client, which costs about 0.15 s in a fresh process (10 % of a 4 GB median projection).
_LOCAL_GETS: dict[str, Any] = {"threads": dask.threaded.get, "synchronous": dask.local.get_sync}

_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://\S+|[\w.-]+:\d+|\[[0-9a-fA-F:.]+\]:\d+)$")


def progress_enabled(flag: bool | None) -> bool:
    """``--progress``/``--no-progress`` if given, else on when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


def is_scheduler_address(scheduler: str) -> bool:
    """Whether `scheduler` is the address of a dask.distributed scheduler, not a local name.

    Examples
    --------
    >>> is_scheduler_address("tcp://10.0.0.5:8786"), is_scheduler_address("node7:8786")
    (True, True)
    >>> is_scheduler_address("threads"), is_scheduler_address("proceses")
    (False, False)
    """
    return bool(_ADDRESS.match(scheduler))


class _ClientScheduler:
    """A dask ``get`` function: run graphs on a distributed Client, with a progress bar.

    Set as ``dask.config`` ``scheduler`` inside :func:`compute_context`, so that every
    computation of the block (``da.store(..., compute=True)`` in the writers included) runs
    on the cluster without making the client the process-wide default.
    """

    def __init__(self, client: Client, bar: ProgressBar | None) -> None:
        self.client = client
        self.bar = bar

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # distributed hands the whole dask config to the processes it spawns (a nanny
        # restarting a killed worker of a LocalCluster started here): they get no scheduler,
        # as distributed does for its default client, instead of failing to pickle the client
        return type(None), ()

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        if self.bar is None:
            return self.client.get(dsk, keys, **kwargs)
        packed = self.client.get(dsk, keys, sync=False, **kwargs)
        return gather_with_progress(self.client, packed, self.bar)


def _address(client: Client) -> str:
    """Return the address of the scheduler that `client` is connected to."""
    if client.scheduler is None:
        msg = f"the dask client {client!r} is not connected to a scheduler"
        raise OptionError(msg)
    return str(client.scheduler.address)


def _active_client() -> Client | None:
    """Return the distributed Client this process made current or default, if any."""
    if "distributed" not in sys.modules:  # no client can exist without it
        return None
    from distributed import Client

    try:
        client = Client.current(allow_global=True)
    except ValueError:
        return None
    return client if client.status == "running" else None


def _check_scheduler(
    scheduler: str | Client | None, scheduler_file: str | os.PathLike[str] | None
) -> None:
    if scheduler is not None and scheduler_file is not None:
        msg = (
            f"scheduler={scheduler!r} and scheduler_file={os.fspath(scheduler_file)!r} both "
            "name a scheduler: give one of them"
        )
        raise OptionError(msg)
    if isinstance(scheduler, str) and not (
        scheduler in SCHEDULERS or is_scheduler_address(scheduler)
    ):
        msg = (
            f"scheduler={scheduler!r} is not one of {', '.join(SCHEDULERS)} nor a "
            "dask.distributed scheduler address such as tcp://10.0.0.5:8786"
        )
        raise OptionError(msg)
    if scheduler_file is not None and not os.path.isfile(scheduler_file):
        msg = (
            f"scheduler_file={os.fspath(scheduler_file)!r} does not exist: start the scheduler "
            "with `dask scheduler --scheduler-file FILE` on a file system this machine sees"
        )
        raise OptionError(msg)


def worker_memory_limit(memory_limit: int | str | Budget | None, workers: int) -> int:
    """Memory limit of each of `workers` local worker processes sharing the budget.

    Each worker gets an equal share of the budget (``memory_limit``, default: the smaller of
    1 GiB and a quarter of the RAM) plus :data:`WORKER_OVERHEAD` for the interpreter itself.

    Examples
    --------
    >>> worker_memory_limit("2GiB", 4) // 2**20
    1024
    """
    return Budget.parse(memory_limit, workers).bytes // workers + WORKER_OVERHEAD


def _file_address(scheduler_file: str | os.PathLike[str]) -> str:
    """Return the address in a scheduler file (``dask scheduler --scheduler-file``)."""
    import json

    try:
        with open(scheduler_file) as f:
            info = json.load(f)
        address = info["address"]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        msg = (
            f"scheduler_file={os.fspath(scheduler_file)!r} is not a dask scheduler file "
            f"(JSON with an 'address'; {type(exc).__name__}): start the scheduler with "
            "`dask scheduler --scheduler-file FILE`"
        )
        raise OptionError(msg) from None
    if not isinstance(address, str):
        msg = f"scheduler_file={os.fspath(scheduler_file)!r} has no scheduler address"
        raise OptionError(msg)
    return address


def _probe(address: str, where: str, timeout: float = 5.0) -> None:
    """Fail at once if nothing listens at a tcp:// `address` (distributed retries ~30 s)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or parts.hostname is None or parts.port is None:
        return
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
    except OSError as exc:
        msg = (
            f"cannot connect to the dask scheduler at {where}: {exc.strerror or exc}. Check "
            "that `dask scheduler` runs there and that this machine can reach it"
        )
        raise OptionError(msg) from None


def _connect(
    stack: contextlib.ExitStack,
    scheduler: str | None,
    scheduler_file: str | os.PathLike[str] | None,
    workers: int | None,
    memory_limit: int | str | Budget | None,
) -> Client:
    """Start or join the cluster that `scheduler` names; closed when `stack` closes."""
    from distributed import Client, LocalCluster

    if scheduler == "processes":
        n = workers or max(1, len(os.sched_getaffinity(0)))
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                memory_limit=worker_memory_limit(memory_limit, n),
                host="127.0.0.1",
                dashboard_address=None,  # no dashboard; its HTTP server on any free port:
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # 8787 may be taken
            )
        )
        local: Client = stack.enter_context(Client(cluster, set_as_default=False))
        return local
    where = f"the scheduler file {os.fspath(scheduler_file)!r}" if scheduler_file else scheduler
    address = _file_address(scheduler_file) if scheduler_file is not None else scheduler
    _probe(str(address), str(where))
    try:
        if scheduler_file is not None:
            client = Client(scheduler_file=os.fspath(scheduler_file), set_as_default=False)
        else:
            client = Client(scheduler, set_as_default=False)
    except OSError as exc:  # refused, timed out, unknown host
        msg = (
            f"cannot connect to the dask scheduler at {where}: {exc}. Check that "
            "`dask scheduler` runs there and that this machine can reach it"
        )
        raise OptionError(msg) from exc
    connected: Client = stack.enter_context(client)
    return connected


@dataclass(frozen=True, slots=True)
class _Session:
    """The scheduler of the innermost :func:`compute_context`, for nested contexts to reuse."""

    spec: tuple[Any, ...]
    client: Client | None


_SESSION: ContextVar[_Session | None] = ContextVar("zchunk_compute_session", default=None)


@contextlib.contextmanager
def compute_context(
    scheduler: str | Client | None = None,
    *,
    scheduler_file: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    memory_limit: int | str | Budget | None = None,
    progress: bool = False,
    description: str = "computing",
    nbytes: int = 0,
) -> Iterator[Client | None]:
    """Compute everything inside on `scheduler`, optionally showing a progress bar.

    Only the ``with`` block is affected: the scheduler is set with ``dask.config.set`` and a
    client zchunk connects (or a local cluster it starts) is closed at the end. A nested
    context naming the same scheduler (or none) reuses the outer one's client.

    Parameters
    ----------
    scheduler : str or distributed.Client, optional
        ``"threads"`` (dask's threaded scheduler), ``"synchronous"`` (one thread, for
        debugging), ``"processes"`` (a ``distributed.LocalCluster`` of `workers` processes
        with one thread each and ``memory_limit`` shared between them), the address of a
        running dask.distributed scheduler (``"tcp://10.0.0.5:8786"``), or a Client. None
        (default): the scheduler of an enclosing ``compute_context``, else the distributed
        Client active in this process (``with Client(...)``, or the last one created), else
        the scheduler set in ``dask.config``, else ``"threads"``.
    scheduler_file : str or os.PathLike, optional
        Connect to the scheduler described in this file (``dask scheduler --scheduler-file``);
        excludes `scheduler`.
    workers : int, optional
        Worker threads (``"threads"``) or processes (``"processes"``); default one per core.
        A remote cluster has the workers it has.
    memory_limit : int, str or Budget, optional
        Memory budget for all workers together (``"2GiB"``); with ``"processes"`` each
        worker's limit is its share plus :data:`WORKER_OVERHEAD`.
    progress : bool
        Show a rich progress bar on stderr (tasks done / total; under a Client, blocks).
    description, nbytes :
        Label of the bar and the input bytes, for the MB/s column.

    Yields
    ------
    distributed.Client or None
        The client the computations run on, None for local schedulers.

    Raises
    ------
    OptionError
        (a ValueError) If `scheduler` is unknown, both `scheduler` and `scheduler_file` are given, the file
        does not exist, `workers` is below 1, or the scheduler cannot be reached.

    Examples
    --------
    >>> with compute_context("synchronous"):
    ...     int(da.ones(10, chunks=5).sum().compute())
    10
    """
    _check_scheduler(scheduler, scheduler_file)
    if workers is not None and workers < 1:
        msg = f"workers={workers} must be at least 1"
        raise OptionError(msg)
    spec = (
        scheduler if isinstance(scheduler, str | None) else id(scheduler),
        None if scheduler_file is None else os.fspath(scheduler_file),
        workers,
        memory_limit,
    )
    outer = _SESSION.get()
    configured = dask.config.get("scheduler", None)
    with contextlib.ExitStack() as stack:
        client: Client | None = None
        local: str | None = None  # a local scheduler to set; None leaves dask's setting as is
        if not isinstance(scheduler, str | None):
            client = scheduler  # the caller's Client: used, not closed
        elif outer is not None and (spec == outer.spec or spec[:2] == (None, None)):
            client = outer.client  # nested: the enclosing context's scheduler
        elif scheduler_file is not None or (
            scheduler is not None and scheduler not in ("threads", "synchronous")
        ):
            client = _connect(stack, scheduler, scheduler_file, workers, memory_limit)
        elif scheduler is not None:
            local = scheduler
        elif isinstance(configured, _ClientScheduler):
            client = configured.client  # a compute_context entered in another thread
        else:
            client = _active_client()
            if client is None and not configured:
                local = "threads"
        token = _SESSION.set(_Session(spec, client))
        stack.callback(_SESSION.reset, token)
        config: dict[str, Any]
        if client is None:
            config = {} if local is None else {"scheduler": _LOCAL_GETS[local]}
            if workers is not None:
                config["num_workers"] = workers
            stack.enter_context(dask.config.set(config))
            if progress:
                stack.enter_context(ProgressBar(description, nbytes=nbytes))
        else:
            bar = ProgressBar(description, nbytes=nbytes) if progress else None
            if bar is not None:
                stack.callback(bar.end)
            config = {"scheduler": _ClientScheduler(client, bar)}
            threads = sum(client.nthreads().values())
            if threads:  # the planner sizes chunks for this many tasks at once
                config["num_workers"] = threads
            stack.enter_context(dask.config.set(config))
        yield client


def scheduler_label(scheduler: str | Client | None, client: Client | None) -> str:
    """Name the scheduler in a run summary: a local name or the scheduler's address."""
    if isinstance(scheduler, str):
        return scheduler
    if client is not None:
        return _address(client)
    configured = dask.config.get("scheduler", None)
    names = {get: name for name, get in _LOCAL_GETS.items()}
    if isinstance(configured, str):
        return configured
    return names.get(configured, "threads")
