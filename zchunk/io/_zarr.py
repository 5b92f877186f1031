"""zarr (v2 or v3) arrays and OME-Zarr images (level 0 of the first multiscales).

NGFF 0.4/0.5 metadata is validated and parsed by ome-zarr-models (imported only when a zarr
group is opened); metadata that does not validate is a :class:`CorruptDataError`.

zarr reads a chunk that is not in the store as the fill value, without a word. So, when an array
is opened, its folder is listed once and every chunk (every shard, for sharded arrays) the
chunk grid needs must be there; zchunk's writers store every chunk, even all-zero ones. Read
errors inside tasks (a damaged shard, an undecodable chunk) become :class:`CorruptDataError`
naming the array.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zchunk.errors import CorruptDataError, StackFormatError
from zchunk.stack import AXIS_ORDER, normalize_unit

__all__ = ["CheckedArray", "ZarrInfo", "first_missing_chunk", "is_zarr", "parse_zarr"]


def is_zarr(path: str) -> bool:
    """Tell whether `path` is a folder holding zarr metadata (v3 zarr.json, v2 .zarray/.zgroup)."""
    import os

    return any(os.path.exists(os.path.join(path, n)) for n in ("zarr.json", ".zarray", ".zgroup"))


@dataclass(frozen=True, slots=True)
class ZarrInfo:
    """An opened zarr source: the level-0 array and what its metadata says."""

    array: Any
    axes: str | None
    scale: dict[str, float]
    units: dict[str, str]
    channel_names: tuple[str, ...] = ()
    channel_colors: tuple[str, ...] = ()
    layout: dict[str, Any] = field(default_factory=dict)


def _ngff_attrs(attrs: dict[str, Any], path: str) -> tuple[Any, Any, str]:
    """Validate a group's NGFF metadata with ome-zarr-models: (multiscales, omero, version).

    0.5 keeps its metadata under ``attrs["ome"]``, 0.4 at the top level. ``omero`` is display
    metadata: when it does not validate, it is left out (None) rather than refusing the image.
    """
    from ome_zarr_models.common.omero import Omero
    from ome_zarr_models.v04.image import ImageAttrs as ImageAttrs04
    from ome_zarr_models.v05.image import ImageAttrs as ImageAttrs05
    from pydantic import BaseModel, ValidationError

    model: type[BaseModel]
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        raw, model, version = dict(ome), ImageAttrs05, str(ome.get("version", "0.5"))
    elif "multiscales" in attrs:
        raw, model = dict(attrs), ImageAttrs04
        ms = attrs["multiscales"]
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else {}
        version = str(first.get("version", "0.4"))
    else:
        msg = f"{path} is a zarr group without OME-Zarr multiscales: open one of its arrays instead"
        raise StackFormatError(msg)
    raw_omero = raw.pop("omero", None)
    try:
        parsed: Any = model.model_validate(raw)
    except ValidationError as exc:
        first_error = exc.errors()[0]
        where = ".".join(str(p) for p in first_error["loc"])
        msg = (
            f"{path} is a damaged OME-Zarr: its NGFF {version} metadata does not validate "
            f"({where}: {first_error['msg']})"
        )
        raise CorruptDataError(msg) from None
    try:
        omero = Omero.model_validate(raw_omero) if raw_omero is not None else None
    except ValidationError:
        omero = None
    return parsed.multiscales, omero, version


def _scale_of(transforms: Any, ndim: int) -> list[float] | None:
    scale = None
    for t in transforms or ():
        if getattr(t, "type", None) == "scale" and len(getattr(t, "scale", ())) == ndim:
            scale = [float(v) for v in t.scale]
    return scale


def _ome_zarr(group: Any, path: str) -> ZarrInfo:
    attrs = dict(group.attrs)
    multiscales, omero, version = _ngff_attrs(attrs, path)
    ms = multiscales[0]
    level0 = ms.datasets[0]
    where = level0.path
    parts = where.split("/")
    if any(p in ("", ".", "..") for p in parts):
        msg = (
            f"{path} is a damaged OME-Zarr: its first dataset path {where!r} is not the name "
            "of an array inside the image"
        )
        raise CorruptDataError(msg)
    try:
        array = group[where]
    except (KeyError, ValueError) as exc:
        msg = f"{path} is a damaged OME-Zarr: its first dataset {where!r} cannot be opened ({exc})"
        raise CorruptDataError(msg) from None
    names = [str(a.name) for a in ms.axes]
    axes = "".join(n.lower() for n in names) if names else None
    if axes is not None and (len(axes) != array.ndim or set(axes) - set(AXIS_ORDER)):
        axes = None
    scale_values = _scale_of(level0.coordinateTransformations, array.ndim)
    outer = _scale_of(ms.coordinateTransformations, array.ndim)
    if scale_values is not None and outer is not None:
        scale_values = [a * b for a, b in zip(scale_values, outer, strict=True)]
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if axes is not None:
        for i, (letter, axis) in enumerate(zip(axes, ms.axes, strict=True)):
            unit = normalize_unit(axis.unit if isinstance(axis.unit, str) else None)
            if scale_values is not None and letter != "c":
                scale[letter] = scale_values[i]
            if unit is not None:
                units[letter] = unit
    channels = omero.channels if omero is not None else []
    names_c = tuple(str((c.model_extra or {}).get("label", "")) for c in channels)
    colors_c = tuple(str(c.color) for c in channels)
    if not any(names_c):  # zchunk writes no omero metadata, but keeps the names beside NGFF's
        ours = attrs.get("zchunk") or {}
        names_c = tuple(str(c) for c in ours.get("channel_names") or ())
    return ZarrInfo(
        array=array,
        axes=axes,
        scale=scale,
        units=units,
        channel_names=names_c if any(names_c) else (),
        channel_colors=colors_c if all(colors_c) and len(colors_c) > 1 else (),
        layout={"format": "ome-zarr", "ngff_version": version, "level0": where},
    )


def _plain(array: Any) -> ZarrInfo:
    attrs = dict(array.attrs)
    ours = attrs.get("zchunk", {})
    names = getattr(array.metadata, "dimension_names", None) or attrs.get("_ARRAY_DIMENSIONS")
    axes = ours.get("axes") or ("".join(str(n).lower() for n in names) if names else None)
    if axes is not None and (
        len(axes) != array.ndim or set(axes) - set(AXIS_ORDER) or len(set(axes)) != len(axes)
    ):
        axes = None
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if axes is not None:
        scales, units_ = ours.get("scale") or [], ours.get("units") or []
        for letter, s, u in zip(axes, scales, units_, strict=False):
            if s is not None:
                scale[letter] = float(s)
            if u is not None:
                units[letter] = u
    return ZarrInfo(
        array=array,
        axes=axes,
        scale=scale,
        units=units,
        channel_names=tuple(ours.get("channel_names") or ()),  # null when there are none
        layout={"format": "zarr"},
    )


def _array_folder(array: Any) -> str | None:
    """Return the folder of `array`'s chunks, or None if its store is not a local folder."""
    root = getattr(array.store, "root", None)
    if root is None:
        return None
    folder: str = os.fspath(root)
    return os.path.join(folder, *str(array.path).split("/")) if array.path else folder


def first_missing_chunk(array: Any) -> str | None:
    """Return the key of the first chunk (shard) of `array` missing from its folder, or None.

    The folder is listed once (``os.walk``), not probed chunk by chunk. Arrays in stores that
    are not local folders are not checked (None).

    Examples
    --------
    >>> import tempfile
    >>> import zarr
    >>> z = zarr.create_array(tempfile.mkdtemp(), shape=(2, 4), chunks=(1, 4), dtype="u1")
    >>> z[0] = 1
    >>> first_missing_chunk(z)
    'c/1/0'
    """
    folder = _array_folder(array)
    if folder is None or not os.path.isdir(folder):
        return None
    unit = array.shards if getattr(array, "shards", None) else array.chunks
    grid = [math.ceil(n / c) for n, c in zip(array.shape, unit, strict=True)]
    if math.prod(grid) == 0:
        return None
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.update(prefix + name for name in filenames)
    encode = array.metadata.encode_chunk_key
    for coords in np.ndindex(*grid):
        key = str(encode(coords))
        if key not in found:
            return key
    return None


class CheckedArray:
    """A zarr array whose read errors are raised as CorruptDataError naming the array.

    Picklable (as the zarr array is), so it works with every dask scheduler.
    """

    def __init__(self, array: Any, path: str) -> None:
        self.array = array
        self.path = path
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except Exception as exc:
            where = ", ".join(
                f"{k.start}:{k.stop}" if isinstance(k, slice) else str(k) for k in key
            )
            msg = (
                f"{self.path}: cannot read the zarr array at [{where}] "
                f"({type(exc).__name__}: {exc})"
            )
            raise CorruptDataError(msg) from exc


def parse_zarr(path: str, *, allow_incomplete: bool = False) -> ZarrInfo:
    """Open a zarr array or OME-Zarr image read-only and read its metadata.

    Unless `allow_incomplete`, every chunk of the array must be in the store (see
    :func:`first_missing_chunk`), else CorruptDataError.
    """
    import zarr  # only for zarr inputs: it takes a while to import

    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        msg = f"{path} is not a readable zarr store ({type(exc).__name__}: {exc})"
        raise StackFormatError(msg) from exc
    info = _plain(node) if isinstance(node, zarr.Array) else _ome_zarr(node, path)
    array = info.array
    if np.dtype(array.dtype).kind not in "uif":
        msg = f"{path}: unsupported pixel type {array.dtype}"
        raise StackFormatError(msg)
    missing = None if allow_incomplete else first_missing_chunk(array)
    if missing is not None:
        where = f"{path}/{array.path}" if array.path else path
        msg = (
            f"{where} is incomplete or damaged: its chunk {missing!r} is missing (zarr would "
            f"read it as the fill value {array.fill_value}); if the array was written sparsely "
            "on purpose (write_empty_chunks=False), open it with allow_incomplete=True"
        )
        raise CorruptDataError(msg)
    info.layout.update(
        {
            "zarr_format": int(array.metadata.zarr_format),
            "chunks": list(array.chunks),
            "shards": list(array.shards) if getattr(array, "shards", None) else None,
            "compressors": [type(c).__name__ for c in getattr(array, "compressors", ())],
        }
    )
    return info
