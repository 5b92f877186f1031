"""zarr (v2 or v3) arrays and OME-Zarr images (level 0 of the first multiscales)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from zchunk.errors import StackFormatError
from zchunk.stack import AXIS_ORDER, normalize_unit

__all__ = ["ZarrInfo", "is_zarr", "parse_zarr"]


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
    layout: dict[str, Any] = field(default_factory=dict)


def _multiscales(attrs: dict[str, Any]) -> tuple[list[dict[str, Any]], str] | None:
    if "ome" in attrs and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"], str(attrs["ome"].get("version", "0.5"))
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        return ms, str(ms[0].get("version", "0.4")) if ms else "0.4"
    return None


def _scale_of(transforms: list[dict[str, Any]] | None, ndim: int) -> list[float] | None:
    scale = None
    for t in transforms or []:
        if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            scale = [float(v) for v in t["scale"]]
    return scale


def _ome_zarr(group: Any, path: str) -> ZarrInfo:
    found = _multiscales(dict(group.attrs))
    if found is None:
        msg = f"{path} is a zarr group without OME-Zarr multiscales: open one of its arrays instead"
        raise StackFormatError(msg)
    multiscales, version = found
    ms = multiscales[0]
    level0 = ms["datasets"][0]
    array = group[level0["path"]]
    axes_meta = ms.get("axes", [])
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
    axes = "".join(n.lower() for n in names) if names else None
    if axes is not None and (len(axes) != array.ndim or set(axes) - set(AXIS_ORDER)):
        axes = None
    scale_values = _scale_of(level0.get("coordinateTransformations"), array.ndim)
    outer = _scale_of(ms.get("coordinateTransformations"), array.ndim)
    if scale_values is not None and outer is not None:
        scale_values = [a * b for a, b in zip(scale_values, outer, strict=True)]
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if axes is not None:
        for i, letter in enumerate(axes):
            meta = axes_meta[i] if isinstance(axes_meta[i], dict) else {}
            unit = normalize_unit(meta.get("unit"))
            if scale_values is not None and letter != "c":
                scale[letter] = scale_values[i]
            if unit is not None:
                units[letter] = unit
    omero = dict(group.attrs).get("omero") or dict(group.attrs).get("ome", {}).get("omero") or {}
    names_c = tuple(str(c.get("label", "")) for c in omero.get("channels", []))
    return ZarrInfo(
        array=array,
        axes=axes,
        scale=scale,
        units=units,
        channel_names=names_c if any(names_c) else (),
        layout={"format": "ome-zarr", "ngff_version": version, "level0": level0["path"]},
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
        for letter, s, u in zip(axes, ours.get("scale", []), ours.get("units", []), strict=False):
            if s is not None:
                scale[letter] = float(s)
            if u is not None:
                units[letter] = u
    return ZarrInfo(
        array=array,
        axes=axes,
        scale=scale,
        units=units,
        channel_names=tuple(ours.get("channel_names", ())),
        layout={"format": "zarr"},
    )


def parse_zarr(path: str) -> ZarrInfo:
    """Open a zarr array or OME-Zarr image read-only and read its metadata."""
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
    info.layout.update(
        {
            "zarr_format": int(array.metadata.zarr_format),
            "chunks": list(array.chunks),
            "shards": list(array.shards) if getattr(array, "shards", None) else None,
            "compressors": [type(c).__name__ for c in getattr(array, "compressors", ())],
        }
    )
    return info
