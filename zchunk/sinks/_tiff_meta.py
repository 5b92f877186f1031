"""TIFF metadata: ImageJ's description, OME-XML attributes and resolution tags of an output.

Turns a stack's calibration (pixel sizes, units, frame interval, channel names and colours)
into what each TIFF flavour stores: ImageJ's description entries and X/YResolution in pixels
per unit, OME-XML attributes, or standard resolution tags in pixels per centimeter; and
:class:`Layout`, what :mod:`zchunk.sinks._tiff` hands tifffile to lay one output out.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tifffile

from zchunk.sinks._channels import channel_colors, channel_names, imagej_luts, ome_color
from zchunk.stack import normalize_unit

if TYPE_CHECKING:
    from zchunk.stack import Stack

__all__ = [
    "OME_DTYPES",
    "Kind",
    "Layout",
    "imagej_metadata",
    "kind_arg",
    "layout_record",
    "ome_metadata",
    "tag_resolution",
]

#: Pixel types that OME-TIFF cannot describe.
OME_DTYPES = frozenset(
    np.dtype(t)
    for t in ("int8", "int16", "int32", "uint8", "uint16", "uint32", "float32", "float64")
)

_IMAGEJ_UNITS = {
    "micrometer": "um",
    "nanometer": "nm",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
}
_OME_LENGTH_UNITS = {
    "micrometer": "µm",
    "nanometer": "nm",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "angstrom": "Å",
}
_OME_TIME_UNITS = {
    "second": "s",
    "millisecond": "ms",
    "microsecond": "µs",
    "minute": "min",
    "hour": "h",
}
_SECONDS = {"second": 1.0, "millisecond": 1e-3, "microsecond": 1e-6, "minute": 60.0, "hour": 3600.0}
_CENTIMETERS = {
    "nanometer": 1e-7,
    "micrometer": 1e-4,
    "millimeter": 0.1,
    "centimeter": 1.0,
    "meter": 100.0,
}

Kind = Literal["imagej", "ome", "shaped"]
# tifffile >= 2026.5.2 selects the format with kind=; older releases with imagej=/ome=/shaped=.
_HAS_KIND = "kind" in inspect.signature(tifffile.TiffWriter).parameters


def kind_arg(kind: Kind) -> dict[str, Any]:
    return {"kind": kind} if _HAS_KIND else {kind: True}


@dataclass(frozen=True, slots=True)
class Layout:
    """How one TIFF output is written: format, size class and metadata."""

    kind: Kind
    bigtiff: bool
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    metadata: dict[str, Any]
    resolution: tuple[float, float] | None = None
    resolutionunit: str | None = None

    def write_args(self) -> dict[str, Any]:
        """Keyword arguments of ``TiffWriter.write`` shared by every path."""
        args: dict[str, Any] = {
            "shape": self.shape,
            "dtype": self.dtype,
            "photometric": "minisblack",  # never guess RGB from a last axis of 3 or 4
            "metadata": self.metadata,
            "resolution": self.resolution,
            "software": "zchunk",
        }
        if self.resolutionunit is not None:
            args["resolutionunit"] = self.resolutionunit
        return args


def _calibration(stack: Stack) -> dict[str, tuple[float, str | None]]:
    """Known pixel sizes by axis letter, with their normalized unit (or None)."""
    return {
        a: (float(s), normalize_unit(u))
        for a, s, u in zip(stack.axes, stack.scale, stack.units, strict=True)
        if s is not None
    }


def _imagej_unit(unit: str) -> str:
    return _IMAGEJ_UNITS.get(unit, unit)


def imagej_metadata(stack: Stack) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """ImageJ description entries and X/YResolution (pixels per unit) of `stack`."""
    cal = _calibration(stack)
    metadata: dict[str, Any] = {"axes": stack.axes.upper()}
    resolution = None
    units: dict[str, str | None] = {}
    if "x" in cal and "y" in cal:
        resolution = (1.0 / cal["x"][0], 1.0 / cal["y"][0])
        units.update(x=cal["x"][1], y=cal["y"][1])
    if "z" in cal:
        metadata["spacing"] = cal["z"][0]
        units["z"] = cal["z"][1]
    # ImageJ's "unit" is the unit of x (and of y and z unless yunit/zunit say otherwise)
    main = units.get("x") if resolution is not None else units.get("z")
    if main is not None:
        metadata["unit"] = _imagej_unit(main)
    for a in "yz":
        unit = units.get(a)
        if unit is not None and unit != main:
            metadata[f"{a}unit"] = _imagej_unit(unit)
    if "t" in cal and cal["t"][1] in _SECONDS:
        metadata["finterval"] = cal["t"][0] * _SECONDS[str(cal["t"][1])]
    names = channel_names(stack)
    if names is not None:
        # ImageJ keeps one label per plane (channels vary fastest): the channel's name
        c = stack.axes.index("c")
        planes = stack.shape[: stack.axes.index("y")]
        metadata["Labels"] = [names[i[c]] for i in np.ndindex(*planes)]
    if stack.sizes.get("c", 1) > 1:  # opens as a composite, one LUT per channel
        metadata["mode"] = "composite"
        colors = channel_colors(stack)
        if colors is not None:
            metadata["LUTs"] = imagej_luts(colors)
    return metadata, resolution


def ome_metadata(stack: Stack) -> dict[str, Any]:
    """OME-XML attributes (PhysicalSize*, TimeIncrement, channel names) of `stack`."""
    cal = _calibration(stack)
    metadata: dict[str, Any] = {"axes": stack.axes.upper()}
    if stack.name:
        metadata["Name"] = stack.name
    for a in "xyz":
        if a not in cal:
            continue
        size, unit = cal[a]
        if unit is not None and unit not in _OME_LENGTH_UNITS:
            continue  # OME has no name for it; its default (µm) would be a lie
        metadata[f"PhysicalSize{a.upper()}"] = size
        metadata[f"PhysicalSize{a.upper()}Unit"] = (
            "pixel" if unit is None else _OME_LENGTH_UNITS[unit]
        )
    if "t" in cal and cal["t"][1] in _OME_TIME_UNITS:
        metadata["TimeIncrement"] = cal["t"][0]
        metadata["TimeIncrementUnit"] = _OME_TIME_UNITS[str(cal["t"][1])]
    names = channel_names(stack)
    colors = channel_colors(stack)
    channel: dict[str, Any] = {}
    if names is not None:
        channel["Name"] = names
    if colors is not None:
        channel["Color"] = [ome_color(c) for c in colors]
    if channel:
        metadata["Channel"] = channel
    return metadata


def tag_resolution(stack: Stack) -> tuple[tuple[float, float] | None, str | None]:
    """X/YResolution in pixels per centimeter, as standard TIFF readers expect."""
    cal = _calibration(stack)
    if "x" not in cal or "y" not in cal:
        return None, None
    (sx, ux), (sy, uy) = cal["x"], cal["y"]
    if ux not in _CENTIMETERS or uy not in _CENTIMETERS:
        return None, None
    return (1.0 / (sx * _CENTIMETERS[str(ux)]), 1.0 / (sy * _CENTIMETERS[str(uy)])), "CENTIMETER"


def layout_record(layout: Layout) -> dict[str, Any]:
    """Describe what the laid-out TIFF holds besides the pixels (compared on resume)."""
    return {
        "kind": layout.kind,
        "bigtiff": layout.bigtiff,
        "metadata": layout.metadata,
        "resolution": layout.resolution,
        "resolutionunit": layout.resolutionunit,
    }
