"""Axes and calibration from ImageJ, OME and plain TIFF metadata.

Only what the file states is returned: an unknown pixel size stays unknown (absent), never 1.0.
Units are normalised to OME-Zarr's UDUNITS names (``um``, ``micron``, ``µm`` -> ``micrometer``).
"""

from __future__ import annotations

import math
from typing import Any

import tifffile

from zchunk.stack import normalize_unit

__all__ = ["from_tifffile", "tifffile_axes"]

_LETTERS = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x"}


def tifffile_axes(axes: str) -> str | None:
    """Map tifffile's axis codes to zchunk letters; None when some axis has no meaning for us.

    Examples
    --------
    >>> tifffile_axes("TZCYX"), tifffile_axes("QYX")
    ('tzcyx', None)
    """
    out = "".join(_LETTERS.get(a, "?") for a in axes)
    return None if "?" in out or len(set(out)) != len(out) else out


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _resolution(page: Any, unit: Any = None) -> tuple[float | None, float | None]:
    """Pixel size (x, y) from tifffile's ``get_resolution`` (pixels per `unit`), inverted.

    A missing XResolution/YResolution tag (tifffile reads it as 1) or a zero rational is unknown
    (None), never 1.0.
    """
    rx, ry = page.get_resolution(unit)
    out: list[float | None] = []
    for code, per_unit in ((282, rx), (283, ry)):
        tag = page.tags.get(code)
        value = tag.value if tag is not None else None
        known = isinstance(value, tuple) and len(value) == 2 and value[0] and value[1]
        out.append(_float(1 / per_unit) if known and per_unit else None)
    return out[0], out[1]


def _imagej(tif: Any, series: Any) -> dict[str, Any]:
    ij = tif.imagej_metadata or {}
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    unit = normalize_unit(ij.get("unit"))
    if unit is not None:
        sx, sy = _resolution(series.keyframe)
        # ImageJ leaves "spacing" out when the voxel depth is 1, and reads it back as 1
        sz = _float(ij.get("spacing", 1.0))
        for letter, value in (("x", sx), ("y", sy), ("z", sz)):
            # ImageJ's "unit" is x's, and y's and z's unless "yunit" / "zunit" say otherwise
            own = normalize_unit(ij.get(f"{letter}unit")) if letter != "x" else None
            if value is not None:
                scale[letter], units[letter] = value, own or unit
    interval = _float(ij.get("finterval"))
    if interval is not None:
        scale["t"] = interval
        units["t"] = normalize_unit(ij.get("tunit", "s")) or "second"
    labels = ij.get("Labels")
    channels = int(ij.get("channels", 1) or 1)
    names = tuple(labels[:channels]) if isinstance(labels, list) and channels > 1 else ()
    luts = ij.get("LUTs")
    colors: tuple[str, ...] = ()
    if isinstance(luts, list) and len(luts) == channels > 1:
        # a channel's colour: the brightest entry of its lookup table (ImageJ's composite LUTs)
        colors = tuple("".join(f"{int(v):02X}" for v in lut[:, -1]) for lut in luts)
    return {
        "scale": scale,
        "units": units,
        "channel_names": names,
        "channel_colors": colors,
        "declared_planes": int(ij["images"]) if "images" in ij else None,
        "imagej": {k: v for k, v in ij.items() if isinstance(v, (int, float, str, bool))},
    }


def _ome(tif: Any) -> dict[str, Any]:
    xml = tif.ome_metadata
    try:
        ome = tifffile.xml2dict(xml)["OME"]
    except Exception:  # noqa: BLE001 - damaged OME-XML: keep tifffile's series, no calibration
        return {"scale": {}, "units": {}}
    image = ome.get("Image")
    image = image[0] if isinstance(image, list) else image
    pixels = (image or {}).get("Pixels", {})
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    for letter in "xyz":
        value = _float(pixels.get(f"PhysicalSize{letter.upper()}"))
        if value is not None:
            scale[letter] = value
            units[letter] = (
                normalize_unit(pixels.get(f"PhysicalSize{letter.upper()}Unit", "µm"))
                or "micrometer"
            )
    interval = _float(pixels.get("TimeIncrement"))
    if interval is not None:
        scale["t"] = interval
        units["t"] = normalize_unit(pixels.get("TimeIncrementUnit", "s")) or "second"
    channels = pixels.get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    names = tuple(str(c.get("Name", "")) for c in channels if isinstance(c, dict))
    colors = tuple(
        f"{(int(c['Color']) & 0xFFFFFFFF) >> 8:06X}"  # OME: signed 32-bit RGBA
        for c in channels
        if isinstance(c, dict) and "Color" in c
    )
    declared = 1
    for letter in "ZCT":
        declared *= int(pixels.get(f"Size{letter}", 1) or 1)
    return {
        "scale": scale,
        "units": units,
        "channel_names": names if any(names) else (),
        "channel_colors": colors if len(colors) == len(channels) > 1 else (),
        "declared_planes": declared,
    }


def _plain(series: Any) -> dict[str, Any]:
    """Plain TIFF: trust XResolution only when the unit is centimetre (not a screen DPI)."""
    page = series.keyframe
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if page.tags.valueof("ResolutionUnit") == tifffile.RESUNIT.CENTIMETER:
        sx, sy = _resolution(page, tifffile.RESUNIT.MICROMETER)
        for letter, value in (("x", sx), ("y", sy)):
            if value is not None:
                scale[letter], units[letter] = value, "micrometer"
    shaped = declared_planes(series)
    return {"scale": scale, "units": units, "declared_planes": shaped}


def declared_planes(series: Any) -> int | None:
    """Planes declared by tifffile's own shaped metadata, if any."""
    meta = getattr(series.parent, "shaped_metadata", None)
    if not meta or "shape" not in meta[0]:
        return None
    shape = meta[0]["shape"]
    planes = 1
    for n in shape[:-2]:
        planes *= int(n)
    return planes


def from_tifffile(tif: Any, series: Any) -> dict[str, Any]:
    """Return axes, scale, units, channel names and the declared plane count of a TIFF series."""
    if tif.is_imagej:
        meta = _imagej(tif, series)
    elif tif.is_ome:
        meta = _ome(tif)
    else:
        meta = _plain(series)
    # tifffile's series knows the axes of every kind it writes or reads: ImageJ, OME and
    # shaped ({"axes": "CZYX"}); unknown letters (I, Q: tifffile's "some axis") give None
    meta["axes"] = tifffile_axes(series.axes)
    return meta
