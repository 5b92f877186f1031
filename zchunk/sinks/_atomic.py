"""Where outputs go: path checks, temporary sibling names and the final atomic rename.

Every sink writes into a temporary sibling of the output (same folder, so the final rename
never crosses a file system) and renames it onto the output name only once everything is
written. Whatever goes wrong before that, ``KeyboardInterrupt`` included, the temporary is
removed and the exception re-raised, so a failed run leaves neither a half-written output nor
litter. Resumable outputs are also flushed to disk before they are recorded and renamed (see
:mod:`zchunk.sinks._done`); other temporaries are not ``fsync``-ed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zchunk.errors import OptionError, OutputExistsError, OutputNotWritableError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from zchunk._types import PathLike

__all__ = [
    "GuardedTarget",
    "OutputAppearedError",
    "abandon",
    "atomic_output",
    "deferred_interrupt",
    "prepare_output",
    "process_tag",
    "remove_path",
    "sibling_name",
    "store_temporary",
]

#: Marker in the names of every temporary that a sink creates next to its output.
TEMP_MARKER = ".zchunk-"

#: zarr's local store writes a chunk to ``<key>.<32 hex digits>.partial``, then renames it; so
#: does :func:`zchunk.sinks._written.write_direct` (:func:`store_temporary`). A killed run's
#: are deleted on resume (:func:`zchunk.sinks._stale.remove_store_temporaries`).
STORE_TEMPORARY = re.compile(r".*\.[0-9a-f]{32}\.partial")


def store_temporary(path: str) -> str:
    """Return a new name to write file `path` under before renaming it, as zarr's store does."""
    return f"{path}.{uuid.uuid4().hex}.partial"


def _new_tag() -> str:
    return f"{os.getpid()}.{secrets.token_hex(3)}"


#: This process's mark in the names of its temporaries: its pid and a random nonce, since pids
#: are reused (every run in a container may be pid 1) and a killed run's leftovers must not
#: pass for this run's own. Renewed in a forked child.
_PROCESS_TAG = _new_tag()


def _renew_tag() -> None:
    global _PROCESS_TAG
    _PROCESS_TAG = _new_tag()


os.register_at_fork(after_in_child=_renew_tag)


def process_tag() -> str:
    """Return this process's mark in temporary names (pid and nonce), e.g. ``"4242.a1b2c3"``."""
    return _PROCESS_TAG


def sibling_name(final: Path, kind: str) -> Path:
    """Return a fresh hidden name next to `final`, unique to this process and call.

    Parameters
    ----------
    final : Path
        The output the temporary belongs to.
    kind : str
        What the temporary is for: ``"tmp"`` (the output being written), ``"old"`` (a replaced
        output waiting for deletion) or ``"scratch"`` (an intermediate).

    Returns
    -------
    Path
        ``<folder>/.<name>.zchunk-<kind>-<pid>.<nonce>-<random>`` (see :func:`process_tag`).

    Examples
    --------
    >>> p = sibling_name(Path("results/max.tif"), "tmp")
    >>> p.parent.name, p.name.startswith(".max.tif.zchunk-tmp-")
    ('results', True)
    """
    token = secrets.token_hex(4)
    return final.with_name(f".{final.name}{TEMP_MARKER}{kind}-{process_tag()}-{token}")


def remove_path(path: Path) -> None:
    """Delete a file, symlink or folder tree if it exists; never raise for a missing path."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


# When one dask task fails, the scheduler raises at once while other tasks of the same store
# may still be running in its worker threads; one finishing after the temporary output was
# deleted would re-create it (zarr creates missing folders). So writes go through
# GuardedTarget, which counts the writes in flight per temporary, and abandon() refuses new
# writes, waits for those in flight, and only then deletes. Writes from other processes (the
# process and distributed schedulers) are refused once the temporary is gone.
_WRITES = threading.Condition()
_IN_FLIGHT: dict[str, int] = {}
_ABANDONED: set[str] = set()
#: Longest wait, in seconds, for the writes in flight when an output is abandoned.
ABANDON_TIMEOUT = 600.0


class GuardedTarget:
    """A ``dask.array.store`` target that writes to `target` only while `root` is wanted.

    Parameters
    ----------
    target : object with ``__setitem__``
        The real target (a zarr array, a file region writer).
    root : Path
        The temporary file or folder that `target` writes into.
    fence : zchunk.sinks._lock.Fence, optional
        The run's hold on the output's lock (``fence_of(root)``): every write first checks it.
    """

    def __init__(self, target: Any, root: Path, fence: Any = None) -> None:
        self.target = target
        self.root = os.fspath(root)
        self.shape = target.shape
        self.dtype = target.dtype
        self.ndim = len(target.shape)
        self.fence = fence  # the run's hold on the output's lock, if any

    def check_fence(self) -> None:
        """Raise OSError if the run no longer holds the output's lock (see ``Fence``).

        A worker of a killed run must not write into the partial output of the run that took
        the output over (it would mix the two runs' blocks): it finds the lock file signed
        with another token, or gone.
        """
        if self.fence is not None and not self.fence.held():
            msg = (
                f"the output lock {self.fence.lock!r} is no longer this run's (the run was "
                f"stopped, or another run took the output over): nothing more is written "
                f"into {self.root!r}"
            )
            raise OSError(errno.ENOLCK, msg)

    def __setitem__(self, key: Any, value: Any) -> None:
        with _WRITES:
            if self.root in _ABANDONED or not os.path.lexists(self.root):
                msg = f"the temporary output {self.root!r} was abandoned after an error"
                raise FileNotFoundError(msg)
            _IN_FLIGHT[self.root] = _IN_FLIGHT.get(self.root, 0) + 1
        try:
            self.check_fence()
            self.target[key] = value
        finally:
            with _WRITES:
                _IN_FLIGHT[self.root] -= 1
                if not _IN_FLIGHT[self.root]:
                    del _IN_FLIGHT[self.root]
                _WRITES.notify_all()


def abandon(root: Path) -> None:
    """Delete the temporary `root` once no :class:`GuardedTarget` write into it is running."""
    key = os.fspath(root)
    with _WRITES:
        _ABANDONED.add(key)
        _WRITES.wait_for(lambda: key not in _IN_FLIGHT, timeout=ABANDON_TIMEOUT)
    try:
        for delay in (0.01, 0.1, 0.5):
            try:
                remove_path(root)
                break
            except OSError:  # a write from another process landed while deleting: retry
                time.sleep(delay)
        else:
            remove_path(root)
    finally:
        with _WRITES:
            _ABANDONED.discard(key)


def _source_paths(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    sources = attrs.get("source_paths", ())
    if isinstance(sources, str | os.PathLike):
        sources = (sources,)
    return tuple(os.fspath(s) for s in sources if s)


def _is_within(child: str, parent: str) -> bool:
    """Whether real path `child` is `parent` or lies inside it."""
    try:
        return os.path.commonpath([child, parent]) == parent
    except ValueError:  # different drives on Windows
        return False


def _check_not_an_input(final: Path, sources: Iterable[str]) -> None:
    out = os.path.realpath(final)
    for source in sources:
        src = os.path.realpath(source)
        same = _is_within(out, src)  # the input itself, or a file inside an input folder
        if not same and os.path.lexists(final) and os.path.exists(source):
            with contextlib.suppress(OSError):
                same = os.path.samefile(final, source)  # hard links, case-insensitive names
        if same:
            msg = (
                f"writing {os.fspath(final)!r} would overwrite the input {source!r}: "
                "choose another output path (overwrite=True / --overwrite never replaces an input)"
            )
            raise OutputExistsError(msg)
        if _is_within(src, out):
            msg = (
                f"writing {os.fspath(final)!r} would replace the folder holding the input "
                f"{source!r}: choose another output path"
            )
            raise OutputExistsError(msg)


class OutputAppearedError(OutputExistsError):
    """The output exists where the run expected none (resuming: where it found none).

    A resuming run that meets it checks whether it is its own finished output, written by a
    run with the same settings meanwhile (:func:`zchunk.sinks._write.write`).
    """


def _exists_message(final: Path) -> str:
    return f"the output {os.fspath(final)!r} already exists: pass overwrite=True / --overwrite"


def prepare_output(path: PathLike, attrs: Mapping[str, Any], *, overwrite: bool) -> Path:
    """Check that `path` may be written and create its parent folder.

    Parameters
    ----------
    path : str or os.PathLike
        The output file or folder.
    attrs : Mapping
        The stack's attributes; ``attrs["source_paths"]`` lists the inputs, which are never
        overwritten.
    overwrite : bool
        Whether an existing output (that is not an input) may be replaced.

    Returns
    -------
    Path
        `path` as an absolute :class:`~pathlib.Path`.

    Raises
    ------
    OutputExistsError
        If `path` exists and `overwrite` is false, or if `path` is an input, lies inside an
        input folder, or is a folder holding an input (whatever `overwrite` says).
    """
    final = Path(os.path.abspath(os.fspath(path)))
    if not final.name or final.name in {".", ".."}:
        msg = f"the output path {os.fspath(path)!r} does not name a file or folder"
        raise OptionError(msg)
    _check_not_an_input(final, _source_paths(attrs))
    if os.path.lexists(final) and not overwrite:
        raise OutputAppearedError(_exists_message(final))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise not_writable(final, exc) from None
    return final


def not_writable(final: Path, exc: OSError) -> OSError:
    """Return the error for an output whose folder refuses a write (`exc`), if it is that."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg = (
            f"cannot write {os.fspath(final)!r}: {exc.strerror} ({os.fspath(final.parent)!r}); "
            "choose a folder you can write to"
        )
        err = OutputNotWritableError(msg)
        err.errno = exc.errno  # str(err) stays `msg`
        return err
    return exc


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back during the body, then deliver it: a commit is never cut.

    A commit records an output and renames it onto its name, then deletes what it was made
    from; cut in between, the output would be missing its record, or a note would offer to
    resume what is already finished. So SIGINT received during the body is delivered once the
    body is done (``KeyboardInterrupt`` with Python's default handler). Outside the main
    thread, where no signal handler runs, or under a handler installed from outside Python,
    the body runs as is.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None
    ):
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)


def _commit(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """Move the finished temporary `tmp` onto `final`."""
    exists = os.path.lexists(final)
    if exists and not overwrite:  # appeared while we were writing
        raise OutputAppearedError(_exists_message(final))
    if not exists or not (tmp.is_dir() or (final.is_dir() and not final.is_symlink())):
        os.replace(tmp, final)  # atomic for a file, and for a folder onto a missing name
        return
    # A folder is involved on either side: os.replace cannot swap it, so move the old
    # output aside, move the new one in, and only then delete the old one.
    old = sibling_name(final, "old")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    remove_path(old)


@contextlib.contextmanager
def atomic_output(
    final: Path, *, overwrite: bool, commit: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it onto `final` when the block succeeds.

    Parameters
    ----------
    final : Path
        The output, as returned by :func:`prepare_output`.
    overwrite : bool
        Whether an output that appeared in the meantime may be replaced.
    commit : callable, optional
        Called with the finished temporary to move it onto `final` (to record it first, see
        :func:`zchunk.sinks._done.commit_output`); default: rename it.

    Yields
    ------
    Path
        A path that does not exist yet, in the folder of `final`; the caller creates a file or
        a folder there.

    Raises
    ------
    OutputExistsError
        If `final` appeared during the write and `overwrite` is false.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_output(folder / "a.txt", overwrite=False) as tmp:
    ...     _ = tmp.write_text("done")
    >>> sorted(p.name for p in folder.iterdir())
    ['a.txt']
    >>> shutil.rmtree(folder)
    """
    tmp = sibling_name(final, "tmp")
    try:
        yield tmp
        if commit is None:
            _commit(tmp, final, overwrite=overwrite)
        else:
            commit(tmp)
    except BaseException:
        abandon(tmp)
        raise
