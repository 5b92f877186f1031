"""Block markers: what a resumable write recorded of each finished block, and their check.

A partial output's record holds its settings (``settings.json``) and one marker per finished block (``blocks/<i>.<j>.<k>``, see
:mod:`zchunk.sinks._resume`), made after the block is written. The marker says what was
written for the block, as ``"<bytes> <crc32>"``:

- a zarr array: the files of the block (its shard for zarr v3, its plane chunks for zarr v2,
  end to end), compressed: the bytes the run handed its local store (see
  :mod:`zchunk.sinks._written`), or else the files as read back from disk;
- a region of a file (an uncompressed TIFF): the block's pixels as laid out in the file, as
  the run wrote them.

A marker taken from the bytes handed to the store vouches for what was computed: a file that
differs from them on disk (a short write, another writer) fails the check on resume.

A marker is written to a hidden name and renamed, so it is whole or absent. On resume, every
marker is checked against the storage before its block is skipped: a marker that is empty or
unreadable, or whose storage differs (the size first, then the crc32 of exactly those bytes),
is deleted and its block computed again. The stored files of every block that is computed
again are deleted first: zarr rewrites a shard by reading what it holds, and a damaged shard
would fail that read (an LZ4 block with a flipped byte does not decode). Before the partial output is renamed onto its final
name, every block must have a marker.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "BLOCKS_NAME",
    "SETTINGS_NAME",
    "block_name",
    "check_complete",
    "read_markers",
    "read_record",
    "verified",
    "write_marker",
    "written_digest",
]

#: In a partial output's record folder: its settings, and the folder of block markers.
SETTINGS_NAME = "settings.json"
BLOCKS_NAME = "blocks"

Index = tuple[int, ...]
Digest = tuple[int, int]
_READ = 1 << 22  # read files back in pieces of 4 MiB


def read_record(record: str | os.PathLike[str]) -> tuple[dict[str, Any], set[Index]] | None:
    """Return (settings, finished block indices) of a record, or None if there is none."""
    try:
        with open(os.path.join(record, SETTINGS_NAME), "rb") as fh:
            settings = json.loads(fh.read())
        names = os.listdir(os.path.join(record, BLOCKS_NAME))
    except (OSError, ValueError):
        return None
    done = set()
    for name in names:
        with contextlib.suppress(ValueError):
            done.add(tuple(int(i) for i in name.split(".")))
    return settings, done


def block_name(index: Iterable[int]) -> str:
    """Return the marker name of block `index`.

    Examples
    --------
    >>> block_name((0, 2, 1))
    '0.2.1'
    """
    return ".".join(str(int(i)) for i in index)


def _parse_name(name: str) -> Index | None:
    try:
        return tuple(int(i) for i in name.split("."))
    except ValueError:
        return None


def _parse(text: bytes) -> Digest | None:
    r"""Return (bytes, crc32) of a marker's contents, or None if they are not a digest.

    Examples
    --------
    >>> _parse(b"4096 1a2b3c4d\n"), _parse(b""), _parse(b"12 zz")
    ((4096, 439041101), None, None)
    """
    parts = text.split()
    if len(parts) != 2:
        return None
    try:
        nbytes, crc = int(parts[0]), int(parts[1], 16)
    except ValueError:
        return None
    return (nbytes, crc) if nbytes > 0 else None


def write_marker(blocks_dir: str, index: Index, digest: Digest) -> None:
    """Record block `index` with its `digest`, atomically (a hidden name, then a rename).

    In a deleted (abandoned) record folder this fails with FileNotFoundError: a marker is never
    made for a partial output that is gone.
    """
    name = block_name(index)
    tmp = os.path.join(blocks_dir, f".{name}.{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, f"{digest[0]} {digest[1]:08x}\n".encode())
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(blocks_dir, name))


def read_markers(blocks_dir: str) -> dict[Index, Digest | None]:
    """Return every marker of `blocks_dir`: block index -> digest (None when unreadable)."""
    out: dict[Index, Digest | None] = {}
    for name in os.listdir(blocks_dir):
        index = _parse_name(name)
        if index is None:
            continue
        try:
            with open(os.path.join(blocks_dir, name), "rb") as f:
                out[index] = _parse(f.read(64))
        except OSError:
            out[index] = None
    return out


def _unwrap(target: Any) -> Any:
    inner = getattr(target, "target", None)  # a GuardedTarget
    return target if inner is None else inner


def _zarr_keys(array: Any, region: tuple[slice, ...]) -> list[str]:
    """Return the store keys of the files zarr `array` stores `region` in (whole write units)."""
    units = array.shards or array.chunks
    ranges = [range(s.start // u, -(-s.stop // u)) for s, u in zip(region, units, strict=True)]
    prefix = f"{array.path}/" if array.path else ""
    return [prefix + array.metadata.encode_chunk_key(c) for c in itertools.product(*ranges)]


def _zarr_files(array: Any, region: tuple[slice, ...]) -> list[str] | None:
    """Return the files a zarr array stores `region` in (whole write units); None if remote."""
    root = getattr(array.store, "root", None)
    if root is None:
        return None
    return [os.path.join(os.fspath(root), k) for k in _zarr_keys(array, region)]


def _files_digest(paths: Sequence[str], expected: int | None = None) -> Digest | None:
    """Return (bytes, crc32) of the files `paths` end to end, or None.

    None if a file is missing, or if their size differs from `expected` (checked first).
    """
    try:
        sizes = [os.stat(p).st_size for p in paths]
    except OSError:
        return None
    if expected is not None and sum(sizes) != expected:
        return None
    crc = 0
    for path in paths:
        with open(path, "rb") as f:
            while piece := f.read(_READ):
                crc = zlib.crc32(piece, crc)
    return sum(sizes), crc


def stored_digest(target: Any, region: tuple[slice, ...], expected: int | None = None) -> Any:
    """Return (bytes, crc32) of what `target` stores for `region`, or None if it is missing.

    `target` is a zarr array (its stored files are read) or an object with a
    ``stored_digest(region)`` method (a file region writer). `expected`, a byte count, lets
    a mismatch be found without reading.
    """
    target = _unwrap(target)
    own = getattr(target, "stored_digest", None)
    if own is not None:
        return own(region)
    files = _zarr_files(target, region)
    if files is None:  # not on a local file system: the block's values, read back
        data = np.ascontiguousarray(target[region])
        return data.nbytes, zlib.crc32(memoryview(data).cast("B"))
    return _files_digest(files, expected)


def written_digest(target: Any, region: tuple[slice, ...]) -> Any:
    """Return (bytes, crc32) of what `target` was just given to store for `region`, or None.

    For a zarr array opened by :func:`zchunk.sinks._written.recording`: the bytes its store
    was handed for the block's files, taken (once) from memory; for a file region writer with
    a ``written_digest(region)`` method, what it returns. Otherwise, or if nothing was kept,
    what the storage holds, read back (:func:`stored_digest`).
    """
    inner = _unwrap(target)
    own = getattr(inner, "written_digest", None)  # a file region writer
    if own is not None and (digest := own(region)) is not None:
        return digest
    if callable(getattr(getattr(inner, "store", None), "take", None)):  # a WrittenStore
        from zchunk.sinks._written import take_written

        digest = take_written(inner, _zarr_keys(inner, region))
        if digest is not None:
            return digest
    return stored_digest(target, region)


def _regions(chunks: tuple[tuple[int, ...], ...], index: Index) -> tuple[slice, ...]:
    starts = [sum(c[:i]) for c, i in zip(chunks, index, strict=True)]
    return tuple(slice(s, s + c[i]) for s, c, i in zip(starts, chunks, index, strict=True))


def verified(
    target: Any,
    blocks_dir: str,
    chunks: tuple[tuple[int, ...], ...],
    done: Iterable[Index],
) -> set[Index]:
    """Return the blocks of `done` whose markers match `target`; delete the other markers.

    Also deletes the hidden marker temporaries a killed run left, and the stored files (of a
    local zarr `target`) of every block that will be written again.
    """
    for name in os.listdir(blocks_dir):
        if name.startswith("."):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(blocks_dir, name))
    markers = read_markers(blocks_dir)
    grid = tuple(len(c) for c in chunks)
    todo = [
        i
        for i in done
        if len(i) == len(grid) and all(0 <= a < n for a, n in zip(i, grid, strict=True))
    ]

    def check(index: Index) -> bool:
        claimed = markers.get(index)
        if claimed is None:
            return False
        return bool(stored_digest(target, _regions(chunks, index), claimed[0]) == claimed)

    with ThreadPoolExecutor(max_workers=4) as pool:
        good = {i for i, ok in zip(todo, pool.map(check, todo), strict=True) if ok}
    for index in set(markers) - good:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(blocks_dir, block_name(index)))
    _discard_stored(target, chunks, good)
    return good


def _discard_stored(target: Any, chunks: tuple[tuple[int, ...], ...], keep: set[Index]) -> None:
    """Delete the stored files of a local zarr `target` for every block not in `keep`."""
    target = _unwrap(target)
    if getattr(target, "stored_digest", None) is not None:  # a file region: overwritten
        return
    for i in np.ndindex(*(len(c) for c in chunks)):
        if i in keep:
            continue
        for path in _zarr_files(target, _regions(chunks, i)) or ():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def check_complete(blocks_dir: str, chunks: tuple[tuple[int, ...], ...]) -> list[Index]:
    """Return the blocks that have no valid marker in `blocks_dir` (empty when complete)."""
    markers = read_markers(blocks_dir)
    return [
        i
        for i in np.ndindex(*(len(c) for c in chunks))
        if markers.get(tuple(int(n) for n in i)) is None
    ]
