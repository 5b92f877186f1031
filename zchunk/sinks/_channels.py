"""Channel names and colours in outputs: ImageJ composite LUTs, OME Channel, OME-Zarr omero.

Readers put ``channel_names`` and, where the file has them, ``channel_colors`` (``"RRGGBB"``
per channel: ImageJ's LUTs, OME's Channel Color, OME-Zarr's omero colours) in ``Stack.attrs``;
projections keep them. Where no colour is known, outputs that need one (OME-Zarr's omero
block) get ImageJ's composite defaults: red, green, blue, grey, cyan, magenta, yellow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from zchunk.stack import Stack

__all__ = ["channel_colors", "channel_names", "imagej_luts", "ome_color", "omero"]

#: ImageJ's default composite colours, in channel order.
DEFAULT_COLORS = ("FF0000", "00FF00", "0000FF", "FFFFFF", "00FFFF", "FF00FF", "FFFF00")


def _channels(stack: Stack) -> int:
    return stack.sizes.get("c", 0)


def channel_names(stack: Stack) -> list[str] | None:
    """Return the names of the stack's channels, or None when unknown (or no c axis)."""
    names = stack.attrs.get("channel_names")
    n = _channels(stack)
    return [str(x) for x in names] if n and names is not None and len(names) == n else None


def channel_colors(stack: Stack, *, default: bool = False) -> list[str] | None:
    """Return each channel's ``"RRGGBB"`` colour as read (ImageJ's defaults with `default`).

    Examples
    --------
    >>> from zchunk.stack import Stack
    >>> s = Stack(np.zeros((2, 4, 4), "uint8"), axes="cyx")
    >>> channel_colors(s), channel_colors(s, default=True)
    (None, ['FF0000', '00FF00'])
    """
    n = _channels(stack)
    colors = stack.attrs.get("channel_colors")
    if n and colors is not None and len(colors) == n:
        return [str(c).upper() for c in colors]
    if not (n and default):
        return None
    return ["FFFFFF"] if n == 1 else [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(n)]


def _rgb(color: str) -> tuple[int, int, int]:
    value = int(color, 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def imagej_luts(colors: list[str]) -> list[np.ndarray]:
    """ImageJ lookup tables (3 x 256, uint8): black to each colour."""
    ramp = np.arange(256, dtype=np.uint16)
    return [np.stack([(ramp * v // 255).astype(np.uint8) for v in _rgb(color)]) for color in colors]


def ome_color(color: str) -> int:
    """OME-XML's Color: RGBA as a signed 32-bit integer (alpha 255).

    Examples
    --------
    >>> ome_color("FF0000"), ome_color("00FF00")
    (-16776961, 16711935)
    """
    value = (int(color, 16) << 8) | 0xFF
    return value - 2**32 if value >= 2**31 else value


def omero(stack: Stack, lows: list[float], highs: list[float]) -> dict[str, Any]:
    """Return the OME-Zarr ``omero`` block: a label, colour and display window per channel.

    `lows` and `highs` are each channel's smallest and largest value (the window shown).
    """
    n = max(1, _channels(stack))
    names = channel_names(stack) or [f"channel {i}" for i in range(n)]
    colors = channel_colors(stack, default=True) or ["FFFFFF"]
    info = np.iinfo(stack.dtype) if stack.dtype.kind in "ui" else np.finfo(stack.dtype)
    channels = [
        {
            "label": names[i],
            "color": colors[i],
            "active": True,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {
                "min": float(info.min),
                "max": float(info.max),
                "start": float(lows[i]),
                "end": float(highs[i]),
            },
        }
        for i in range(n)
    ]
    return {"channels": channels, "rdefs": {"model": "color" if n > 1 else "greyscale"}}
