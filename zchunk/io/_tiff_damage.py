"""Saying in words where and how a TIFF file is damaged, from what tifffile raised or logged.

A damaged header makes tifffile raise anything (a division by zero for a zero image width, a
type error for a tag with two values where one is expected, "incompatible keyframe" for a page
that does not match the first) or log a message naming its own classes
(``<tifffile.TiffTag 256 @2468>``). A user needs neither: they need to know that the file is
damaged and where. :func:`describe` finds the page and tag tifffile was reading in the
traceback of what it raised; :func:`plain` rewrites a logged message with pages, tags and byte
offsets in words. tifffile's own descriptions of damage ("invalid data type 1028", "suspicious
number of tags 10825") are kept; Python's wording of a failed operation never is.
"""

from __future__ import annotations

import ast
import re

import tifffile

__all__ = ["describe", "plain"]

_OBJECT = re.compile(r"<tifffile\.(TiffTag|TiffPage|TiffFrame) \(?(\d+)[^@>]*@(\d+)>")
_RAISED = re.compile(r"raised (\w+)\((.*)\)?$", re.DOTALL)
_MARKER = re.compile(r"<[^<>]*>")  # <TiffTag.fromfile>, <tifffile.TiffFile 'name'>, ...


def _tag_words(code: int, offset: int) -> str:
    name = tifffile.TIFF.TAGS.get(code)
    return f"tag {code}{f' ({name})' if name else ''} at byte {offset}"


def _page_words(index: int, offset: int) -> str:
    return f"page {index} (tag directory at byte {offset})"


def _object_words(match: re.Match[str]) -> str:
    kind, number, offset = match.group(1), int(match.group(2)), int(match.group(3))
    return _tag_words(number, offset) if kind == "TiffTag" else _page_words(number, offset)


def _domain_text(kind: str, text: str) -> str | None:
    """Return tifffile's own description of damage in an exception's text, or None."""
    if kind == "TiffFileError" or " is not a valid " in text:
        return text
    return None


def plain(message: str) -> str:
    """Rewrite a tifffile log message in words: pages, tags and offsets, no Python names.

    Examples
    --------
    >>> plain("<tifffile.TiffFrame 3 @2466> <TiffTag.fromfile> raised "
    ...       "TiffFileError('<tifffile.TiffTag 256 @2468> invalid data type 1028')")
    'page 3 (tag directory at byte 2466): tag 256 (ImageWidth) at byte 2468: invalid data type 1028'
    """
    head, raised = message, None
    match = _RAISED.search(message)
    if match is not None:
        head = message[: match.start()]
        try:
            inner = str(ast.literal_eval(match.group(2).rstrip(")") or "''"))
        except (ValueError, SyntaxError):  # cut at 128 characters by tifffile
            inner = match.group(2).strip("'\")")
        raised = _domain_text(match.group(1), inner) or "cannot be read"
    parts = [_words(head)]
    if raised is not None:
        parts.append(_words(raised))
    return ": ".join(p for p in parts if p)


def _words(text: str) -> str:
    text = _OBJECT.sub(lambda m: f"\0{_object_words(m)}\0", text)
    text = _MARKER.sub("", text)
    text = re.sub(r"@(\d+)", r"at byte \1", text)
    text = re.sub(r"\s+raised\s+", ": ", text)
    pieces = [" ".join(p.split()) for p in text.split("\0")]
    return ": ".join(p.strip(" :") for p in pieces if p.strip(" :"))


def _locate(exc: BaseException) -> tuple[str | None, str | None, str | None]:
    """Page and tag tifffile was reading when `exc` was raised, and what it was doing."""
    page = tag = phase = None
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # the innermost first
        local = frame.f_locals
        this = local.get("self")
        name = frame.f_code.co_name
        try:
            if tag is None and isinstance(this, tifffile.TiffTag):
                tag = _tag_words(int(this.code), int(this.offset))
            for obj in (this, local.get("page"), local.get("keyframe")):
                if page is None and isinstance(obj, tifffile.TiffPage | tifffile.TiffFrame):
                    page = _page_words(int(obj._index[0]), int(obj.offset))
            if page is None and isinstance(local.get("pageindex"), int):
                page = f"page {local['pageindex']}"
        except (AttributeError, IndexError, TypeError, ValueError):  # half-built by tifffile
            pass
        if phase is None and (name == "detect_series" or name.startswith("series_")):
            phase = "imagej" if name == "series_imagej" else "series"
    return page, tag, phase


def describe(exc: BaseException) -> str:
    """Say where and how a file is damaged, from an exception tifffile raised reading it.

    The result names the page (and tag) being read when it is known, and what is wrong in
    tifffile's words when tifffile said it; never an exception class or Python's message.
    """
    page, tag, phase = _locate(exc)
    text = plain(str(exc))
    if not isinstance(exc, tifffile.TiffFileError):
        text = _domain_text(type(exc).__name__, text) or ""
    if str(exc) == "incompatible keyframe":
        text = "its size or its number of strips/tiles differs from the first page's"
    elif phase == "imagej":
        text = "its ImageJ description does not fit its pages"
    elif phase == "series" and not text:
        text = "its size, pixel type or page count does not fit its metadata"
    elif not text:
        text = "its tags cannot be read" if page or tag else "its header cannot be read"
    where = ", ".join(w for w in (page, tag) if w and w not in text)
    return f"{where}: {text}" if where else text
