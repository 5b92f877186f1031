"""OME-Zarr output (NGFF 0.5 on zarr v3, or 0.4 on zarr v2 for Fiji), with optional pyramid levels.

The pixels are written exactly as :func:`zchunk.sinks.to_zarr` writes them (every dask block
computed once into its own shard, or its own set of plane chunks on zarr v2), as the array
``"0"`` of a group whose multiscales metadata ome-zarr-py writes; pyramid levels ``"1"``..
are computed from it (see :mod:`zchunk.sinks._pyramid`).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr

from zchunk.errors import OptionError
from zchunk.sinks._channels import omero
from zchunk.sinks._pyramid import level_scales, level_shapes, write_levels
from zchunk.sinks._write import write
from zchunk.sinks._zarr import (
    check_writable,
    create_aligned_array,
    open_aligned_array,
    stack_attributes,
)
from zchunk.stack import normalize_unit

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    import dask.array as da

    from zchunk._types import PathLike
    from zchunk.stack import Stack

__all__ = ["NGFF_VERSIONS", "to_ome_zarr"]

#: NGFF versions :func:`to_ome_zarr` writes, and the zarr format each one lives in.
NGFF_VERSIONS: dict[str, Literal[2, 3]] = {"0.5": 3, "0.4": 2}

#: Axis order NGFF requires: time, then channel, then space.
NGFF_AXES = "tczyx"


def _axes_units(stack: Stack) -> dict[str, str]:
    """Units of the axes that have one NGFF knows (UDUNITS names); others are left out."""
    from ome_zarr.axes import (  # type: ignore[import-untyped]
        KNOWN_SPATIAL_UNITS,
        KNOWN_TEMPORAL_UNITS,
    )

    known = {"space": set(KNOWN_SPATIAL_UNITS), "time": set(KNOWN_TEMPORAL_UNITS)}
    out = {}
    for axis, unit in zip(stack.axes, stack.units, strict=True):
        name = normalize_unit(unit)
        kind = "time" if axis == "t" else "space" if axis in "zyx" else None
        if name is not None and kind is not None and name in known[kind]:
            out[axis] = name
    return out


@dataclass(frozen=True, slots=True)
class OmeZarrWriter:
    """An OME-Zarr image (see :class:`zchunk.sinks._write.Writer`).

    Level 0 is written as :class:`~zchunk.sinks._zarr.ZarrWriter` writes an array, the NGFF
    metadata by ome-zarr-py, and `pyramid` downsampled levels once level 0 is complete.
    """

    stack: Stack
    ngff_version: str = "0.5"
    pyramid: int = 0
    format: str = "ome-zarr"
    folder: bool = True
    compressed: bool = True

    @property
    def _scale(self) -> list[float]:
        return [1.0 if s is None else float(s) for s in self.stack.scale]

    def settings(self, data: da.Array, /) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return the metadata and writer options a partial output is resumed under."""
        writer: dict[str, Any] = {"ngff_version": self.ngff_version}
        levels = len(level_shapes(data.shape, self.pyramid))
        if levels > 1:
            writer["pyramid"] = levels - 1
        attributes = stack_attributes(self.stack)
        units = _axes_units(self.stack)
        return {"zchunk": attributes, "scale": self._scale, "units": units}, writer

    def create(self, partial: Path, data: da.Array, /) -> Any:
        """Create the group, its NGFF metadata and the empty level 0."""
        from ome_zarr.format import FormatV04, FormatV05  # type: ignore[import-untyped]
        from ome_zarr.writer import write_multiscales_metadata  # type: ignore[import-untyped]

        zarr_format = NGFF_VERSIONS[self.ngff_version]
        fmt = FormatV05() if self.ngff_version == "0.5" else FormatV04()
        shapes = level_shapes(data.shape, self.pyramid)
        scales = level_scales(self._scale, len(shapes))
        group = zarr.open_group(os.fspath(partial), mode="a", zarr_format=zarr_format)
        write_multiscales_metadata(
            group,
            datasets=[
                {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": s}]}
                for i, s in enumerate(scales)
            ],
            fmt=fmt,
            axes=list(self.stack.axes),
            axes_units=_axes_units(self.stack),
            name=self.stack.name or None,
        )
        group.attrs["zchunk"] = stack_attributes(self.stack)
        return create_aligned_array(
            group.store,
            data,
            name="0",
            axes=self.stack.axes,
            zarr_format=zarr_format,
            dimension_names=zarr_format == 3,
        )

    def reopen(self, partial: Path, data: da.Array, /) -> Any:
        """Open level 0 of an interrupted run."""
        return open_aligned_array(os.fspath(partial), data, name="0")

    @property
    def summarize(self) -> Callable[[np.ndarray, tuple[slice, ...]], Any] | None:
        """With channels: each channel's range in every block, for the display windows."""
        if "c" not in self.stack.axes:
            return None
        return functools.partial(channel_range, axis=self.stack.axes.index("c"))

    def finish(
        self, partial: Path, data: da.Array, summaries: Mapping[Any, Any] | None = None, /
    ) -> None:
        """Write the downsampled levels from level 0, and the channels' omero metadata."""
        if "c" in self.stack.axes:
            self._write_omero(partial, summaries or {})
        shapes = level_shapes(data.shape, self.pyramid)
        if len(shapes) > 1:
            block = tuple(int(c[0]) for c in data.chunks)
            zarr_format = NGFF_VERSIONS[self.ngff_version]
            write_levels(partial, shapes, block, axes=self.stack.axes, zarr_format=zarr_format)

    def _write_omero(self, partial: Path, summaries: Mapping[Any, Any]) -> None:
        """Name and colour the channels, with a display window from level 0's range.

        The window is each channel's smallest to largest value (NaN ignored), gathered from
        the blocks of level 0 as they were stored (:func:`channel_range`): no pass over the
        output.
        """
        n = self.stack.sizes["c"]
        lows, highs = [math.nan] * n, [math.nan] * n
        for start, mins, maxs in summaries.values():
            for k, (low, high) in enumerate(zip(mins, maxs, strict=True)):
                lows[start + k] = float(np.fmin(lows[start + k], low))
                highs[start + k] = float(np.fmax(highs[start + k], high))
        group = zarr.open_group(os.fspath(partial), mode="a")
        block = omero(self.stack, lows, highs)
        if self.ngff_version == "0.4":
            group.attrs["omero"] = block
        else:
            ome: dict[str, Any] = dict(group.attrs["ome"])  # type: ignore[arg-type]
            group.attrs["ome"] = {**ome, "omero": block}


def channel_range(
    block: np.ndarray, region: tuple[slice, ...], /, *, axis: int
) -> tuple[int, list[float], list[float]]:
    """Return (first channel, smallest and largest value of each channel) of a `block`.

    NaN is ignored (an all-NaN channel gives NaN). `axis` is the channel axis.

    Examples
    --------
    >>> channel_range(np.array([[1.0, 5.0], [np.nan, 2.0]]), (slice(2, 4), slice(0, 2)), axis=0)
    (2, [1.0, 2.0], [5.0, 2.0])
    """
    others = tuple(i for i in range(block.ndim) if i != axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel
        lows, highs = np.nanmin(block, axis=others), np.nanmax(block, axis=others)
    start = region[axis].start or 0
    return start, [float(v) for v in lows], [float(v) for v in highs]


def to_ome_zarr(
    stack: Stack,
    path: PathLike,
    /,
    *,
    overwrite: bool = False,
    ngff_version: Literal["0.5", "0.4"] = "0.5",
    resume: bool = False,
    pyramid: int = 0,
) -> Path:
    """Write `stack` to an OME-Zarr image, with `pyramid` extra resolution levels, resumably.

    The multiscales metadata (axes with their types and units, a scale transformation) is
    written by ome-zarr-py; the pixels go to the array ``"0"`` block by block, each dask block
    computed once, with the layout of :func:`to_zarr`: on zarr v3 (NGFF 0.5) one shard per
    block and one inner chunk per (y, x) plane of it; on zarr v2 (NGFF 0.4), which has no
    shards, chunks of one plane of a block, so every block still covers whole chunks. Axes
    are written in NGFF's order (t, c, z, y, x), transposed lazily when needed.

    NGFF requires a number for every scale: an unknown pixel size is written as 1.0 here, and
    only here (TIFF and plain zarr outputs leave it out or null). The exact calibration,
    unknowns included, and the channel names are also kept in the group attribute
    ``"zchunk"`` (as :func:`to_zarr` writes them). Units that are not UDUNITS names NGFF knows
    are left out. A stack with a c axis gets an ``omero`` block: each channel's name, colour
    (as read, else ImageJ's composite defaults) and display window (the channel's range in
    level 0, gathered from its blocks as they are written).

    As :func:`to_zarr`, the image is written as ``.<name>.zchunk-partial`` with a record of
    its settings and finished blocks, renamed onto `path` when complete, and continued by
    ``resume=True`` after an interruption.

    With ``pyramid=N``, levels ``"1"`` to ``"N"`` follow level ``"0"``, each with y and x
    halved (``ceil(n / 2)``; z, t and c are never reduced) by the mean of 2x2 blocks of the
    level before it: an odd last row or column is averaged with the pixels that exist;
    integers are rounded to nearest (halves up) and keep their dtype, floats stay floats (see
    :func:`~zchunk.sinks._pyramid.downsample_mean`). Their scale is the level-0 scale with y
    and x doubled per level; no translation is written. Fewer levels are written when y or x
    of a level is already a single pixel. Each level is computed from the previous level as
    written on disk, block by block, after level 0 is complete; on resume, the levels are
    computed again from the finished level 0. Everything is inside the partial output, so
    the image with all its levels appears at once.

    Parameters
    ----------
    stack : Stack
        Pixels and calibration; the dtype is kept as is (integers or floats).
    path : str or os.PathLike
        Output folder, conventionally ending in ``.ome.zarr``. Missing parent folders are
        created.
    overwrite : bool
        Replace an existing `path` (never an input of the stack), and discard a partial
        output that is not resumed.
    ngff_version : {"0.5", "0.4"}
        ``"0.5"`` (zarr v3, the current version) or ``"0.4"`` (zarr v2, which Fiji's readers
        and older viewers open).
    resume : bool
        Continue the partial output of an interrupted run started with the same settings
        (see :func:`to_zarr`).
    pyramid : int
        Number of extra resolution levels (0: level ``"0"`` only).

    Returns
    -------
    Path
        The absolute output path.

    Raises
    ------
    OutputExistsError
        If `path` exists and `overwrite` is false, or if it would replace an input.
    PartialOutputError, ResumeMismatchError, DiskSpaceError
        As :func:`to_zarr`.
    StackFormatError
        If the dtype is not an integer or float type.
    OptionError
        If `ngff_version` is unknown or `pyramid` is negative.

    Examples
    --------
    >>> import tempfile
    >>> from zchunk.stack import Stack
    >>> s = Stack(da.ones((4, 6, 8), dtype="uint8", chunks=(4, 3, 8)), scale=(2.0, None, 0.5))
    >>> out = to_ome_zarr(s, os.path.join(tempfile.mkdtemp(), "a.ome.zarr"))
    >>> ome = zarr.open_group(out, mode="r").attrs["ome"]
    >>> ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    [2.0, 1.0, 0.5]
    >>> out = to_ome_zarr(s, os.path.join(tempfile.mkdtemp(), "p.ome.zarr"), pyramid=1)
    >>> zarr.open_group(out, mode="r")["1"].shape
    (4, 3, 4)
    """
    if ngff_version not in NGFF_VERSIONS:
        msg = f"ngff_version={ngff_version!r} is not supported: use one of {list(NGFF_VERSIONS)}"
        raise OptionError(msg)
    if isinstance(pyramid, bool) or not isinstance(pyramid, int) or pyramid < 0:
        msg = f"pyramid={pyramid!r} is not a number of levels: use an integer >= 0"
        raise OptionError(msg)
    check_writable(stack)
    writer = OmeZarrWriter(stack.in_order(NGFF_AXES), ngff_version, pyramid)
    return write(writer, writer.stack, path, overwrite=overwrite, resume=resume)
