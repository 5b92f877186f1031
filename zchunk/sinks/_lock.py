"""One run per output: an exclusive lock next to the output, held for the whole run.

Two runs writing the same output would mix their blocks into one partial output (or one would
discard the partial output the other is writing). So every write first takes
``.<name>.zchunk-lock`` next to the output: a file locked with ``flock`` and holding the host,
pid and start time of its owner. The kernel releases the lock when the process dies, however
it dies (``kill -9`` included), so a lock is never stale on a local file system; the file
itself stays and is reused. A second run on the same output, whatever its options, is refused
with a one-line error naming the owner.

On a shared file system (NFS), ``flock`` is forwarded to the server (Linux NFS clients map it
onto POSIX locks), so it holds across machines. Where locking is not supported at all (some
FUSE file systems), the lock file's contents alone are the lock: a run whose owner is on this
host and no longer alive is taken over, and one on another host is refused; if that run is
gone (a crashed machine), delete the lock file named in the message.

A run killed while the workers of a dask cluster hold some of its blocks does not stop those
workers: they write the blocks later, perhaps into the partial output of a run that took the
output over meanwhile. So the lock file also carries a random token of its run, and every block
write (and its marker) first checks that the lock file still carries it (:class:`Fence`); the
token is flushed (fsync) before the lock is handed out, so workers on other hosts of a shared
file system read it. A write that passed its check just before the run was killed still lands
(the check and the write are two steps): see the README's reliability section.

The lock is reentrant within a thread (``save_many`` locks all its outputs, then writes each
with ``save``, which locks it again).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zchunk._partial import PARTIAL_SUFFIX
from zchunk.errors import OutputInUseError
from zchunk.sinks._atomic import not_writable

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["LOCK_SUFFIX", "Fence", "fence_of", "lock_path", "output_lock"]

#: Suffix of the lock file of an output (after a leading dot and the output's name).
LOCK_SUFFIX = ".zchunk-lock"

_GUARD = threading.Lock()
#: Locks this process holds: lock file -> [file descriptor, depth, owning thread].
_HELD: dict[str, list[int]] = {}
#: The token each lock this process holds carries (see :class:`Fence`).
_TOKENS: dict[str, str] = {}


def lock_path(final: Path) -> Path:
    """Return the lock file of output `final`: ``.<name>.zchunk-lock`` next to it.

    Examples
    --------
    >>> from pathlib import Path
    >>> lock_path(Path("res/max.tif")).as_posix()
    'res/.max.tif.zchunk-lock'
    """
    return final.with_name(f".{final.name}{LOCK_SUFFIX}")


def _holder_text(token: str) -> bytes:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": since, "token": token}
    return json.dumps(holder).encode()


@dataclass(frozen=True, slots=True)
class Fence:
    """Whether the run that took an output's lock still holds it: checked before each write.

    A run's blocks may be written by processes that outlive it (the workers of a dask cluster
    go on with the blocks they hold when the run is killed), and by then a later run may own
    the output and its partial output. So every block write first checks that the lock file
    still carries the token the run wrote into it (a fencing token); picklable, so the check
    runs on the worker.

    Attributes
    ----------
    lock : str
        The lock file.
    token : str
        The random token of the run that holds it.
    """

    lock: str
    token: str

    def held(self) -> bool:
        """Whether the lock file still carries this run's token."""
        try:
            with open(self.lock, "rb") as fh:
                holder = json.loads(fh.read(4096) or b"null")
        except (OSError, ValueError):
            return False
        return isinstance(holder, dict) and holder.get("token") == self.token


def fence_of(partial: Path) -> Fence | None:
    """Return the fence of the output whose partial output is `partial` if its lock is held here.

    None when this process does not hold that output's lock.

    Examples
    --------
    >>> from pathlib import Path
    >>> fence_of(Path("/res/.max.tif.zchunk-partial")) is None  # not locked here
    True
    """
    name = partial.name
    if not (name.startswith(".") and name.endswith(PARTIAL_SUFFIX)):
        return None
    lock = os.fspath(lock_path(partial.with_name(name[1 : -len(PARTIAL_SUFFIX)])))
    with _GUARD:
        token = _TOKENS.get(lock)
    return None if token is None else Fence(lock, token)


def _read_holder(fd: int) -> dict[str, object]:
    with contextlib.suppress(OSError, ValueError):
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
        if isinstance(holder, dict):
            return holder
    return {}


def _in_use(final: Path, lock: Path, holder: dict[str, object]) -> OutputInUseError:
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
        if holder
        else "another run that is starting"
    )
    msg = (
        f"the output {os.fspath(final)!r} is in use by {who}: wait for that run to end "
        f"(if it is gone, e.g. its machine crashed, delete {os.fspath(lock)!r})"
    )
    return OutputInUseError(msg)


def _alive_here(holder: dict[str, object]) -> bool:
    """Whether `holder` may still run: on another host (unknown), or a live pid here."""
    if holder.get("host") != socket.gethostname():
        return bool(holder)
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire(final: Path, lock: Path, token: str) -> int:
    """Open, lock and sign the lock file of `final` with `token`; return its descriptor."""
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise not_writable(final, exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _in_use(final, lock, _read_holder(fd)) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                # no locks on this file system: the contents are the lock
                holder = _read_holder(fd)
                if holder.get("pid") != os.getpid() and _alive_here(holder):
                    raise _in_use(final, lock, holder) from None
            # the previous owner may have deleted the file between our open and our lock
            try:
                current = os.stat(lock)
            except FileNotFoundError:
                current = None
            if current is None or not os.path.samestat(current, os.fstat(fd)):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_text(token), 0)
            # on the server before any worker reads the token: an NFS client holds a write
            # back until fsync or close, and this run keeps the file open until it ends
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return fd
    msg = f"could not take the lock {os.fspath(lock)!r}: it keeps being replaced"
    raise OutputInUseError(msg)


@contextlib.contextmanager
def output_lock(final: Path) -> Iterator[None]:
    """Hold the lock of output `final` for the body; refuse if another run holds it.

    Raises
    ------
    OutputInUseError
        If another process (or another thread of this one) is writing `final`.
    """
    lock = lock_path(final)
    key = os.fspath(lock)
    me = threading.get_ident()
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            if held[2] != me:
                msg = f"the output {os.fspath(final)!r} is being written by another thread"
                raise OutputInUseError(msg)
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with _GUARD:
                held[1] -= 1
        return
    token = secrets.token_hex(8)
    fd = _acquire(final, lock, token)
    with _GUARD:
        _HELD[key] = [fd, 1, me]
        _TOKENS[key] = token
    try:
        yield
    finally:
        with _GUARD:
            del _HELD[key]
            del _TOKENS[key]
        # delete while still holding it; a run that opened the file meanwhile sees it gone
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
