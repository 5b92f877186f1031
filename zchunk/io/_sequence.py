"""Folders whose file names carry the axes: ``t0001_c1_z005.tif``, ``TP0001_Ch0.tif``...

A pattern (a regular expression, as tifffile's ``FileSequence`` takes) finds an axis name and
an index in every file name; the files are then arranged on the (t, c, z) grid the indices
span, every combination present (the first missing one is named in the error). The default
pattern recognises ``t``/``tp``/``time``, ``c``/``ch``, ``z`` and ``p``/``pos``/``position``
tokens between separators (``_``, ``-``, ``.``, a space) or at the start of the name; a folder
whose names carry no such token (``img_0.tif``, ``plane_0001.tif``) keeps its natural order.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zchunk.errors import OptionError, SourceNotFoundError, StackFormatError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["DEFAULT_PATTERN", "Arrangement", "arrange"]

#: Axis tokens recognised in file names by default (case-insensitive), tifffile-style pairs
#: of (axis name, index) groups.
DEFAULT_PATTERN = r"(?i)(?:^|(?<=[_\-.\s]))(tp|time|t|ch|c|z|position|pos|p)(\d{1,6})(?=[_\-.\s]|$)"

_NAMES = {
    "t": "t",
    "tp": "t",
    "time": "t",
    "c": "c",
    "ch": "c",
    "z": "z",
    "p": "p",
    "pos": "p",
    "position": "p",
}


@dataclass(frozen=True, slots=True)
class Arrangement:
    """Files in C order of the grid `shape` over the axes `axes` (letters of ``"tcz"``)."""

    paths: tuple[str, ...]
    axes: str
    shape: tuple[int, ...]


def _tokens(name: str, regex: re.Pattern[str], pattern: str) -> dict[str, int] | None:
    """Axis -> index found in one file name (without its suffix); None when nothing matches."""
    stem = name.split(".", 1)[0] if regex.pattern == DEFAULT_PATTERN else name
    found: dict[str, int] = {}
    if regex.groupindex:  # named groups: (?P<t>\d+)
        match = regex.search(stem)
        if match is None:
            return None
        pairs = [(k, v) for k, v in match.groupdict().items() if v is not None]
    elif regex.pattern == DEFAULT_PATTERN:
        pairs = [(m.group(1), m.group(2)) for m in regex.finditer(stem)]
    else:  # tifffile-style: (axis name)(index) pairs of groups
        match = regex.search(stem)
        if match is None:
            return None
        groups = [g for g in match.groups() if g is not None]
        if len(groups) % 2:
            msg = f"pattern={pattern!r} must match (axis name, index) pairs or named groups"
            raise OptionError(msg)
        pairs = list(itertools.batched(groups, 2))  # type: ignore[arg-type]
    for key, value in pairs:
        axis = _NAMES.get(key.lower())
        if axis is None:
            msg = f"pattern={pattern!r} names the axis {key!r}: use t, c, z or p (position)"
            raise OptionError(msg)
        if axis in found:
            msg = f"{name} names the axis {axis!r} twice"
            raise StackFormatError(msg)
        found[axis] = int(value)
    return found or None


def arrange(paths: Sequence[str], pattern: str | None = None) -> Arrangement | None:
    """Arrange `paths` on the grid their names describe, or None (natural order kept).

    Without `pattern`, None unless every name carries the default tokens; with a `pattern`,
    every name must match it.

    Examples
    --------
    >>> a = arrange(["t0_c1.tif", "t1_c1.tif", "t0_c2.tif", "t1_c2.tif"])
    >>> a.axes, a.shape, a.paths[:2]
    ('tc', (2, 2), ('t0_c1.tif', 't0_c2.tif'))
    >>> arrange(["img_0.tif", "img_1.tif"]) is None
    True
    """
    try:
        regex = re.compile(pattern or DEFAULT_PATTERN)
    except re.error as exc:
        msg = f"pattern={pattern!r} is not a regular expression ({exc})"
        raise OptionError(msg) from exc
    found = {}
    for path in paths:
        name = os.path.basename(path)
        tokens = _tokens(name, regex, pattern or DEFAULT_PATTERN)
        if tokens is None:
            if pattern is None:
                return None
            msg = f"{path} does not match pattern={pattern!r}"
            raise StackFormatError(msg)
        found[path] = tokens
    kinds = {tuple(sorted(t)) for t in found.values()}
    if len(kinds) > 1:
        a, b = sorted(kinds)[:2]
        msg = f"the file names carry different axes ({', '.join(a)} and {', '.join(b)})"
        raise StackFormatError(msg)
    if "p" in next(iter(kinds)):
        positions = sorted({t.pop("p") for t in found.values()})
        if len(positions) > 1:
            msg = (
                f"the files hold {len(positions)} stage positions ({positions[0]}, "
                f"{positions[1]}...): open one position at a time (a glob of its files)"
            )
            raise StackFormatError(msg)
    axes = "".join(a for a in "tcz" if a in next(iter(found.values())))
    if not axes:
        return None
    lows = {a: min(t[a] for t in found.values()) for a in axes}
    highs = {a: max(t[a] for t in found.values()) for a in axes}
    by_index: dict[tuple[int, ...], str] = {}
    for path, tokens in found.items():
        key = tuple(tokens[a] for a in axes)
        if key in by_index:
            msg = f"{by_index[key]} and {path} are both {_spell(axes, key)}"
            raise StackFormatError(msg)
        by_index[key] = path
    ordered = []
    for key in itertools.product(*(range(lows[a], highs[a] + 1) for a in axes)):
        if key not in by_index:
            msg = (
                f"no file for {_spell(axes, key)}: the names span "
                + ", ".join(f"{a} {lows[a]}..{highs[a]}" for a in axes)
                + f" but {len(by_index)} of {_count(lows, highs)} combinations exist "
                "(this is the first missing one)"
            )
            raise SourceNotFoundError(msg)
        ordered.append(by_index[key])
    shape = tuple(highs[a] - lows[a] + 1 for a in axes)
    return Arrangement(tuple(ordered), axes, shape)


def _spell(axes: str, key: tuple[int, ...]) -> str:
    return ", ".join(f"{a}={v}" for a, v in zip(axes, key, strict=True))


def _count(lows: dict[str, int], highs: dict[str, int]) -> int:
    n = 1
    for a, low in lows.items():
        n *= highs[a] - low + 1
    return n
