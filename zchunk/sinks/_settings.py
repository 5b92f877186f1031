"""What an output holds, as JSON: the settings a partial or finished output is compared by.

:func:`settings_of` describes a run's output: its inputs (path, size, mtime, inode, ctime),
operation and parameters, axes, shape, dtype, calibration and writer settings.
:func:`settings_differ` names the first difference between a recorded description and this
run's, for the refusal messages of ``--resume``. Used by the partial outputs
(:mod:`zchunk.sinks._resume`) and the records of finished ones (:mod:`zchunk.sinks._done`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import TYPE_CHECKING, Any

import numpy as np

from zchunk._version import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import dask.array as da

    from zchunk.stack import Stack

__all__ = [
    "ARRAY_KEY",
    "array_identity",
    "input_identity",
    "settings_differ",
    "settings_of",
    "source_paths",
]

#: Operations whose description (``stack.attrs[key]``) is part of the settings of an output.
OPERATION_KEYS = ("filter", "projection")

#: ``stack.attrs[ARRAY_KEY]``: the identity of a stack that is a stored copy of another (the
#: scratch array ``save_many`` computes a result into), recorded instead of the copy's own.
ARRAY_KEY = "zchunk_array"

# what each settings entry is called in messages, in the order they are compared
_LABELS = {
    "zchunk": "the zchunk version",
    "format": "the output format",
    "inputs": "the inputs",
    "operation": "the operation",
    "axes": "the axes",
    "shape": "the shape",
    "dtype": "the dtype",
    "metadata": "the calibration and metadata",
    "writer": "the writer settings",
    # last: the dask name of an array changes with its dtype...
    "array": "the input array (identified by its dask name)",
}


def _tree_identity(path: str) -> dict[str, Any]:
    """Files, bytes and newest modification time under folder `path` (one walk)."""
    count = size = newest = changed = inodes = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(root, name))
                count += 1
                size += st.st_size
                newest = max(newest, st.st_mtime_ns)
                changed = max(changed, st.st_ctime_ns)
                inodes = (inodes + st.st_ino) % 2**63
    return {
        "path": path,
        "files": count,
        "size": size,
        "mtime_ns": newest,
        "ctime_ns": changed,
        "inodes": inodes,
    }


def input_identity(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Identify input files and folders, to tell on resume whether they changed.

    A file is its path, size, mtime, inode (replaced by another file) and ctime (rewritten in
    place with size and mtime set back: no user call can set the ctime back). A folder is its
    file count, bytes, newest mtime and ctime, and the sum of its files' inodes.

    Examples
    --------
    >>> input_identity(["/no/such/file"])
    [{'path': '/no/such/file', 'missing': True}]
    """
    out: list[dict[str, Any]] = []
    for path in paths:
        path = os.path.abspath(path)
        if os.path.isdir(path):
            out.append(_tree_identity(path))
            continue
        try:
            st = os.stat(path)
        except OSError:
            out.append({"path": path, "missing": True})
            continue
        out.append(
            {
                "path": path,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino,
                "ctime_ns": st.st_ctime_ns,
            }
        )
    return out


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, numpy scalars numbers)."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def _reads_outside(value: Any) -> bool:
    """Whether a graph value holds an array read lazily from elsewhere (not a NumPy array)."""
    if isinstance(value, np.ndarray):
        return False
    if all(hasattr(value, a) for a in ("shape", "dtype", "__getitem__")):
        return True  # a zarr array, an h5py dataset, a tifffile store... named by path
    if isinstance(value, tuple | list):
        return any(_reads_outside(v) for v in value)
    if isinstance(value, dict):
        return any(_reads_outside(v) for v in value.values())
    inner = [getattr(value, a) for a in ("args", "kwargs", "value") if hasattr(value, a)]
    return bool(inner) and any(_reads_outside(v) for v in inner)  # dask's Task, DataNode


def array_identity(data: da.Array) -> str:
    """Return what identifies an array input with no files: its dask name, if it can.

    Dask derives the name of an array made from a NumPy array from its contents, but that of
    an array read lazily from a store (``da.from_zarr(path)``, ``da.from_array`` of a zarr
    array or an h5py dataset) from the store's path: rewritten, the store keeps its name. Such
    an array gets a name of its own for this call (its output is never resumed), so that
    resume cannot keep or continue an output of other contents.

    Examples
    --------
    >>> array_identity(da.from_array(np.arange(4))) == array_identity(da.from_array(np.arange(4)))
    True
    """
    graph = data.__dask_graph__()
    dependencies = getattr(graph, "dependencies", {})
    layers = getattr(graph, "layers", {"": graph})
    for name, layer in layers.items():
        if not dependencies.get(name) and any(_reads_outside(v) for v in layer.values()):
            return f"{data.name} (read from a store: not resumable, {secrets.token_hex(8)})"
    return str(data.name)


def settings_of(
    stack: Stack,
    data: da.Array,
    *,
    format: str,
    metadata: Any = None,
    writer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the JSON record of what an output of `stack` holds, to compare on resume.

    Parameters
    ----------
    stack : Stack
        The stack being written: its inputs (``attrs["source_paths"]``), operation
        (``attrs["filter"]``, ``attrs["projection"]``), axes and dtype.
    data : dask.array.Array
        The array written (already in the output's axis order and byte order); its shape and
        chunks are recorded.
    format : str
        ``"zarr"``, ``"ome-zarr"``, ``"tiff"`` (uncompressed, region writes) or
        ``"tiff-scratch"`` (the scratch zarr of a compressed TIFF).
    metadata : object, optional
        The calibration and metadata the output holds (JSON-able).
    writer : Mapping, optional
        Settings of the writer that shape the partial output (zarr format, compression...).

    Returns
    -------
    dict
        JSON-ready settings; ``"chunks"`` are the blocks (not compared, see
        :func:`settings_differ`). A stack with no input files (an array) is identified by its
        dask name instead (or ``attrs[ARRAY_KEY]``, for a stored copy of another stack): dask
        derives it from the contents of a NumPy array and from the operations applied, so the
        same data give the same name in every process; an array dask cannot tokenize (or a
        random one) gets a random name, and its output cannot be resumed, nor can that of an
        array read lazily from a store (see :func:`array_identity`).
    """
    paths = source_paths(stack)
    settings: dict[str, Any] = {
        "zchunk": __version__,
        "format": format,
        "inputs": input_identity(paths),
        "array": None if paths else stack.attrs.get(ARRAY_KEY) or array_identity(stack.data),
        "operation": {k: stack.attrs[k] for k in OPERATION_KEYS if k in stack.attrs},
        "axes": stack.axes,
        "shape": [int(n) for n in data.shape],
        "dtype": np.dtype(data.dtype).str,
        "metadata": metadata,
        "writer": dict(writer or {}),
        "chunks": [[int(n) for n in c] for c in data.chunks],
    }
    result: dict[str, Any] = _jsonable(settings)
    return result


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 300 else text[:297] + "..."


def _leaves(a: Any, b: Any, path: str = "") -> list[str]:
    """Name the entries of two JSON values that differ (``filter.sigma [1.0] vs [3.0]``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                out += _leaves(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [f"{path or 'value'} {_short(a)} vs {_short(b)}"]


def _inputs_differ(
    old: list[dict[str, Any]], new: list[dict[str, Any]], *, since: str
) -> str | None:
    if [i["path"] for i in old] != [i["path"] for i in new]:
        gone = [i["path"] for i in old if i["path"] not in {j["path"] for j in new}]
        added = [i["path"] for i in new if i["path"] not in {j["path"] for j in old}]
        if gone or added:
            parts = [f"{len(gone)} input(s) not in this run (first {gone[0]})"] if gone else []
            parts += [f"{len(added)} new input(s) (first {added[0]})"] if added else []
            return "the inputs differ: " + ", ".join(parts)
        return "the inputs are in another order"
    for a, b in zip(old, new, strict=True):
        if a != b:
            if b.get("missing"):
                return f"the input {b['path']} no longer exists"
            what = ", ".join(
                f"{key} {a.get(key)} -> {b.get(key)}"
                for key in ("size", "files", "mtime_ns", "inode", "inodes", "ctime_ns")
                if a.get(key) != b.get(key)
            )
            return f"the input {b['path']} changed {since} ({what})"
    return None


def settings_differ(
    old: Mapping[str, Any], new: Mapping[str, Any], *, recorded: str = "partial output"
) -> str | None:
    """Describe the first difference between recorded and new settings, or return None.

    `recorded` names what the old settings describe in the message: ``"partial output"``
    (a run to continue) or ``"finished output"``. Entries that are dicts name their leaves.

    Examples
    --------
    >>> a = {"zchunk": "1", "operation": {"filter": {"sigma": 1}}, "chunks": [[4], [8, 8]]}
    >>> settings_differ(a, {**a, "chunks": [[4], [16]]}) is None
    True
    >>> settings_differ(a, {**a, "operation": {"filter": {"sigma": 3}}})
    'the operation differs (partial output vs this run: filter.sigma 1 vs 3)'
    >>> settings_differ(a, {**a, "zchunk": "2"}, recorded="finished output")
    'the zchunk version differs (finished output vs this run: "1" vs "2")'
    """
    since = "since the partial output was started"
    if recorded != "partial output":
        since = f"after the {recorded} was written"
    for key, label in _LABELS.items():
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "inputs" and isinstance(a, list) and isinstance(b, list):
            why = _inputs_differ(a, b, since=since)
            if why is not None:
                return why
            continue
        if key == "dtype":
            a, b = _dtype_name(a), _dtype_name(b)
        what = "; ".join(_leaves(a, b)).removeprefix("value ")
        return f"{label} differs ({recorded} vs this run: {what})"
    return None


def _dtype_name(value: Any) -> Any:
    try:
        return np.dtype(value).name
    except TypeError:
        return value


def source_paths(stack: Stack) -> list[str]:
    """Return the input files and folders of `stack` (``attrs["source_paths"]``)."""
    sources = stack.attrs.get("source_paths") or ()
    if isinstance(sources, (str, os.PathLike)):
        sources = (sources,)
    return [os.fspath(s) for s in sources if s]
