import dask
import dask.array as da
import numpy as np
import pytest

import zchunk
from zchunk.errors import ChunkingError, StackFormatError
from zchunk.io import _tiff
from zchunk.ops.projection import cast_rounded, project, project_many
from zchunk.stack import Stack
from zchunk.testing import blobs

EXACT = ["max", "min", "sum", "median"]
FLOATY = ["mean", "std"]


def _graph_has_no_rechunk(array):
    return not any("rechunk" in str(k) for k in dict(array.__dask_graph__()))


@pytest.mark.parametrize("method", EXACT + FLOATY)
@pytest.mark.parametrize("chunks", [(7, 10, 14), (7, 5, 7), (7, 3, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_project_matches_numpy(method, chunks, dtype):
    a = blobs((7, 10, 14), dtype, seed=11)
    out = project(Stack(da.from_array(a, chunks=chunks)), method)
    ref = getattr(np, method)(a, axis=0)
    got = out.data.compute()
    assert got.dtype == ref.dtype
    if method in EXACT:
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert _graph_has_no_rechunk(out.data)
    assert out.axes == "yx"


@pytest.mark.parametrize("q", [0, 5, 37.5, 50, 95, 100])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("nz", [6, 7])
def test_percentile_matches_numpy(q, dtype, nz):
    a = blobs((nz, 12, 9), dtype, seed=2)
    got = project(Stack(da.from_array(a, chunks=(nz, 5, 4))), "percentile", q=q).data.compute()
    ref = np.percentile(a, q, axis=0)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_median_even_count_is_mean_of_middle_pair():
    a = np.array([1, 2, 10, 11], dtype=np.uint16).reshape(4, 1, 1)
    assert project(Stack(da.from_array(a)), "median").data.compute()[0, 0] == 6.0


def test_nan_propagates_like_numpy():
    a = blobs((5, 4, 4), np.float32)
    a[2, 1, 1] = np.nan
    s = Stack(da.from_array(a))
    for method in ["max", "median", "mean"]:
        got = project(s, method).data.compute()
        assert np.isnan(got[1, 1])
        assert np.isfinite(np.delete(got.ravel(), 5)).all()


def test_timelapse_axes():
    a = blobs((3, 5, 16, 12), np.uint16)
    s = Stack(da.from_array(a, chunks=(1, 5, 8, 12)), axes="tzyx", scale=(2.0, 1.0, 0.5, 0.5))
    z = project(s, "max", axis="z")
    assert z.axes == "tyx"
    assert z.scale == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(z.data.compute(), a.max(axis=1))
    with pytest.raises(ChunkingError, match="whole='t'"):
        project(s, "max", axis="t")
    t = project(Stack(da.from_array(a, chunks=(3, 1, 8, 12)), axes="tzyx"), "median", axis="t")
    assert t.axes == "zyx"
    np.testing.assert_array_equal(t.data.compute(), np.median(a, axis=0))


def test_time_projection_reopens_file_whole_along_t(tmp_path):
    import tifffile

    a = blobs((4, 3, 20, 30), np.uint16)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, a, imagej=True, metadata={"axes": "TZYX"})
    s = zchunk.open(str(path))
    assert s.data.numblocks[0] == 4
    out = project(s, "max", axis="t")
    assert out.axes == "zyx"
    np.testing.assert_array_equal(out.data.compute(), a.max(axis=0))


def test_project_many_reads_each_chunk_once(tmp_path):
    import tifffile

    a = blobs((8, 60, 40), np.uint16)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, a)
    s = zchunk.open(str(path), memory_limit="100KB")
    assert s.data.npartitions > 2
    many = project_many(s, ["max", "median", "mean"])
    graph = dict(many["max"].data.__dask_graph__())
    reads = [k for k in graph if isinstance(k, tuple) and k[0].startswith("zchunk-bands-")]
    assert len(reads) == s.data.npartitions  # one reading task per chunk, shared by all three
    _tiff.READ_STATS.reset()
    results = dask.compute(*(m.data for m in many.values()), scheduler="threads")
    assert _tiff.READ_STATS.bytes_read == a.nbytes  # every byte read once
    np.testing.assert_array_equal(results[0], a.max(axis=0))
    np.testing.assert_array_equal(results[1], np.median(a, axis=0))
    np.testing.assert_allclose(results[2], a.mean(axis=0), rtol=1e-12)


# ImageJ semantics: reference written from ImageJ 1.54's ZProjector, pixel by pixel -----------


def _ij_round(v):
    return int(float(v) + 0.5)


def _imagej_reference(a, method):
    n, h, w = a.shape
    f32 = np.float32
    out_type = a.dtype
    out = np.zeros((h, w), dtype=np.float64)
    for y in range(h):
        for x in range(w):
            col = [f32(v) for v in a[:, y, x]]
            if method in ("max", "min"):  # if (v > acc) acc = v, from -/+Float.MAX_VALUE
                big = np.finfo(np.float32).max
                acc = -big if method == "max" else big
                for v in col:
                    if (v > acc) if method == "max" else (v < acc):
                        acc = v
                out[y, x] = acc
            elif method == "mean" and out_type == np.float32:  # 1.54: non-NaN double mean
                ok = [float(v) for v in col if not np.isnan(v)]
                out[y, x] = f32(sum(ok) / len(ok)) if ok else np.nan
            elif method in ("sum", "mean"):
                acc = f32(0)
                for v in col:
                    acc = f32(acc + v)
                out[y, x] = acc if method == "sum" else f32(acc / f32(n))
            elif method == "std":
                s = s2 = 0.0
                for v in col:
                    s += float(v)
                    s2 += float(v) * float(v)
                var = (n * s2 - s * s) / n
                out[y, x] = f32(np.sqrt(var / (n - 1.0))) if n > 1 and var > 0 else 0.0
            elif method == "median":
                srt = sorted(col, key=lambda v: (np.isnan(v), v))  # Java: NaN sorts last
                m = n // 2
                out[y, x] = srt[m] if n % 2 else f32(f32(srt[m - 1] + srt[m]) / f32(2))
    if method in ("max", "min"):
        return out.astype(out_type)
    if method == "mean" and out_type != np.float32:
        return np.vectorize(_ij_round)(out).astype(out_type)
    if method == "median" and out_type == np.uint8:
        return np.vectorize(_ij_round)(out).astype(np.uint8)
    return out.astype(np.float32)


@pytest.mark.parametrize("method", ["max", "min", "sum", "mean", "std", "median"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("nz", [1, 6, 7])
def test_imagej_semantics(method, dtype, nz):
    a = blobs((nz, 9, 11), dtype, seed=5)
    if dtype == np.uint16:
        a[:, 0, :] = 65535 - np.arange(nz, dtype=np.uint16)[:, None]  # large values
    got = project(Stack(da.from_array(a, chunks=(nz, 4, 6))), method, like="imagej")
    ref = _imagej_reference(a, method)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got.data.compute(), ref)


@pytest.mark.parametrize("method", ["max", "min", "sum", "mean", "std", "median"])
def test_imagej_semantics_with_nan(method):
    a = blobs((6, 9, 11), np.float32, seed=5)
    a[2, 1, :] = np.nan
    a[:, 3, 3] = np.nan  # a column of NaN only
    got = project(Stack(da.from_array(a, chunks=(6, 4, 6))), method, like="imagej")
    with np.errstate(invalid="ignore"):
        ref = _imagej_reference(a, method)
    np.testing.assert_array_equal(got.data.compute(), ref)


def test_imagej_average_rounds_half_up():
    a = np.array([1, 2], dtype=np.uint8).reshape(2, 1, 1)  # mean 1.5 -> 2, numpy would give 1.5
    got = project(Stack(da.from_array(a)), "mean", like="imagej").data.compute()
    assert got.dtype == np.uint8
    assert got[0, 0] == 2


def test_imagej_refuses_other_types_and_percentile():
    s = Stack(da.zeros((3, 4, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="ImageJ's types"):
        project(s, "max", like="imagej")
    s8 = Stack(da.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="no ImageJ equivalent"):
        project(s8, "percentile", q=50, like="imagej").data.compute()


def test_dtype_cast_rounds_and_clips():
    a = np.array([[[-5.0]], [[300.7]], [[2.5]]], dtype=np.float32)
    s = Stack(da.from_array(a))
    assert project(s, "max", dtype="uint8").data.compute()[0, 0] == 255
    assert project(s, "min", dtype="uint8").data.compute()[0, 0] == 0
    assert project(s, "median", dtype="uint8").data.compute()[0, 0] == 2  # rint(2.5) = 2
    np.testing.assert_array_equal(
        cast_rounded(np.array([1e10, -1e10]), "int16"), np.array([32767, -32768], dtype=np.int16)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "mode"}, ValueError, "not one of"),
        ({"method": "percentile"}, ValueError, "needs q"),
        ({"method": "percentile", "q": 101}, ValueError, "between 0 and 100"),
        ({"method": "max", "q": 5}, ValueError, "only for method='percentile'"),
        ({"method": "max", "axis": "c"}, ValueError, "'z' or 't'"),
        ({"method": "max", "axis": "t"}, StackFormatError, "axes are 'zyx'"),
        ({"method": "max", "like": "fiji"}, ValueError, "'numpy' or 'imagej'"),
    ],
)
def test_errors(kwargs, error, match):
    s = Stack(da.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(error, match=match):
        project(s, **kwargs)


def test_split_axis_is_refused():
    s = Stack(da.zeros((6, 4, 4), dtype=np.uint8, chunks=(3, 4, 4)))
    with pytest.raises(ChunkingError, match="split into 2 chunks"):
        project(s, "median")


def test_results_of_different_inputs_do_not_collide():
    zeros = Stack(da.zeros((3, 4, 4), dtype=np.uint8, chunks=(3, 2, 4)))
    ones = Stack(da.ones((3, 4, 4), dtype=np.uint8, chunks=(3, 2, 4)))
    a, b = dask.compute(project(zeros, "max").data, project(ones, "max").data)
    assert a.max() == 0
    assert b.min() == 1


def test_the_registry_names_the_methods_of_the_api_and_cli():
    from zchunk._types import METHODS as NAMES
    from zchunk.ops._methods import METHODS

    assert tuple(METHODS) == NAMES
    assert all(m.name == name for name, m in METHODS.items())
