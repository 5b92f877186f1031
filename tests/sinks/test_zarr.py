from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from zchunk.sinks import to_ome_zarr, to_zarr
from zchunk.stack import Stack
from zchunk.testing import blobs

UM = "micrometer"

# (shape, axes, dask chunks, expected shards, expected inner chunks); these planes are far
# smaller than MIN_INNER_BYTES, so each inner chunk holds all the planes of its block
CASES = {
    "yx": ((37, 29), "yx", (10, 29), (10, 29), (10, 29)),
    "yx-tiles": ((37, 29), "yx", (16, 12), (16, 12), (16, 12)),
    "zyx": ((6, 37, 29), "zyx", (6, 10, 29), (6, 10, 29), (6, 10, 29)),
    "zyx-tiles": ((6, 37, 29), "zyx", (6, 16, 12), (6, 16, 12), (6, 16, 12)),
    "tzyx": ((3, 4, 21, 17), "tzyx", (1, 4, 8, 17), (1, 4, 8, 17), (1, 4, 8, 17)),
}


def make_stack(case, dtype, *, seed=0, **fields):
    shape, axes, chunks, _, _ = CASES[case]
    a = blobs(shape, dtype, seed=seed)
    return Stack(da.from_array(a, chunks=chunks), axes=axes, **fields), a


def counted(stack):
    counts: Counter[tuple[int, ...]] = Counter()
    lock = threading.Lock()

    def count(block, block_info=None):
        with lock:
            counts[tuple(block_info[0]["chunk-location"])] += 1
        return block

    return stack.replace(data=stack.data.map_blocks(count, dtype=stack.dtype)), counts


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("case", list(CASES))
def test_to_zarr_shards_are_blocks_and_chunks_are_planes(tmp_path, case, dtype):
    _, axes, _, shards, inner = CASES[case]
    stack, a = make_stack(case, dtype, seed=2)
    out = to_zarr(stack, tmp_path / "out.zarr")
    assert out == tmp_path / "out.zarr"
    z = zarr.open_array(out, mode="r")
    assert z.metadata.zarr_format == 3
    assert z.shards == shards
    assert z.chunks == inner
    assert z.metadata.dimension_names == tuple(axes)
    assert z.dtype == np.dtype(dtype)
    assert z.fill_value == 0
    np.testing.assert_array_equal(z[:], a)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.zarr.zchunk-done", "out.zarr"]


def test_zarr_outputs_are_blosc_lz4_bitshuffle(tmp_path):
    # the fast codec (see zchunk/sinks/_zarr.py): zstd's encode cost more than a filter
    stack, a = make_stack("zyx", np.uint16)
    v3 = zarr.open_array(to_zarr(stack, tmp_path / "a.zarr"), mode="r")
    blosc = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())
    codecs = blosc["codecs"][0]["configuration"]["codecs"]
    assert {
        "name": "blosc",
        "configuration": {
            "typesize": 2,
            "cname": "lz4",
            "clevel": 5,
            "shuffle": "bitshuffle",
            "blocksize": 0,
        },
    } in codecs
    v2 = to_ome_zarr(stack, tmp_path / "b.ome.zarr", ngff_version="0.4")
    meta = json.loads((v2 / "0" / ".zarray").read_text())
    assert meta["compressor"] == {
        "id": "blosc",
        "cname": "lz4",
        "clevel": 5,
        "shuffle": 2,
        "blocksize": 0,
    }
    np.testing.assert_array_equal(v3[:], a)
    np.testing.assert_array_equal(zarr.open_array(v2 / "0", mode="r")[:], a)


def test_to_zarr_calibration_round_trips(tmp_path):
    stack, _ = make_stack(
        "tzyx",
        np.uint16,
        scale=(2.5, 1.5, None, 0.2),
        units=("second", UM, None, UM),
        name="embryo",
        attrs={"channel_names": None, "source_paths": ("/nowhere/in.tif",)},
    )
    z = zarr.open_array(to_zarr(stack, tmp_path / "a.zarr"), mode="r")
    assert z.attrs["zchunk"] == {
        "axes": "tzyx",
        "scale": [2.5, 1.5, None, 0.2],
        "units": ["second", UM, None, UM],
        "name": "embryo",
        "channel_names": None,
    }


def test_to_zarr_channel_names(tmp_path):
    a = blobs((2, 3, 8, 8), np.uint8)
    stack = Stack(
        da.from_array(a, chunks=(1, 3, 8, 8)), axes="czyx", attrs={"channel_names": ("a", "b")}
    )
    z = zarr.open_array(to_zarr(stack, tmp_path / "a.zarr"), mode="r")
    assert z.attrs["zchunk"]["channel_names"] == ["a", "b"]
    assert z.chunks == (1, 3, 8, 8)  # small planes: grouped along z, never across channels


def test_every_shard_is_written_even_all_zero(tmp_path):
    stack = Stack(da.zeros((4, 10, 6), dtype="uint16", chunks=(4, 5, 6)))
    out = to_zarr(stack, tmp_path / "zeros.zarr")
    assert sorted(p.name for p in (out / "c" / "0").iterdir()) == ["0", "1"]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_each_shard_is_handed_to_the_disk_when_written(tmp_path, monkeypatch):
    from zchunk.sinks import _written

    advised: list[tuple[str, int]] = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        advised.append((os.readlink(f"/proc/self/fd/{fd}"), advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(_written.os, "posix_fadvise", record)
    a = blobs((4, 10, 6), np.uint16, seed=2)
    out = to_zarr(Stack(da.from_array(a, chunks=(4, 5, 6))), tmp_path / "a.zarr")
    shards = sorted("/".join(Path(path).parts[-4:]) for path, _ in advised)
    assert shards == ["c/0/0/0", "c/0/1/0"]  # the two shards, as the run wrote them
    assert {advice for _, advice in advised} == {os.POSIX_FADV_DONTNEED}
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], a)


def test_writeback_hint_never_fails_a_write(tmp_path):
    from zchunk.sinks import _written
    from zchunk.sinks._done import start_writeback

    _written._hand_to_disk(os.fspath(tmp_path / "missing"))  # deleted since: nothing to hint
    (tmp_path / "f").write_bytes(b"x")
    _written._hand_to_disk(os.fspath(tmp_path / "f"))
    with open(tmp_path / "f", "rb") as fh:
        start_writeback(fh.fileno(), 0, 1)
    start_writeback(-1)  # a bad descriptor: ignored, it is a hint


@pytest.mark.parametrize(
    ("chunks", "shards"),
    [
        (((6,), (7, 13, 10, 7), (29,)), (6, 7, 29)),  # irregular band heights
        (((2, 4), (10, 10, 10, 7), (29,)), (6, 10, 29)),  # irregular z: merged, never split
        (((6,), (10, 10, 10, 7), (12, 10, 7)), (6, 10, 12)),  # irregular x tiles
    ],
)
def test_irregular_chunks_rechunked_to_regular_grid(tmp_path, chunks, shards):
    a = blobs((6, 37, 29), np.uint16, seed=4)
    stack, counts = counted(Stack(da.from_array(a, chunks=chunks)))
    z = zarr.open_array(to_zarr(stack, tmp_path / "a.zarr"), mode="r")
    assert z.shards == shards
    assert z.chunks == shards  # planes far below MIN_INNER_BYTES: all of a block's in one chunk
    np.testing.assert_array_equal(z[:], a)
    assert set(counts.values()) == {1}


@pytest.mark.parametrize(
    ("block", "axes", "min_bytes", "inner"),
    [
        ((12, 16, 16), "zyx", 2048, (4, 16, 16)),  # 512-byte planes: 4 reach 2048 and divide 12
        ((12, 16, 16), "zyx", 512, (1, 16, 16)),  # a plane reaches it: one plane per chunk
        ((12, 16, 16), "zyx", 2500, (6, 16, 16)),  # 5 planes reach it, 6 is the next divisor
        ((13, 16, 16), "zyx", 1536, (1, 16, 16)),  # 13 is prime and over 4 x 3 planes
        ((26, 16, 16), "zyx", 1536, (2, 16, 16)),  # 13 is over 4 x 3: 2, the most under 3
        ((11, 16, 16), "zyx", 1536, (11, 16, 16)),  # 11 is within 4 x 3 planes: one chunk
        ((2, 8, 16, 16), "czyx", 2048, (1, 4, 16, 16)),  # grouped along z, not channels
        ((16, 16, 12), "yxz", 2048, (16, 16, 1)),  # planes along the last axis: not grouped
    ],
)
def test_small_planes_are_grouped_into_inner_chunks(monkeypatch, block, axes, min_bytes, inner):
    from zchunk.sinks import _zarr

    monkeypatch.setattr(_zarr, "MIN_INNER_BYTES", min_bytes)
    assert _zarr.plane_chunks(block, axes, 2) == inner


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_grouped_inner_chunks_hold_the_exact_pixels(tmp_path, monkeypatch, version):
    from zchunk.sinks import _zarr

    monkeypatch.setattr(_zarr, "MIN_INNER_BYTES", 2048)  # 4 of these 512-byte planes
    a = blobs((12, 37, 16), np.uint16, seed=8)
    stack = Stack(da.from_array(a, chunks=(12, 16, 16)), axes="zyx")
    out = to_ome_zarr(stack, tmp_path / "a.ome.zarr", ngff_version=version)
    level = zarr.open_group(out, mode="r")["0"]
    assert level.chunks == (4, 16, 16)
    np.testing.assert_array_equal(level[:], a)


@pytest.mark.parametrize("case", ["zyx-tiles", "tzyx", "yx-tiles"])
def test_each_block_computed_exactly_once(tmp_path, case):
    stack, a = make_stack(case, np.uint16, seed=5)
    stack, counts = counted(stack)
    z = zarr.open_array(to_zarr(stack, tmp_path / "a.zarr"), mode="r")
    assert set(counts) == set(np.ndindex(*stack.data.numblocks))
    assert set(counts.values()) == {1}
    np.testing.assert_array_equal(z[:], a)


def test_to_zarr_under_process_scheduler(tmp_path):
    stack, a = make_stack("zyx-tiles", np.float32)
    with dask.config.set(scheduler="processes", num_workers=2):
        out = to_zarr(stack, tmp_path / "a.zarr")
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], a)


def test_to_zarr_keeps_axis_order(tmp_path):
    a = blobs((18, 14, 4), np.uint16, seed=3)  # y, x, z: zarr keeps the stack's order
    stack = Stack(da.from_array(a, chunks=(6, 14, 4)), axes="yxz")
    z = zarr.open_array(to_zarr(stack, tmp_path / "a.zarr"), mode="r")
    assert z.metadata.dimension_names == ("y", "x", "z")
    assert z.chunks == (6, 14, 1)
    np.testing.assert_array_equal(z[:], a)


# --- OME-Zarr ---------------------------------------------------------------------------


def calibrated(case, dtype, **fields):
    axes = CASES[case][1]
    sizes = {"t": 2.5, "z": 1.5, "y": 0.25, "x": 0.2}
    units = {"t": "second", "z": UM, "y": UM, "x": UM}
    return make_stack(
        case,
        dtype,
        scale=tuple(sizes[a] for a in axes),
        units=tuple(units[a] for a in axes),
        **fields,
    )


def multiscale(group):
    attrs = group.attrs.asdict()
    return attrs.get("ome", attrs)["multiscales"][0]


@pytest.mark.parametrize("case", ["yx", "zyx-tiles", "tzyx"])
def test_ome_zarr_05_validates_and_round_trips(tmp_path, case):
    from ome_zarr_models.v05 import Image

    _, axes, _, shards, inner = CASES[case]
    stack, a = calibrated(case, np.uint16, name="embryo")
    out = to_ome_zarr(stack, tmp_path / "a.ome.zarr")
    group = zarr.open_group(out, mode="r")
    Image.from_zarr(group)  # raises on invalid metadata
    assert group.attrs["ome"]["version"] == "0.5"
    ms = multiscale(group)
    assert ms["name"] == "embryo"
    assert [ax["name"] for ax in ms["axes"]] == list(axes)
    types = {"t": "time", "z": "space", "y": "space", "x": "space"}
    assert [ax["type"] for ax in ms["axes"]] == [types[x] for x in axes]
    units = {"t": "second", "z": UM, "y": UM, "x": UM}
    assert [ax["unit"] for ax in ms["axes"]] == [units[x] for x in axes]
    (dataset,) = ms["datasets"]
    assert dataset["path"] == "0"
    assert dataset["coordinateTransformations"] == [{"type": "scale", "scale": list(stack.scale)}]
    level = group["0"]
    assert level.shards == shards
    assert level.chunks == inner
    assert level.metadata.dimension_names == tuple(axes)
    np.testing.assert_array_equal(level[:], a)


@pytest.mark.parametrize("case", ["yx", "tzyx"])
def test_ome_zarr_04_is_zarr_v2_for_fiji(tmp_path, case):
    from ome_zarr_models.v04 import Image

    inner = CASES[case][4]
    stack, a = calibrated(case, np.float32)
    stack, counts = counted(stack)
    out = to_ome_zarr(stack, tmp_path / "a.ome.zarr", ngff_version="0.4")
    group = zarr.open_group(out, mode="r")
    Image.from_zarr(group)
    ms = multiscale(group)
    assert ms["version"] == "0.4"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == list(stack.scale)
    level = group["0"]
    assert level.metadata.zarr_format == 2
    assert level.chunks == inner  # plane chunks: every block covers whole chunks
    zarray = json.loads((out / "0" / ".zarray").read_text())
    assert zarray["dimension_separator"] == "/"
    assert zarray["compressor"]["id"] == "blosc"
    np.testing.assert_array_equal(level[:], a)
    assert set(counts.values()) == {1}


def test_ome_zarr_unknown_scale_becomes_one_and_unknown_units_are_left_out(tmp_path):
    from ome_zarr_models.v05 import Image

    stack, _ = make_stack("zyx", np.uint8, scale=(None, 0.5, 0.5), units=(None, "um", "parsec-ish"))
    group = zarr.open_group(to_ome_zarr(stack, tmp_path / "a.ome.zarr"), mode="r")
    Image.from_zarr(group)
    ms = multiscale(group)
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]
    assert [ax.get("unit") for ax in ms["axes"]] == [None, UM, None]
    # the exact calibration, unknowns included, is kept beside the NGFF metadata
    assert group.attrs["zchunk"]["scale"] == [None, 0.5, 0.5]


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_axes_in_ngff_order_with_channels(tmp_path, version):
    from ome_zarr_models import v04, v05

    a = blobs((4, 2, 16, 12), np.uint16, seed=8)  # z, c, y, x
    stack = Stack(
        da.from_array(a, chunks=(4, 1, 8, 12)),
        axes="zcyx",
        scale=(1.5, None, 0.25, 0.25),
        units=(UM, None, UM, UM),
        attrs={"channel_names": ["GFP", "DAPI"]},
    )
    out = to_ome_zarr(stack, tmp_path / "a.ome.zarr", ngff_version=version)
    group = zarr.open_group(out, mode="r")
    (v05 if version == "0.5" else v04).Image.from_zarr(group)
    ms = multiscale(group)
    assert [(ax["name"], ax["type"]) for ax in ms["axes"]] == [
        ("c", "channel"),
        ("z", "space"),
        ("y", "space"),
        ("x", "space"),
    ]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.5, 0.25, 0.25]
    np.testing.assert_array_equal(group["0"][:], a.transpose(1, 0, 2, 3))
    assert group.attrs["zchunk"]["channel_names"] == ["GFP", "DAPI"]


def test_ome_zarr_unknown_version(tmp_path):
    stack, _ = make_stack("yx", np.uint8)
    with pytest.raises(ValueError, match=r"ngff_version='0\.3' is not supported"):
        to_ome_zarr(stack, tmp_path / "a.ome.zarr", ngff_version="0.3")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [bool, np.complex128])
def test_unwritable_dtypes(tmp_path, dtype):
    stack = Stack(da.zeros((2, 4, 4), dtype=dtype, chunks=2))
    for write, name in [(to_zarr, "a.zarr"), (to_ome_zarr, "a.ome.zarr")]:
        with pytest.raises(ValueError, match=f"dtype {np.dtype(dtype)}"):
            write(stack, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_a_write_back_error_fails_the_run(tmp_path, monkeypatch):
    """Linux reports a failed write-back once, to the first fsync that sees it: that must be ours.

    A background thread that fsynced the block files early and dropped its errors (as one did)
    let the commit's own fsync find the pages clean, and the run committed an output that never
    reached the disk, with exit 0.
    """
    import errno
    import os

    real, reported = os.fsync, set()

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isfile(path) and f"{os.sep}c{os.sep}" in path and path not in reported:
            reported.add(path)  # every stored chunk file: its write-back fails, reported once
            raise OSError(errno.EIO, "Input/output error (simulated write-back failure)", path)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    hinted = []  # the early write-back hint (start_writeback) runs, and takes no error
    if hasattr(os, "posix_fadvise"):
        advise = os.posix_fadvise
        monkeypatch.setattr(os, "posix_fadvise", lambda *a: hinted.append(a) or advise(*a))
    a = np.arange(8 * 64 * 64, dtype="uint16").reshape(8, 64, 64)
    stack = Stack(da.from_array(a, chunks=(8, 16, 64)))
    with pytest.raises(OSError, match="write-back failure"):
        to_zarr(stack, tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
    assert hinted or not hasattr(os, "posix_fadvise")


def test_a_tiff_scratch_array_keeps_one_plane_per_chunk(tmp_path, monkeypatch):
    """The compressed TIFF export reads its scratch page by page: k planes a chunk decode k."""
    from zchunk.sinks import _zarr

    monkeypatch.setattr(_zarr, "MIN_INNER_BYTES", 2048)  # 4 of these 512-byte planes
    data = da.zeros((12, 16, 16), dtype="uint16", chunks=(12, 16, 16))
    assert _zarr.create_scratch(tmp_path / "s.zarr", data, axes="zyx").chunks == (1, 16, 16)
    kept = _zarr.create_aligned_array(os.fspath(tmp_path / "k.zarr"), data, axes="zyx")
    assert kept.chunks == (4, 16, 16)
