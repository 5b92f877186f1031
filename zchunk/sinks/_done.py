"""The record of a finished output: the settings it was made with, bound to the output.

A run that finishes an output leaves next to it ``.<name>.zchunk-done``, a JSON file with the
run's settings (what :func:`~zchunk.sinks._settings.settings_of` records for a partial output)
and the identity of the output it describes: its inode, size and modification time (a folder:
those of every file in it, digested). ``--resume`` keeps an existing output only when its
record describes the output as it is now and holds this run's settings (inputs unchanged):
an output replaced or rewritten after the run, one made with other parameters, and one with
no record (another program's, an older zchunk's) are refused, or written again with
``--overwrite``.

The commit writes the record first (a hidden name, fsync, rename: whole or absent), describing
the finished partial output, then renames the partial output onto the final name, which keeps
inodes and modification times. A kill between the two leaves a record that describes no file
under the final name (the partial output is resumed, or an old output refused); a kill after
the rename leaves a valid record. At no point does a record vouch for other pixels.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from typing import TYPE_CHECKING, Any

from zchunk._partial import partial_path
from zchunk.sinks._atomic import _commit, process_tag, remove_path
from zchunk.sinks._settings import settings_differ

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = [
    "DONE_SUFFIX",
    "commit_output",
    "done_path",
    "finished_reason",
    "output_identity",
    "read_done",
    "sync_tree",
]

#: Suffix of the record of a finished output (after a leading dot and the output's name).
DONE_SUFFIX = ".zchunk-done"


def done_path(final: Path) -> Path:
    """Return the record of finished output `final`: ``.<name>.zchunk-done`` next to it.

    Examples
    --------
    >>> from pathlib import Path
    >>> done_path(Path("res/max.tif")).as_posix()
    'res/.max.tif.zchunk-done'
    """
    return final.with_name(f".{final.name}{DONE_SUFFIX}")


def output_identity(path: Path) -> dict[str, Any]:
    """Return what identifies output `path` as written: inode, size, mtime (of every file).

    A folder is its inode and a digest of the relative path, inode, size and mtime of every
    file in it, so adding, removing, replacing or rewriting any file changes it. Renaming the
    output (the commit) does not.
    """
    st = os.lstat(path)
    ident: dict[str, Any] = {"inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not os.path.isdir(path) or os.path.islink(path):
        return ident
    digest = hashlib.sha256()
    files = 0
    for root, dirnames, names in os.walk(path):
        dirnames.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            fst = os.lstat(full)
            rel = os.path.relpath(full, path)
            digest.update(f"{rel}\0{fst.st_ino}\0{fst.st_size}\0{fst.st_mtime_ns}\n".encode())
            files += 1
    return {"inode": st.st_ino, "files": files, "digest": digest.hexdigest()}


def _write_json_atomically(path: Path, value: Any) -> None:
    tmp = path.with_name(f"{path.name}-new-{process_tag()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, json.dumps(value, indent=1, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def commit_output(
    done: Path,
    final: Path,
    settings: Mapping[str, Any],
    *,
    overwrite: bool,
    partial: Mapping[str, Any] | None = None,
) -> None:
    """Record finished output `done` with `settings`, then rename it onto `final`.

    `partial` is the settings of the partial output the output was made from when that is not
    `done` itself (the scratch array of a compressed TIFF): a resume that finds it left over
    deletes it. If the rename fails, the record is removed. The output is flushed to disk
    (fsync) before its record is written, and its folder after the rename, so that after a
    power cut its name holds either the complete output or nothing new.
    """
    record = done_path(final)
    sync_tree(done)  # the pixels on disk before a record vouches for them (power loss)
    value = {"settings": dict(settings), "output": output_identity(done), "partial": partial}
    _write_json_atomically(record, value)
    try:
        _commit(done, final, overwrite=overwrite)
    except BaseException:
        remove_path(record)
        raise
    sync_tree(final.parent, recursive=False)  # the new name


def sync_tree(path: Path, *, recursive: bool = True) -> None:
    """Flush file `path`, or folder `path` with every file and folder in it, to disk."""
    paths = [path]
    if recursive and path.is_dir():
        paths += sorted(path.rglob("*"))
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Start writing the dirty pages of open file `fd` to disk, without waiting (Linux).

    Bytes `offset` to `offset + length` (0: to the end). The commit flushes every file of an
    output (:func:`sync_tree`); when each block is handed to the disk as soon as it is stored,
    the disk writes overlap the computation and that fsync finds little left to write.
    ``POSIX_FADV_DONTNEED`` starts write-back of dirty pages (the kernel's ``WB_SYNC_NONE``) and
    drops only pages that are already clean. It waits for nothing and reports nothing, so,
    unlike the fsync of the flush thread that cd3b48b removed, it cannot take a write-back error
    from the commit: Linux keeps an error no fsync has seen for the next fsync of the file, even
    on a descriptor opened later (test_a_write_back_error_fails_the_run). The one window is the
    kernel's own: an inode evicted between a failed write-back and the commit loses its error,
    as it can for any page the kernel writes back by itself after 30 s. A no-op where
    ``posix_fadvise`` does not exist; its errors are ignored: a hint, not a write. The
    210 MB demo stack converted to zarr in 0.34 s instead of 0.43 s (medians of 9, two
    checkouts interleaved); its filters and TIFF outputs were unchanged within noise
    (benchmarks/RESULTS.md).
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def read_done(final: Path) -> dict[str, Any] | None:
    """Return the record of finished output `final`, or None if it has none (or it is torn)."""
    try:
        value = json.loads(done_path(final).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("settings"), dict):
        return None
    return value


def finished_reason(final: Path, settings: Mapping[str, Any]) -> str | None:
    """Say why `final` is not this run's finished output (`settings`), or return None if it is."""
    record = read_done(final)
    if record is None:
        return (
            "it has no zchunk record of the settings it was made with (another program's "
            "output, an older zchunk's, or a run that did not finish), so it cannot be verified"
        )
    try:
        now = output_identity(final)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if record.get("output") != now:
        return "it was changed or replaced after zchunk wrote it"
    return settings_differ(record["settings"], settings, recorded="finished output")


def stale_record_names(final: Path) -> tuple[str, ...]:
    """Prefixes of the temporaries of `final`'s record that killed runs may leave."""
    return (f"{done_path(final).name}-new-",)


def forget_orphan(final: Path) -> None:
    """Delete the record of `final` if neither `final` nor its partial output exists."""
    if not os.path.lexists(final) and not os.path.lexists(partial_path(final)):
        remove_path(done_path(final))
