"""Stale leftovers of killed runs next to an output, deleted before a run writes it.

A run killed at any moment leaves temporaries that no later run will finish: the page file of a
compressed TIFF being exported (``.<name>.zchunk-tmp-<pid>-<hex>``), a record being created
(``-new-`` names), an old output moved aside while a folder output was replaced (``-old-``:
put back if the output is missing), the block record of a file output whose commit was cut
after its rename, zarr chunk files half written inside a partial output, and the partial output
a finished output's commit left (its deletion cut short). This module owns recognising and
deleting them, and telling a record that is an interrupted replacement's; it runs under the
output's lock (:mod:`zchunk.sinks._lock`), so no live run can own what it deletes. Starting,
resuming and committing partial outputs is :mod:`zchunk.sinks._resume`'s.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from zchunk._partial import RECORD_NAME, partial_path, record_path
from zchunk.sinks._atomic import (
    STORE_TEMPORARY,
    TEMP_MARKER,
    abandon,
    process_tag,
    remove_path,
)
from zchunk.sinks._done import (
    forget_orphan,
    output_identity,
    read_done,
    stale_record_names,
)
from zchunk.sinks._markers import read_record
from zchunk.sinks._settings import settings_differ

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "clean_stale",
    "discard_leftover",
    "discard_partial_output",
    "interrupted_replacement",
    "remove_store_temporaries",
]


def clean_stale(final: Path) -> None:
    """Delete what killed runs left next to `final`; call with `final`'s lock held.

    Every run writing `final` holds its lock, so the temporaries of other processes are
    stale: the page file of a compressed TIFF (``.<name>.zchunk-tmp-<pid>-<hex>``) and a
    record being created. An old output moved aside (``-old-``) by a run killed before it
    moved the new one in is put back when `final` is missing, else deleted.
    """
    prefix = f".{final.name}{TEMP_MARKER}"
    record_tmp = (
        record_path(partial_path(final), folder=False).name + "-new-",
        *stale_record_names(final),
    )
    mine = f"-{process_tag()}-"  # this run's own (a pid alone may be a killed run's)
    try:
        names = os.listdir(final.parent)
    except FileNotFoundError:
        names = []
    for name in names:
        if mine in name:
            continue
        path = final.parent / name
        if name.startswith(f"{prefix}old-") and not os.path.lexists(final):
            with contextlib.suppress(OSError):
                os.rename(path, final)
        elif name.startswith((f"{prefix}tmp-", f"{prefix}old-", *record_tmp)):
            with contextlib.suppress(OSError):
                remove_path(path)
    inside = partial_path(final)
    record = record_path(inside, folder=False)
    if os.path.lexists(record) and not os.path.lexists(inside):
        remove_path(record)  # a file's commit killed after its rename, before this removal
    if inside.is_dir():
        for name in os.listdir(inside):
            if name.startswith(f"{RECORD_NAME}-new-") and mine not in name:
                with contextlib.suppress(OSError):
                    remove_path(inside / name)
    forget_orphan(final)


def remove_store_temporaries(folder: Path) -> None:
    """Delete the chunk files a killed run was writing, so that they do not end in the output."""
    for root, dirnames, names in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != RECORD_NAME]
        for name in names:
            if STORE_TEMPORARY.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))


def discard_partial_output(partial: Path, record: Path) -> None:
    """Delete partial output `partial` and its record `record` (and a file's, next to it)."""
    abandon(partial)
    remove_path(record)
    remove_path(record_path(partial, folder=False))  # a file's, whatever `partial` was


def discard_leftover(final: Path) -> None:
    """Delete the partial output of finished `final` if its commit left it (same settings).

    A partial output without a readable record (its deletion was cut short, or a run was
    killed before recording it) holds no finished block, so it is deleted too; one recorded
    with other settings (an interrupted run with other options) is kept for its own resume.
    """
    partial = partial_path(final)
    if not os.path.lexists(partial):
        return
    state = read_record(record_path(partial, folder=os.path.isdir(partial)))
    made_from = (read_done(final) or {}).get("partial")
    if state is None or (made_from and settings_differ(state[0], made_from) is None):
        discard_partial_output(partial, record_path(partial, folder=True))


def interrupted_replacement(final: Path) -> Path | None:
    """Return the partial output of `final` if the record of `final` is the partial's.

    A run replacing an existing output records its finished partial output under the final
    name's record, then renames it in; killed between the two, the record describes the
    partial output (or, for a compressed TIFF, a page file exported from it) rather than the
    existing output. Call with `final`'s lock held.
    """
    partial = partial_path(final)
    done = read_done(final)
    if done is None or not os.path.lexists(partial):
        return None
    with contextlib.suppress(OSError):
        if output_identity(partial) == done.get("output"):
            return partial  # the partial output itself was recorded (TIFF, zarr)
    state = read_record(record_path(partial, folder=os.path.isdir(partial)))
    made_from = done.get("partial")
    if state is not None and made_from and settings_differ(state[0], made_from) is None:
        return partial  # the output was exported from this scratch array (compressed TIFF)
    return None
