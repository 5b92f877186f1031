"""PNG previews: a montage of projections, or of a few planes of a volume, to look at.

Each panel is downsampled by striding (only the pixels shown are read), contrast-stretched
between two percentiles of what is shown, titled, and given a scale bar when the pixel size is
known. The PNG appears atomically and an existing one is replaced only with ``overwrite``.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from zchunk.errors import OptionError, OutputExistsError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from zchunk._types import PathLike
    from zchunk.stack import Stack

__all__ = ["nice_length", "preview", "to_uint8"]

# ASCII: the default bitmap font has no micro sign
_UNIT_SYMBOLS = {"micrometer": "um", "nanometer": "nm", "millimeter": "mm", "meter": "m"}


def nice_length(pixel_size: float, width_px: int, fraction: float = 0.2) -> float:
    """Return a round scale-bar length (1, 2 or 5 x 10^n units) near `fraction` of the width.

    Examples
    --------
    >>> nice_length(0.2, 512)  # 512 px of 0.2 um: about 20 um
    20.0
    """
    target = pixel_size * width_px * fraction
    exponent = math.floor(math.log10(target))
    for step in (5, 2, 1):
        if step * 10.0**exponent <= target:
            return step * 10.0**exponent
    return 10.0**exponent  # pragma: no cover - one of the steps always fits


def to_uint8(image: np.ndarray, clip: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Stretch `image` linearly between two percentiles to 0..255 (NaN shows as black).

    Examples
    --------
    >>> to_uint8(np.arange(100, dtype=float).reshape(10, 10), clip=(0, 100))[[0, -1], [0, -1]]
    array([  0, 255], dtype=uint8)
    """
    values = image.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = (float(v) for v in np.percentile(finite, clip))
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    out: np.ndarray = np.rint(scaled * 255).astype(np.uint8)
    return out


def _panels(stack: Stack, title: str, planes: int, max_px: int) -> list[tuple[str, np.ndarray]]:
    """(title, 2-D image) panels of one stack, strided to at most `max_px` per side."""
    data = stack.data
    step = max(1, math.ceil(max(stack.shape[-2:]) / max_px))
    lead = stack.shape[:-2]
    if not lead:
        return [(title, np.asarray(data[::step, ::step].compute()))]
    # a volume: evenly spaced planes along its first z (or only) axis, first index elsewhere
    axis = stack.axes.index("z") if "z" in stack.axes[:-2] else 0
    count = lead[axis]
    picks = sorted({round(i * (count - 1) / max(planes - 1, 1)) for i in range(planes)})
    out = []
    for k in picks:
        index = tuple(k if i == axis else 0 for i in range(len(lead)))
        plane = data[(*index, slice(None, None, step), slice(None, None, step))]
        out.append((f"{title} {stack.axes[axis]}={k}", np.asarray(plane.compute())))
    return out


def _draw_panel(
    image: np.ndarray, title: str, pixel: tuple[float, str] | None, step: int
) -> np.ndarray:
    from PIL import Image, ImageDraw

    gray = to_uint8(image)
    title_h = 18
    canvas = Image.new("L", (gray.shape[1], gray.shape[0] + title_h), 0)
    canvas.paste(Image.fromarray(gray), (0, title_h))
    draw = ImageDraw.Draw(canvas)
    draw.text((3, 3), title, fill=255)
    if pixel is not None:
        size, unit = pixel
        shown = size * step  # physical size of one displayed pixel
        length = nice_length(shown, gray.shape[1])
        bar = max(1, round(length / shown))
        x1 = gray.shape[1] - 8
        y1 = title_h + gray.shape[0] - 8
        draw.rectangle((x1 - bar, y1 - 4, x1, y1), fill=255)
        label = f"{length:g} {_UNIT_SYMBOLS.get(unit, unit)}"
        draw.text((x1 - bar, y1 - 18), label, fill=255)
    return np.asarray(canvas)


def preview(
    stacks: Stack | Sequence[Stack],
    path: PathLike,
    /,
    *,
    titles: Sequence[str] | None = None,
    planes: int = 3,
    max_px: int = 512,
    overwrite: bool = False,
) -> Path:
    """Write a PNG montage of `stacks` (projections, or a few planes of volumes).

    Parameters
    ----------
    stacks : Stack or sequence of Stack
        2-D stacks become one panel each; volumes give `planes` evenly spaced planes.
    path : str or os.PathLike
        The PNG to write.
    titles : sequence of str, optional
        One title per stack (default: the stack names).
    planes : int
        Planes shown per volume.
    max_px : int
        Largest panel side in pixels; larger images are shown strided (only those pixels are
        read).
    overwrite : bool
        Replace an existing `path`.

    Returns
    -------
    Path
        The absolute path of the PNG.

    Raises
    ------
    OutputExistsError
        If `path` exists and `overwrite` is false.

    Examples
    --------
    >>> import tempfile, os
    >>> s = Stack(da.from_array(np.arange(64.0).reshape(8, 8)), scale=(0.5, 0.5),
    ...           units=("micrometer", "micrometer"), name="max")
    >>> out = preview(s, os.path.join(tempfile.mkdtemp(), "p.png"))
    >>> out.suffix
    '.png'
    """
    from pathlib import Path

    from PIL import Image

    from zchunk.stack import Stack

    items: list[Stack] = [stacks] if isinstance(stacks, Stack) else list(stacks)
    if not items:
        msg = "preview needs at least one stack"
        raise OptionError(msg)
    if planes < 1 or max_px < 16:
        msg = f"planes={planes} must be >= 1 and max_px={max_px} >= 16"
        raise OptionError(msg)
    final = Path(os.path.abspath(os.fspath(path)))
    if final.exists() and not overwrite:
        msg = f"the output {os.fspath(final)!r} already exists: pass overwrite=True / --overwrite"
        raise OutputExistsError(msg)
    names = (
        list(titles)
        if titles is not None
        else [s.name or f"image {i}" for i, s in enumerate(items)]
    )
    tiles = []
    for stack, title in zip(items, names, strict=True):
        step = max(1, math.ceil(max(stack.shape[-2:]) / max_px))
        sx, ux = stack.scale[-1], stack.units[-1]
        pixel = (sx, ux) if sx is not None and ux is not None else None
        for panel_title, image in _panels(stack, title, planes, max_px):
            tiles.append(_draw_panel(image, panel_title, pixel, step))
    cols = min(len(tiles), 3)
    rows = math.ceil(len(tiles) / cols)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    gap = 4
    sheet = np.full((rows * (cell_h + gap) - gap, cols * (cell_w + gap) - gap), 40, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = r * (cell_h + gap), c * (cell_w + gap)
        sheet[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.zchunk-tmp-{os.getpid()}")
    try:
        Image.fromarray(sheet).save(tmp, format="PNG")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final
