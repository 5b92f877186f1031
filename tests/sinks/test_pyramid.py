import dask.array as da
import numpy as np
import pytest
import zarr

from zchunk.errors import OptionError
from zchunk.sinks import save, to_ome_zarr
from zchunk.sinks._pyramid import downsample_mean, level_shapes
from zchunk.stack import Stack
from zchunk.testing import blobs

UM = "micrometer"


def mean2x2(a):
    """Oracle: mean of 2x2 blocks of the last two axes, odd edges averaged with what exists."""
    h, w = a.shape[-2:]
    out = np.empty((*a.shape[:-2], -(-h // 2), -(-w // 2)), dtype=np.float64)
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            out[..., i, j] = a[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(-2, -1))
    if a.dtype.kind in "iu":
        return np.floor(out + 0.5).astype(a.dtype)
    return out.astype(a.dtype)


def multiscale(group):
    attrs = group.attrs.asdict()
    return attrs.get("ome", attrs)["multiscales"][0]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
@pytest.mark.parametrize("shape", [(2, 6, 8), (3, 7, 5), (1, 1, 9)])
def test_downsample_mean_matches_numpy(dtype, shape, rng):
    a = rng.integers(0, 200, size=shape).astype(dtype)
    out = downsample_mean(a)
    assert out.dtype == a.dtype
    if a.dtype.kind == "f":
        np.testing.assert_allclose(out, mean2x2(a), rtol=1e-6)
    else:
        np.testing.assert_array_equal(out, mean2x2(a))


def test_downsample_rounds_halves_up():
    a = np.array([[1, 2], [2, 1]], dtype=np.uint8)  # mean 1.5
    assert downsample_mean(a).tolist() == [[2]]


def test_level_shapes_stop_when_a_plane_is_one_pixel():
    assert level_shapes((4, 5, 3), 10) == [(4, 5, 3), (4, 3, 2), (4, 2, 1)]
    assert level_shapes((4, 5, 3), 0) == [(4, 5, 3)]


@pytest.mark.parametrize("version", ["0.5", "0.4"])
@pytest.mark.parametrize(
    ("axes", "shape", "chunks", "scale"),
    [
        ("zyx", (4, 30, 21), (4, 8, 21), (2.0, 0.5, 0.25)),  # odd x, blocks smaller than 128
        ("tzyx", (2, 3, 17, 40), (1, 3, 9, 20), (5.0, 1.5, 0.3, 0.3)),  # odd block height
        ("yx", (33, 64), (33, 64), (0.5, 0.5)),
    ],
)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_pyramid_levels_validate_and_hold_the_mean(
    tmp_path, version, axes, shape, chunks, scale, dtype
):
    from ome_zarr_models import v04, v05

    a = blobs(shape, dtype, seed=3)
    units = tuple("second" if x == "t" else UM for x in axes)
    stack = Stack(da.from_array(a, chunks=chunks), axes=axes, scale=scale, units=units)
    out = to_ome_zarr(stack, tmp_path / "a.ome.zarr", ngff_version=version, pyramid=2)
    group = zarr.open_group(out, mode="r")
    (v05 if version == "0.5" else v04).Image.from_zarr(group)
    ms = multiscale(group)
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    expected = a
    for level, dataset in enumerate(ms["datasets"]):
        factor = 2**level
        want = [*scale[:-2], scale[-2] * factor, scale[-1] * factor]
        assert dataset["coordinateTransformations"] == [{"type": "scale", "scale": want}]
        array = group[str(level)]
        assert array.dtype == a.dtype
        if level:
            expected = mean2x2(expected)
        assert array.shape == expected.shape
        # each level is the mean of the level before it, as written
        if level == 1 or dtype == np.uint16:
            np.testing.assert_allclose(array[:], expected, rtol=1e-6)
        if level:
            np.testing.assert_array_equal(array[:], downsample_mean(group[str(level - 1)][:]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.ome.zarr.zchunk-done", "a.ome.zarr"]


def test_pyramid_shards_are_aligned_and_stay_large(tmp_path):
    a = blobs((3, 64, 48), np.uint8, seed=1)
    stack = Stack(da.from_array(a, chunks=(3, 16, 48)))
    group = zarr.open_group(to_ome_zarr(stack, tmp_path / "a.ome.zarr", pyramid=2), mode="r")
    assert group["0"].shards == (3, 16, 48)
    # blocks under 128 px: each level reads 2x2 blocks of the one before, shards keep their size
    assert group["1"].shards == (3, 16, 24)
    assert group["1"].shape == (3, 32, 24)
    assert group["2"].shape == (3, 16, 12)


def test_pyramid_stops_early(tmp_path):
    a = blobs((2, 5, 3), np.uint8, seed=1)
    out = to_ome_zarr(Stack(da.from_array(a)), tmp_path / "a.ome.zarr", pyramid=6)
    ms = multiscale(zarr.open_group(out, mode="r"))
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]


def test_save_pyramid_passes_through_and_rejects_other_formats(tmp_path):
    a = blobs((2, 16, 16), np.uint16, seed=2)
    stack = Stack(da.from_array(a, chunks=(2, 8, 16)))
    group = zarr.open_group(save(stack, tmp_path / "a.ome.zarr", pyramid=1), mode="r")
    assert group["1"].shape == (2, 8, 8)
    for name in ("a.tif", "a.ome.tif", "a.zarr"):
        with pytest.raises(OptionError, match=r"OME-Zarr outputs only.*\.ome\.zarr"):
            save(stack, tmp_path / name, pyramid=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.ome.zarr.zchunk-done", "a.ome.zarr"]
    with pytest.raises(OptionError, match="pyramid=-1"):
        to_ome_zarr(stack, tmp_path / "b.ome.zarr", pyramid=-1)


def test_pyramid_resume_recomputes_levels(tmp_path, monkeypatch):
    # interrupted while writing level 1 (level 0 complete), with a level-1 shard damaged
    # meanwhile: resume recomputes every level-1 block from level 0, never keeps one
    import dask

    from zchunk.sinks import _pyramid

    a = blobs((2, 32, 16), np.uint16, seed=2)
    stack = Stack(da.from_array(a, chunks=(2, 8, 16)))
    ref = zarr.open_group(to_ome_zarr(stack, tmp_path / "ref.ome.zarr", pyramid=1), mode="r")
    out = tmp_path / "a.ome.zarr"
    real, calls, fired = _pyramid.downsample_mean, [], []

    def counted(block):
        calls.append(1)
        if len(calls) == 3 and not fired:  # the first may be dask's dtype probe
            fired.append(1)
            raise KeyboardInterrupt
        return real(block)

    monkeypatch.setattr(_pyramid, "downsample_mean", counted)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_ome_zarr(stack, out, pyramid=1)
    partial = tmp_path / ".a.ome.zarr.zchunk-partial"
    written = [p for p in (partial / "1").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert written  # one level-1 block was written before the interruption
    for shard in written:
        shard.write_bytes(b"\0" * shard.stat().st_size)
    calls.clear()
    with dask.config.set(scheduler="synchronous"):
        done = zarr.open_group(to_ome_zarr(stack, out, pyramid=1, resume=True), mode="r")
    assert len(calls) >= 2  # both level-1 blocks (8 of its 16 rows each), again
    for level in "01":
        np.testing.assert_array_equal(done[level][:], ref[level][:])


def _interrupting(after):
    """A block function that raises KeyboardInterrupt once, at its call number `after` + 1."""
    calls = []

    def block(b):
        calls.append(1)
        if len(calls) == after + 1:
            raise KeyboardInterrupt
        return b

    return block


@pytest.mark.parametrize("where", ["level 0", "pyramid"])
def test_interrupted_pyramid_resumes_identical(tmp_path, monkeypatch, where):
    import dask

    from zchunk.sinks import _pyramid

    a = blobs((3, 40, 24), np.uint16, seed=4)
    stack = Stack(da.from_array(a, chunks=(3, 8, 24)), scale=(1.0, 0.5, 0.5))
    ref = zarr.open_group(to_ome_zarr(stack, tmp_path / "ref.ome.zarr", pyramid=2), mode="r")
    out = tmp_path / "a.ome.zarr"
    if where == "level 0":
        stack = stack.replace(data=stack.data.map_blocks(_interrupting(2), dtype=a.dtype))
    else:
        real, stop = _pyramid.downsample_mean, _interrupting(1)
        monkeypatch.setattr(_pyramid, "downsample_mean", lambda b: real(stop(b)))
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        to_ome_zarr(stack, out, pyramid=2)
    assert not out.exists()
    assert (tmp_path / ".a.ome.zarr.zchunk-partial").is_dir()
    with dask.config.set(scheduler="synchronous"):
        done = zarr.open_group(to_ome_zarr(stack, out, pyramid=2, resume=True), mode="r")
    assert multiscale(done) == multiscale(ref)
    for level in "012":
        np.testing.assert_array_equal(done[level][:], ref[level][:])
    assert not (tmp_path / ".a.ome.zarr.zchunk-partial").exists()
