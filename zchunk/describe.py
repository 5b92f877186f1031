"""``zchunk.info``: what a stack is, how it is stored, and how it will be read."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from zchunk.budget import format_bytes

if TYPE_CHECKING:
    from zchunk.io._readers import Found
    from zchunk.stack import Stack

__all__ = ["format_info", "info"]


def info(stack: Stack, /) -> dict[str, Any]:
    """Describe a stack: sizes, dtype, calibration, storage layout and chunk plan.

    Parameters
    ----------
    stack : Stack
        An opened stack.

    Returns
    -------
    dict
        JSON-ready: ``shape, axes, dtype, planes, size_x, size_y, size_z, size_t, size_c,
        scale, units, layout, chunks, tasks, memory_estimate_bytes`` and more.

    Examples
    --------
    >>> d = info(Stack(da.zeros((5, 8, 9), dtype="uint8", chunks=(5, 4, 9))))
    >>> d["planes"], d["size_x"], d["size_y"], d["chunks"]
    (5, 9, 8, [5, 4, 9])
    """
    chunks = [max(c) if c else 0 for c in stack.data.chunks]
    tasks = math.prod(len(c) for c in stack.data.chunks)
    return _describe(stack, chunks, tasks)


def describe_found(found: Found, /) -> dict[str, Any]:
    """Describe an input as its reader found it, as :func:`info` describes its Stack.

    ``zchunk info`` uses it: no dask array is built (nor dask.array imported).
    """
    chunks = [min(c, n) for c, n in zip(found.plan.chunks, found.shape, strict=True)]
    tasks = math.prod(max(1, -(-n // c)) for c, n in zip(chunks, found.shape, strict=True) if c)
    return _describe(found, chunks, tasks)


def _describe(stack: Stack | Found, chunks: list[int], tasks: int) -> dict[str, Any]:
    sizes = dict(zip(stack.axes, stack.shape, strict=True))
    plan = stack.plan
    dtype = np.dtype(stack.dtype)
    chunk_bytes = math.prod(chunks) * dtype.itemsize
    return {
        "name": stack.name,
        "source": stack.attrs.get("source"),
        "shape": list(stack.shape),
        "axes": stack.axes,
        "dtype": str(dtype),
        "planes": math.prod(stack.shape[:-2]) if len(stack.shape) > 2 else 1,
        "size_x": sizes.get("x", 1),
        "size_y": sizes.get("y", 1),
        "size_z": sizes.get("z", 1),
        "size_t": sizes.get("t", 1),
        "size_c": sizes.get("c", 1),
        "scale": {a: s for a, s in zip(stack.axes, stack.scale, strict=True) if s is not None},
        "units": {a: u for a, u in zip(stack.axes, stack.units, strict=True) if u is not None},
        "channel_names": list(stack.attrs.get("channel_names", ())),
        "nbytes": math.prod(stack.shape) * dtype.itemsize,
        "layout": dict(stack.attrs.get("layout", {})),
        "chunks": chunks,
        "tasks": tasks,
        "chunk_bytes": chunk_bytes,
        "memory_limit_bytes": plan.budget if plan else None,
        "memory_estimate_bytes": plan.memory_estimate if plan else 3 * chunk_bytes,
        "workers": plan.workers if plan else None,
        "plan_fits_budget": plan.fits if plan else True,
        "plan_note": plan.note if plan else "",
    }


def format_info(d: dict[str, Any]) -> str:
    """Render :func:`info` as text for people."""
    axes = d["axes"]
    lines = [
        (
            f"{d['name'] or 'stack'}: {d['planes']} images of {d['size_x']} x {d['size_y']} "
            f"pixels (x, y), {d['dtype']}"
        ),
        f"  axes {axes}, shape {tuple(d['shape'])}, {format_bytes(d['nbytes'])}",
        "  " + ", ".join(f"{a.upper()}={n}" for a, n in zip(axes, d["shape"], strict=True)),
    ]
    if d["scale"]:
        cal = ", ".join(
            f"{a}: {v:g} {d['units'].get(a, '(unit unknown)')}" for a, v in d["scale"].items()
        )
        lines.append(f"  pixel size {cal}")
    else:
        lines.append("  pixel size unknown")
    if d["channel_names"]:
        lines.append(f"  channels {', '.join(d['channel_names'])}")
    layout = d["layout"]
    if layout:
        facts = ", ".join(f"{k} {v}" for k, v in layout.items() if k != "stored_bytes")
        lines.append(f"  storage: {facts}")
    lines.append(
        f"  chunks {tuple(d['chunks'])} ({format_bytes(d['chunk_bytes'])} each), {d['tasks']} tasks"
    )
    if d["memory_limit_bytes"]:
        lines.append(
            f"  memory: about {format_bytes(d['memory_estimate_bytes'])} with {d['workers']} "
            f"workers, budget {format_bytes(d['memory_limit_bytes'])}"
            + ("" if d["plan_fits_budget"] else "  (OVER BUDGET)")
        )
    if d["plan_note"]:
        lines.append(f"  note: {d['plan_note']}")
    return "\n".join(lines)
