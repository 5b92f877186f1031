import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zchunk.budget import format_bytes, parse_memory
from zchunk.chunking import (
    COPIES_PER_WORKER,
    STREAM_MIN_READ,
    STREAM_TASKS_PER_WORKER,
    plan_chunks,
    plan_stream_rows,
)


@st.composite
def cases(draw):
    axes = draw(st.sampled_from(["yx", "zyx", "tzyx", "zcyx", "tczyx"]))
    shape = tuple(draw(st.integers(1, 300 if a in "yx" else 40)) for a in axes)
    itemsize = draw(st.sampled_from([1, 2, 4, 8]))
    tiled = draw(st.booleans())
    compressed = draw(st.booleans())
    h, w = shape[-2:]
    if tiled:
        y_align = x_align = draw(st.sampled_from([16, 32, 64]))
    elif compressed:
        y_align, x_align = draw(st.integers(1, h)), None
    else:
        y_align, x_align = 1, 1
    seg = y_align * (x_align or w) * itemsize if (tiled or compressed) else 0
    budget = draw(st.integers(1_000, 50_000_000))
    workers = draw(st.integers(1, 8))
    min_tile = draw(st.sampled_from([1, 1, 8, 33]))
    return shape, axes, itemsize, budget, workers, y_align, x_align, seg, min_tile


@given(cases())
@settings(max_examples=400, deadline=None)
def test_plan_properties(case):
    shape, axes, itemsize, budget, workers, y_align, x_align, seg, min_tile = case
    plan = plan_chunks(
        shape,
        axes,
        itemsize,
        budget=budget,
        workers=workers,
        y_align=y_align,
        x_align=x_align,
        segment_bytes=seg,
        min_tile=min_tile,
    )
    chunks = plan.chunks
    # z whole, other non-spatial axes 1
    for a, n, c in zip(axes[:-2], shape[:-2], chunks[:-2], strict=True):
        assert c == (n if a == "z" else 1)
    # chunks tile the shape
    assert all(1 <= c <= n for c, n in zip(chunks, shape, strict=True))
    assert plan.tasks == math.prod(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))
    # alignment: bands are whole strips/tiles (or the whole height)
    band, cols = chunks[-2], chunks[-1]
    assert band % min(y_align, shape[-2]) == 0 or band == shape[-2]
    assert band >= min(min_tile, shape[-2])  # filters' halos stay small next to the chunk
    if cols < shape[-1]:
        assert cols >= min(min_tile, shape[-1])
    if x_align is None:
        assert cols == shape[-1]
    else:
        assert cols % min(x_align, shape[-1]) == 0 or cols == shape[-1]
    # the budget holds whenever the plan says so
    assert plan.chunk_bytes == math.prod(chunks) * itemsize
    assert plan.memory_estimate == plan.chunk_bytes * workers * COPIES_PER_WORKER + workers * seg
    if plan.fits:
        assert plan.memory_estimate <= budget
    else:
        # only the smallest aligned chunk is allowed over budget
        smallest = min(max(y_align, -(-min_tile // y_align) * y_align), shape[-2])
        assert band in (smallest, shape[-2])
        assert plan.note


def test_plan_uses_workers_for_small_stacks():
    plan = plan_chunks((10, 64, 64), "zyx", 2, budget=2**30, workers=4)
    assert plan.tasks == 4


def test_plan_single_strip_pages_are_whole_page_bands():
    plan = plan_chunks(
        (50, 512, 512), "zyx", 2, budget=2**30, workers=2, y_align=512, segment_bytes=512 * 1024
    )
    assert plan.chunks == (50, 512, 512)
    assert plan.fits


def test_plan_over_budget_is_reported():
    plan = plan_chunks((500, 2048, 2048), "zyx", 2, budget=2**26, workers=2, y_align=2048)
    assert not plan.fits
    assert "over budget" in plan.note


def test_plan_errors():
    with pytest.raises(ValueError, match="end with 'yx'"):
        plan_chunks((3, 4, 5), "yxz", 1, budget=100, workers=1)
    with pytest.raises(ValueError, match="positive"):
        plan_chunks((3, 4, 5), "zyx", 1, budget=0, workers=1)


@pytest.mark.parametrize(
    ("text", "n"),
    [("2GiB", 2 * 1024**3), ("512MB", 512 * 10**6), ("1.5 gib", int(1.5 * 1024**3)), (7, 7)],
)
def test_parse_memory(text, n):
    assert parse_memory(text) == n


@pytest.mark.parametrize("bad", ["lots", "-1GB", "0", "2XB", True, 0])
def test_parse_memory_rejects(bad):
    with pytest.raises(ValueError, match="memory limit"):
        parse_memory(bad)


@given(st.integers(0, 2**62))
def test_format_bytes_is_dasks(n):
    from dask.utils import format_bytes as dask_format_bytes

    assert format_bytes(n) == dask_format_bytes(n)


def test_format_bytes():
    assert format_bytes(2 * 1024**2) == "2.00 MiB"


@given(
    height=st.integers(1, 5000),
    plane_row=st.integers(1, 2**16),
    state_row=st.integers(0, 2**18),
    budget=st.integers(1_000, 2**31),
    workers=st.integers(1, 16),
    lead_tasks=st.integers(1, 50),
    y_align=st.integers(1, 512),
)
@settings(max_examples=500, deadline=None)
def test_stream_rows_properties(height, plane_row, state_row, budget, workers, lead_tasks, y_align):
    rows = plan_stream_rows(
        height,
        plane_row_bytes=plane_row,
        state_row_bytes=state_row,
        budget=budget,
        workers=workers,
        lead_tasks=lead_tasks,
        y_align=y_align,
    )
    align = min(y_align, height)
    assert 1 <= rows <= height
    assert rows == height or rows % align == 0  # bands end on strip/tile boundaries
    per_task = budget // (workers * COPIES_PER_WORKER)
    if align * (plane_row + state_row) <= per_task:  # the budget holds when any band fits
        assert rows * (plane_row + state_row) <= per_task
    # never taller than balance (enough tasks per worker) or the read size asks for
    bands = math.ceil(STREAM_TASKS_PER_WORKER * workers / lead_tasks)
    assert rows <= max(align, math.ceil(height / bands), math.ceil(STREAM_MIN_READ / plane_row))


def test_budget_is_parsed_once_and_validated():
    from zchunk.budget import Budget
    from zchunk.errors import OptionError

    b = Budget.parse("2GiB", workers=3)
    assert (b.bytes, b.workers) == (2 * 1024**3, 3)
    assert Budget.parse(b) is b  # a Budget passes through unparsed
    assert Budget.parse(b, workers=1) == Budget(2 * 1024**3, 1)
    with pytest.raises(OptionError, match="workers=0"):
        Budget.parse("1GiB", workers=0)
    with pytest.raises(OptionError, match="memory limit"):
        Budget.parse("lots")


def test_a_filter_plans_smaller_chunks_at_least_four_halos_tall():
    import numpy as np

    from zchunk.budget import Budget
    from zchunk.chunking import FILTER_MEMORY_FACTOR, PROJECTION, Purpose, plan

    budget = Budget(64 * 2**20, 2)
    shape, dtype = (50, 2000, 2000), np.dtype("uint16")
    projection = plan(shape, "zyx", dtype, budget, purpose=PROJECTION)
    filtering = plan(shape, "zyx", dtype, budget, purpose=Purpose.filter(2))
    assert filtering.chunks[1] < projection.chunks[1]
    assert filtering.chunks[1] >= 4 * 2
    assert filtering.budget == budget.bytes // FILTER_MEMORY_FACTOR
    assert (projection.purpose, filtering.purpose) == (PROJECTION, Purpose.filter(2))
