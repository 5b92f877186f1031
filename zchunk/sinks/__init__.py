"""Writers: the only part of zchunk that computes.

Every writer computes each dask block of the stack once, through the dask scheduler the caller
chose, writes it to its own region of the output, records it as finished, and makes the output
appear under its name only when complete (``.<name>.zchunk-partial`` renamed at the end). An
interrupted write is continued with ``resume=True`` (see :mod:`zchunk.sinks._resume`). An
existing output is replaced only with ``overwrite=True`` and an input never.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zchunk.errors import OptionError, option

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from zchunk._types import PathLike
    from zchunk.sinks._ome_zarr import to_ome_zarr
    from zchunk.sinks._tiff import BIGTIFF_THRESHOLD, to_tiff
    from zchunk.sinks._zarr import to_zarr
    from zchunk.stack import Stack

__all__ = [
    "BIGTIFF_THRESHOLD",
    "FORMATS",
    "SUFFIXES",
    "WRITERS",
    "OutputFormat",
    "save",
    "save_many",
    "to_ome_zarr",
    "to_tiff",
    "to_zarr",
]


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """One output format :func:`save` writes: its names, and the writer, imported on use."""

    name: str  #: the CLI's ``--format``
    suffixes: tuple[str, ...]  #: file suffixes; new files in a folder of results get the first
    writer: str  #: ``"module:function"`` writing it
    options: Mapping[str, Any] = field(default_factory=dict)  #: passed to the writer
    compression: bool = False  #: takes ``compression=`` (TIFF)
    pyramid: bool = False  #: takes ``pyramid=`` (OME-Zarr)
    ngff: bool = False  #: takes ``ngff_version=`` (OME-Zarr)

    def load(self) -> Callable[..., Path]:
        """Import and return the writer."""
        module, name = self.writer.split(":")
        func: Callable[..., Path] = getattr(importlib.import_module(module), name)
        return func


#: The output formats, by name: the one place to add a writer.
WRITERS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("tif", (".tif", ".tiff"), "zchunk.sinks._tiff:to_tiff", compression=True),
        OutputFormat(
            "ome.tif",
            (".ome.tif", ".ome.tiff"),
            "zchunk.sinks._tiff:to_tiff",
            {"ome": True},
            compression=True,
        ),
        OutputFormat("zarr", (".zarr",), "zchunk.sinks._zarr:to_zarr"),
        OutputFormat(
            "ome.zarr",
            (".ome.zarr",),
            "zchunk.sinks._ome_zarr:to_ome_zarr",
            pyramid=True,
            ngff=True,
        ),
    )
}

#: Output suffixes understood by :func:`save`, longest first.
SUFFIXES: tuple[str, ...] = tuple(
    sorted((s for f in WRITERS.values() for s in f.suffixes), key=len, reverse=True)
)

#: The suffix of each format's files, by format name (the CLI's ``--format``).
FORMATS: dict[str, str] = {name: f.suffixes[0] for name, f in WRITERS.items()}

_LAZY = {
    "BIGTIFF_THRESHOLD": "zchunk.sinks._tiff",
    "to_tiff": "zchunk.sinks._tiff",
    "to_zarr": "zchunk.sinks._zarr",
    "to_ome_zarr": "zchunk.sinks._ome_zarr",
}


def __getattr__(name: str) -> Any:
    """Import the writers on first use (PEP 562): zarr and tifffile are not light."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'zchunk.sinks' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)


def format_of(path: PathLike) -> OutputFormat:
    """Return the output format that the suffix of `path` names (case-insensitive).

    Examples
    --------
    >>> format_of("a/MAX.OME.TIF").name, format_of("b.zarr").name
    ('ome.tif', 'zarr')
    """
    name = Path(os.fspath(path)).name.lower()
    suffix = next((s for s in SUFFIXES if name.endswith(s) and len(name) > len(s)), None)
    if suffix is None:
        msg = (
            f"cannot tell the output format of {os.fspath(path)!r} from its suffix: "
            f"use one of {', '.join(SUFFIXES)}"
        )
        raise OptionError(msg)
    return next(f for f in WRITERS.values() if suffix in f.suffixes)


def save(
    stack: Stack,
    path: PathLike,
    /,
    *,
    overwrite: bool = False,
    compression: str | None = None,
    resume: bool = False,
    pyramid: int = 0,
    ngff_version: str | None = None,
) -> Path:
    """Write `stack` to `path` in the format its suffix names.

    - ``.tif``, ``.tiff``: :func:`to_tiff` (an ImageJ hyperstack when ImageJ can hold it);
    - ``.ome.tif``, ``.ome.tiff``: :func:`to_tiff` with ``ome=True``;
    - ``.zarr``: :func:`to_zarr` (zarr v3, one shard per block);
    - ``.ome.zarr``: :func:`to_ome_zarr` (OME-Zarr, NGFF 0.5).

    Parameters
    ----------
    stack : Stack
        What to write; it is computed block by block, each block once.
    path : str or os.PathLike
        Output file or folder; the suffix is matched case-insensitively.
    overwrite : bool
        Replace an existing output (never an input of the stack), and discard a partial
        output of an interrupted run that is not resumed.
    compression : str, optional
        TIFF compression (see :func:`to_tiff`). Zarr outputs are always compressed (Blosc-LZ4),
        so it must be None for them.
    resume : bool
        Continue the partial output an interrupted run left (``.<name>.zchunk-partial``):
        only its missing blocks are computed, if it was started with the same settings
        (inputs unchanged, same operation and parameters, dtype, shape, calibration). The
        result is the same, bit for bit, as an uninterrupted run. An existing output is kept
        (nothing is written) if its record ``.<name>.zchunk-done`` says this run made it, with
        these settings, and it has not changed since; otherwise it is refused (or written again
        with `overwrite`). Without a partial or finished output, a normal write.
    pyramid : int
        Extra resolution levels of an OME-Zarr output, y and x halved per level with the
        mean of 2x2 blocks (see :func:`to_ome_zarr`); other formats need 0.
    ngff_version : {"0.5", "0.4"}, optional
        NGFF version of an OME-Zarr output: 0.5 (zarr v3, the default) or 0.4 (zarr v2, which
        Fiji's readers open). Other formats need None.

    Returns
    -------
    Path
        The absolute output path.

    Raises
    ------
    OptionError
        If the suffix is not one of the above, `compression` is given for a zarr output, or
        `pyramid` or `ngff_version` for an output that is not OME-Zarr.
    OutputExistsError
        If the output exists and `overwrite` is false, or if it would replace an input.
    PartialOutputError
        If an interrupted run left a partial output and neither `resume` nor `overwrite` is
        given.
    ResumeMismatchError
        If `resume` is given but the partial output was started with other settings.
    DiskSpaceError
        If the output's folder has less free space than the output's uncompressed size.

    Examples
    --------
    >>> import tempfile
    >>> from zchunk.stack import Stack
    >>> folder = tempfile.mkdtemp()
    >>> s = Stack(da.zeros((2, 4, 4), dtype="uint8", chunks=(2, 2, 4)))
    >>> save(s, os.path.join(folder, "out.tif")).name
    'out.tif'
    >>> save(s, os.path.join(folder, "out.png"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    zchunk.errors.OptionError: cannot tell the output format of '...out.png' from its suffix: use one of .ome.tiff, .ome.zarr, .ome.tif, .tiff, .zarr, .tif
    """
    fmt = format_of(path)
    if pyramid and not fmt.pyramid:
        msg = (
            f"pyramid={pyramid!r} applies to OME-Zarr outputs only, not {os.fspath(path)!r}: "
            "name the output *.ome.zarr, or leave pyramid=0"
        )
        raise OptionError(msg)
    if ngff_version is not None and not fmt.ngff:
        msg = (
            f"{option('ngff_version', ngff_version)} applies to OME-Zarr outputs only, not "
            f"{os.fspath(path)!r}: name the output *.ome.zarr"
        )
        raise OptionError(msg)
    if compression is not None and not fmt.compression:
        msg = (
            f"compression={compression!r} applies to TIFF outputs only; {os.fspath(path)!r} "
            "is a zarr output, always compressed with Blosc-LZ4: leave compression=None"
        )
        raise OptionError(msg)
    extra: dict[str, Any] = dict(fmt.options)
    if fmt.compression:
        extra["compression"] = compression
    if fmt.pyramid:
        extra["pyramid"] = pyramid
    if fmt.ngff:
        extra["ngff_version"] = ngff_version or "0.5"
    return fmt.load()(stack, path, overwrite=overwrite, resume=resume, **extra)


def save_many(
    stacks: Mapping[str, Stack],
    paths: Mapping[str, PathLike],
    /,
    *,
    overwrite: bool = False,
    compression: str | None = None,
    resume: bool = False,
    pyramid: int = 0,
    ngff_version: str | None = None,
) -> dict[str, Path]:
    """Write several results that share an input, reading the input once.

    All results are computed together into scratch zarr arrays next to the outputs
    (``.<name>.scratch.zchunk-partial``, resumable like every output), then each is written to
    its path with :func:`save` (format from the suffix). Every output is checked (exists,
    would replace an input) before anything is computed.

    Parameters
    ----------
    stacks : Mapping of str to Stack
        Results by name, e.g. ``zchunk.project_many(s, ["max", "median"])``.
    paths : Mapping of str to path
        The output of each result, with the same keys.
    overwrite : bool
        Replace existing outputs (never an input).
    compression : str, optional
        TIFF compression (see :func:`to_tiff`).
    resume : bool
        Continue the scratch arrays and outputs an interrupted run left (see :func:`save`).
        Outputs already finished with the same settings are kept (see :func:`save`).
    pyramid, ngff_version
        For OME-Zarr outputs, as in :func:`save`.

    Returns
    -------
    dict of str to Path
        The absolute output paths.

    Examples
    --------
    >>> import tempfile
    >>> from zchunk.stack import Stack
    >>> from zchunk.ops.projection import project_many
    >>> s = Stack(da.from_array(np.arange(60, dtype="uint8").reshape(3, 4, 5), chunks=(3, 2, 5)))
    >>> folder = tempfile.mkdtemp()
    >>> out = save_many(project_many(s, ["max", "min"]),
    ...                 {"max": f"{folder}/max.tif", "min": f"{folder}/min.zarr"})
    >>> sorted(p.name for p in out.values())
    ['max.tif', 'min.zarr']
    """
    from zchunk.sinks import _many

    extra: dict[str, Any] = {"pyramid": pyramid} if pyramid else {}
    if ngff_version is not None:
        extra["ngff_version"] = ngff_version
    return _many.save_many(
        stacks, paths, overwrite=overwrite, compression=compression, resume=resume, **extra
    )
