import functools
import pickle

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

import zchunk
from zchunk.chunking import FILTER_MEMORY_FACTOR, Purpose
from zchunk.errors import ChunkingError, StackFormatError
from zchunk.ops.filters import FILTERS, MODES
from zchunk.ops.filters import filter as zfilter
from zchunk.stack import Stack
from zchunk.testing import blobs

SHAPE = (9, 45, 61)
CHUNKS = (9, 16, 25)  # bands and tiles that do not divide the shape: edges inside the image

# name -> (parameters, scipy reference on the whole array, keeps the input dtype)
CASES = {
    "gaussian": ({"sigma": 1.5}, lambda a, m: ndimage.gaussian_filter(a, 1.5, mode=m), False),
    "laplace": ({}, lambda a, m: ndimage.laplace(a, mode=m), False),
    "gaussian_gradient_magnitude": (
        {"sigma": (1.0, 1.5, 2.0)},
        lambda a, m: ndimage.gaussian_gradient_magnitude(a, (1.0, 1.5, 2.0), mode=m),
        False,
    ),
    "median": ({"size": 3}, lambda a, m: ndimage.median_filter(a, size=3, mode=m), True),
    "uniform": (
        {"size": (3, 5, 4)},
        lambda a, m: ndimage.uniform_filter(a, (3, 5, 4), mode=m),
        False,
    ),
    "minimum": ({"size": 4}, lambda a, m: ndimage.minimum_filter(a, size=4, mode=m), True),
    "maximum": ({"size": 3}, lambda a, m: ndimage.maximum_filter(a, size=3, mode=m), True),
}


def _sobel_planes(a, mode="reflect", func=ndimage.sobel):
    return np.stack([np.hypot(func(p, axis=0, mode=mode), func(p, axis=1, mode=mode)) for p in a])


def _overlap_depths(array):
    """Halo depth per axis of every overlap layer of the graph (dask's ArrayOverlapLayer)."""
    layers = array.__dask_graph__().layers
    return [dict(layer.axes) for name, layer in layers.items() if name.startswith("overlap")]


def _assert_same_chunks_no_rechunk(out, stack):
    assert out.data.chunks == stack.data.chunks
    assert out.data.npartitions == stack.data.npartitions
    assert not any("rechunk" in name for name in out.data.__dask_graph__().layers)


RANK = ("median", "minimum", "maximum")


def assert_float32_close(got, ref, data):
    """The contract of the float32 filters: scipy's float64 result to 1e-5 of the data range."""
    assert got.dtype == np.float32
    assert ref.dtype == np.float64
    span = max(float(np.ptp(data.astype(np.float64))), 1.0)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * span)


def assert_rounded_close(got, ref):
    """Cast to an integer type: scipy's float64 result rounded in >= 99.9% of voxels, never off by > 1."""
    info = np.iinfo(got.dtype)
    expected = np.clip(np.rint(ref), info.min, info.max)
    diff = np.abs(got.astype(np.float64) - expected)
    assert diff.max() <= 1
    assert np.mean(diff == 0) >= 0.999


def _assert_equal(name, got, ref, data):
    if name in RANK:
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref)
    else:
        assert_float32_close(got, ref, data)


@pytest.fixture(scope="module")
def data():
    return blobs(SHAPE, np.uint16, seed=7)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("mode", ["reflect", "nearest", "mirror", "constant"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_scipy_on_the_whole_array(name, mode, dtype):
    params, ref, rank = CASES[name]
    a = blobs(SHAPE, dtype, seed=7)  # float32 blobs are not whole numbers
    stack = Stack(da.from_array(a, chunks=CHUNKS))
    out = zfilter(stack, name, mode=mode, **params)
    expected = ref(a if rank else a.astype(np.float64), mode)
    _assert_equal(name, out.data.compute(), expected, a)
    _assert_same_chunks_no_rechunk(out, stack)
    depths = _overlap_depths(out.data)
    assert depths, "y and x are split: halos are exchanged"
    assert all(d[0] == 0 for d in depths), "z is one chunk: no halo along z"


@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
@pytest.mark.parametrize("name", ["sobel", "prewitt"])
def test_edges_are_the_2d_magnitude_per_plane_by_default(name, mode, data):
    stack = Stack(da.from_array(data, chunks=CHUNKS))
    out = zfilter(stack, name, mode=mode)
    func = getattr(ndimage, name)
    ref = _sobel_planes(data.astype(np.float64), mode, func)
    assert_float32_close(out.data.compute(), ref, data)
    assert out.attrs["filter"]["per_plane"] is True
    assert out.attrs["filter"]["axes"] == "yx"
    _assert_same_chunks_no_rechunk(out, stack)
    assert all(d[0] == 0 for d in _overlap_depths(out.data))


@pytest.mark.parametrize("name", ["sobel", "prewitt"])
def test_edges_in_3d_are_the_magnitude_of_scipys_3d_derivatives(name, data):
    a64 = data.astype(np.float64)
    out = zfilter(Stack(da.from_array(data, chunks=CHUNKS)), name, per_plane=False)
    got = out.data.compute()
    derivatives = [getattr(ndimage, name)(a64, axis=axis) for axis in range(3)]
    assert_float32_close(got, functools.reduce(np.hypot, derivatives), data)
    assert out.attrs["filter"]["axes"] == "zyx"


@pytest.mark.parametrize(
    ("name", "params", "ref"),
    [
        ("gaussian", {"sigma": 2}, lambda p: ndimage.gaussian_filter(p, 2)),
        ("gaussian", {"sigma": (1, 2)}, lambda p: ndimage.gaussian_filter(p, (1, 2))),
        ("laplace", {}, ndimage.laplace),
        ("median", {"size": 5}, lambda p: ndimage.median_filter(p, size=5)),
        ("uniform", {"size": 3}, lambda p: ndimage.uniform_filter(p, size=3)),
    ],
)
def test_per_plane_filters_each_plane_in_2d(name, params, ref, data):
    stack = Stack(da.from_array(data, chunks=CHUNKS))
    out = zfilter(stack, name, per_plane=True, **params)
    planes = data if name == "median" else data.astype(np.float64)
    _assert_equal(name, out.data.compute(), np.stack([ref(p) for p in planes]), data)
    _assert_same_chunks_no_rechunk(out, stack)


def test_per_plane_and_3d_gaussian_differ(data):
    stack = Stack(da.from_array(data, chunks=CHUNKS))
    flat = zfilter(stack, "gaussian", sigma=2, per_plane=True).data.compute()
    volume = zfilter(stack, "gaussian", sigma=2).data.compute()
    assert not np.allclose(flat, volume)
    # sigma 0 along z is the per-plane filter
    same = zfilter(stack, "gaussian", sigma=(0, 2, 2)).data.compute()
    np.testing.assert_array_equal(same, flat)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("gaussian", {"sigma": 1.5}),
        ("sobel", {}),
        ("sobel", {"per_plane": False}),
        ("laplace", {}),
        ("gaussian_gradient_magnitude", {"sigma": 1}),
        ("median", {"size": 3}),
        ("maximum", {"size": (1, 3, 3)}),
    ],
)
def test_time_points_are_never_mixed(name, params):
    a = blobs((2, 5, 30, 33), np.uint16, seed=3)
    stack = Stack(da.from_array(a, chunks=(1, 5, 12, 20)), axes="tzyx")
    out = zfilter(stack, name, **params)
    got = out.data.compute()
    for t in range(2):
        one = Stack(da.from_array(a[t], chunks=(5, 12, 20)))
        np.testing.assert_array_equal(got[t], zfilter(one, name, **params).data.compute())
    _assert_same_chunks_no_rechunk(out, stack)
    depths = _overlap_depths(out.data)
    assert depths
    assert all(d[0] == 0 and d[1] == 0 for d in depths)  # no halo along t or z


def test_channels_are_never_mixed_and_2d_stacks_work():
    a = blobs((2, 3, 20, 24), np.uint8, seed=5)
    stack = Stack(da.from_array(a, chunks=(1, 3, 8, 24)), axes="czyx")
    got = zfilter(stack, "gaussian", sigma=1).data.compute()
    for c in range(2):
        ref = ndimage.gaussian_filter(a[c].astype(np.float64), 1)
        assert_float32_close(got[c], ref, a)
    plane = Stack(da.from_array(a[0, 0], chunks=(7, 10)))
    ref = _sobel_planes(a[0, :1].astype(np.float64))[0]
    assert_float32_close(zfilter(plane, "sobel").data.compute(), ref, a)


# dtypes -----------------------------------------------------------------------------------------


def test_uint16_sobel_does_not_wrap():
    a = np.full((3, 20, 40), 100, dtype=np.uint16)
    a[:, :, 21:] = 60000
    out = zfilter(Stack(da.from_array(a, chunks=(3, 8, 16))), "sobel")
    got = out.data.compute()
    assert got.dtype == np.float32
    ref = _sobel_planes(a.astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * ref.max())
    assert got.max() == 4 * (60000 - 100) > np.iinfo(np.uint16).max


def test_uint8_gaussian_is_computed_in_float32():
    a = blobs((4, 20, 22), np.uint8, seed=1)
    got = zfilter(Stack(da.from_array(a, chunks=(4, 7, 22))), "gaussian", sigma=1).data.compute()
    assert_float32_close(got, ndimage.gaussian_filter(a.astype(np.float64), 1), a)
    assert not np.array_equal(got, np.round(got))  # not rounded back to integers


@pytest.mark.parametrize(
    ("in_dtype", "name", "out_dtype"),
    [
        (np.uint8, "laplace", np.float32),
        (np.int16, "uniform", np.float32),
        (np.float32, "gaussian", np.float32),
        (np.float64, "gaussian", np.float64),
        (np.float64, "sobel", np.float64),
        (np.uint16, "median", np.uint16),
        (np.uint8, "minimum", np.uint8),
        (np.float64, "maximum", np.float64),
        (np.float16, "median", np.float32),
    ],
)
def test_output_dtype(in_dtype, name, out_dtype):
    a = blobs((3, 12, 14), np.uint8, seed=2).astype(in_dtype)
    params = {"gaussian": {"sigma": 1}, "uniform": {"size": 3}}.get(name, {})
    if name in ("median", "minimum", "maximum"):
        params = {"size": 3}
    out = zfilter(Stack(da.from_array(a, chunks=(3, 5, 14))), name, **params)
    assert out.data.dtype == out_dtype
    got = out.data.compute()
    assert got.dtype == out_dtype
    if name == "gaussian" and in_dtype == np.float64:
        np.testing.assert_array_equal(got, ndimage.gaussian_filter(a, 1))


def test_dtype_casts_rounded_and_clipped_never_wrapped():
    a = np.zeros((2, 10, 12), dtype=np.uint16)
    a[:, :, 6:] = 1000
    s = Stack(da.from_array(a, chunks=(2, 4, 12)))
    edges = zfilter(s, "sobel", dtype="uint8").data.compute()
    assert edges.dtype == np.uint8
    assert edges.max() == 255  # 4000 clipped, not 4000 % 256
    blurred = zfilter(s, "gaussian", sigma=1, dtype=np.uint16).data.compute()
    assert_rounded_close(blurred, ndimage.gaussian_filter(a.astype(np.float64), 1))
    assert zfilter(s, "median", size=3, dtype="float32").data.compute().dtype == np.float32


# chunks and graph -------------------------------------------------------------------------------


def test_thin_z_3d_gaussian_needs_no_z_halo():
    a = blobs((5, 40, 30), np.uint16, seed=4)  # a halo of 8 planes is deeper than the stack
    stack = Stack(da.from_array(a, chunks=(5, 16, 30)))
    out = zfilter(stack, "gaussian", sigma=2)
    assert_float32_close(out.data.compute(), ndimage.gaussian_filter(a.astype(np.float64), 2), a)
    _assert_same_chunks_no_rechunk(out, stack)
    assert _overlap_depths(out.data) == [{0: 0, 1: 8, 2: 0}]  # x is one chunk: no halo


def test_one_chunk_is_one_task_without_halo(data):
    stack = Stack(da.from_array(data))
    out = zfilter(stack, "median", size=3)
    assert out.data.npartitions == 1
    assert _overlap_depths(out.data) == []
    np.testing.assert_array_equal(out.data.compute(), ndimage.median_filter(data, size=3))


@pytest.mark.parametrize(
    ("chunks", "sigma", "merged"),
    [
        ((9, 16, 25), 3.5, ((9,), (16, 29), (25, 36))),  # halo 14: only the remainders merge
        ((9, 10, 25), 4.0, ((9,), (20, 25), (25, 36))),  # halo 16 > every band: bands merge
    ],
)
def test_halo_deeper_than_a_chunk_merges_neighbouring_chunks(chunks, sigma, merged, data):
    stack = Stack(da.from_array(data, chunks=chunks))
    out = zfilter(stack, "gaussian", sigma=sigma, per_plane=True)
    assert out.data.chunks == merged  # z untouched, y/x boundaries a subset of the input's
    ref = np.stack([ndimage.gaussian_filter(p, sigma) for p in data.astype(np.float64)])
    assert_float32_close(out.data.compute(), ref, data)


def test_3d_filter_of_split_z_reopens_or_refuses():
    a = blobs((2, 6, 20, 22), np.uint16, seed=8)
    split = Stack(da.from_array(a, chunks=(1, 2, 20, 22)))
    with pytest.raises(ChunkingError, match=r"z is split into 3 chunks.*per_plane=True"):
        zfilter(split, "gaussian", sigma=1)
    # per plane, z needs no halo and may stay split
    flat = zfilter(split, "sobel").data
    assert flat.chunks == split.data.chunks
    opened = zchunk.open(a, whole="t")  # z split plane by plane, reopened with whole z
    assert opened.data.numblocks[1] > 1
    out = zfilter(opened, "gaussian", sigma=1)
    assert out.data.numblocks[1] == 1
    assert out.source is None
    ref = np.stack([ndimage.gaussian_filter(v.astype(np.float64), 1) for v in a])
    assert_float32_close(out.data.compute(), ref, a)


def test_graph_pickles_and_results_do_not_collide(data):
    stack = Stack(da.from_array(data, chunks=CHUNKS))
    one = zfilter(stack, "gaussian", sigma=1)
    two = zfilter(stack, "gaussian", sigma=2)
    assert one.data.name != two.data.name
    assert one.data.name == zfilter(stack, "gaussian", sigma=1).data.name  # deterministic
    got_one, got_two = dask.compute(one.data, two.data)
    assert not np.array_equal(got_one, got_two)
    pickle.loads(pickle.dumps(dict(one.data.__dask_graph__())))


def test_result_keeps_calibration_and_describes_the_filter(data):
    stack = zchunk.open(data)
    stack = stack.replace(
        scale=(2.0, 0.5, 0.5), units=("micrometer",) * 3, name="cells.tif", attrs=stack.attrs
    )
    out = zfilter(stack, "gaussian", sigma=(1, 2, 2), mode="constant", cval=3)
    assert (out.axes, out.scale, out.units, out.shape) == (
        stack.axes,
        stack.scale,
        stack.units,
        stack.shape,
    )
    assert out.name == "gaussian-cells.tif"
    assert out.source is None
    assert out.plan.purpose == Purpose.filter(8)  # re-planned for the filter: halo 4 x sigma 2
    assert out.plan.budget == stack.plan.budget // FILTER_MEMORY_FACTOR
    assert out.attrs["filter"] == {
        "name": "gaussian",
        "sigma": (1.0, 2.0, 2.0),
        "axes": "zyx",
        "per_plane": False,
        "mode": "constant",
        "cval": 3.0,
        "truncate": 4.0,
    }
    assert zfilter(stack, "median", size=3).attrs["filter"] == {
        "name": "median",
        "size": (3, 3, 3),
        "axes": "zyx",
        "per_plane": False,
        "mode": "reflect",
    }


def test_cval_and_truncate_reach_scipy(data):
    stack = Stack(da.from_array(data, chunks=CHUNKS))
    got = zfilter(stack, "gaussian", sigma=1, mode="constant", cval=500, truncate=2).data
    ref = ndimage.gaussian_filter(data.astype(np.float64), 1, mode="constant", cval=500, truncate=2)
    assert_float32_close(got.compute(), ref, data)
    assert _overlap_depths(got) == [{0: 0, 1: 2, 2: 2}]


# errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("blur", {}, r"filter 'blur' is not one of gaussian, sobel, prewitt, .*maximum"),
        ("gaussian", {}, r"gaussian needs sigma \(in pixels\), e.g. sigma=2"),
        ("median", {}, r"median needs size \(in pixels\), e.g. size=3"),
        ("gaussian", {"sigma": 1, "size": 3}, r"gaussian does not take size=3: .*takes sigma"),
        ("sobel", {"sigma": 2}, r"sobel does not take sigma=2: sobel takes cval"),
        ("median", {"sigma": 1}, r"median does not take sigma=1"),
        ("median", {"size": 3, "truncate": 2}, r"median does not take truncate=2"),
        ("gaussian", {"sigma": 1, "order": 1}, r"gaussian does not take order=1"),
        ("gaussian", {"sigma": 0}, r"sigma=0 is invalid for gaussian: give a positive"),
        ("gaussian", {"sigma": -1}, r"sigma=-1 is invalid"),
        ("gaussian", {"sigma": float("nan")}, r"sigma=nan is invalid"),
        ("gaussian", {"sigma": True}, r"sigma=True is invalid"),
        ("gaussian", {"sigma": (0, 0, 0)}, r"sigma=\(0, 0, 0\) is invalid.*at least one > 0"),
        ("gaussian", {"sigma": (1, 2)}, r"sigma=\(1, 2\) has 2 values but gaussian filters 3 axes"),
        (
            "gaussian",
            {"sigma": (1, 2, 2), "per_plane": True},
            r"has 3 values but gaussian filters 2 axes \(y, x\)",
        ),
        (
            "gaussian_gradient_magnitude",
            {"sigma": (0, 1, 1)},
            r"every filtered axis",
        ),
        ("median", {"size": 0}, r"size=0 is invalid for median: give a positive whole number"),
        ("uniform", {"size": 2.5}, r"size=2.5 is invalid"),
        ("maximum", {"size": (3, 3, 3, 3)}, r"size=\(3, 3, 3, 3\) has 4 values"),
        ("laplace", {"mode": "wrap"}, r"mode='wrap' is not one of reflect, .*far edge"),
        ("laplace", {"cval": 1}, r"cval=1 is only used with mode='constant'"),
        ("gaussian", {"sigma": 1, "truncate": 0}, r"truncate=0 must be a positive number"),
        ("laplace", {"dtype": "complex64"}, r"dtype=complex64 is not an integer or float"),
        ("laplace", {"per_plane": "yes"}, r"per_plane='yes' must be True, False or None"),
    ],
)
def test_bad_arguments_name_the_parameter_and_the_fix(name, kwargs, match):
    stack = Stack(da.zeros((3, 8, 8), dtype=np.uint16, chunks=(3, 4, 8)))
    with pytest.raises(ValueError, match=match):
        zfilter(stack, name, **kwargs)


def test_stack_without_y_is_refused():
    with pytest.raises(StackFormatError, match="axis 'y' is not in this stack"):
        zfilter(Stack(da.zeros((3, 8)), axes="zx"), "laplace")


def test_registry_names():
    assert FILTERS == (
        "gaussian",
        "sobel",
        "prewitt",
        "laplace",
        "gaussian_gradient_magnitude",
        "median",
        "uniform",
        "minimum",
        "maximum",
    )
    assert MODES == ("reflect", "nearest", "mirror", "constant")


def test_filter_of_an_opened_file_reads_chunk_and_halo_in_one_task(tmp_path):
    """Straight from a file: no read task holds blocks for its neighbours' halos."""
    import tifffile

    import zchunk

    data = blobs((9, 45, 61), "uint16", seed=7)
    tifffile.imwrite(tmp_path / "s.tif", data)
    s = zchunk.open(str(tmp_path / "s.tif"), memory_limit="20KB")
    assert s.data.numblocks[1] > 3
    g = zchunk.filter(s, "gaussian", sigma=1.5)
    layers = list(g.data.__dask_graph__().layers)
    assert len(layers) == 1  # one task per chunk: read with halo, filter, trim
    assert g.data.numblocks[1] > 1
    # re-planned for the filter (budget / 5, bands >= 4 halos), as the CLI plans it
    assert g.data.chunks == s.replanned(whole="z", purpose=Purpose.filter(6)).data.chunks
    expected = ndimage.gaussian_filter(data.astype(np.float64), 1.5)
    assert_float32_close(g.data.compute(), expected, data)


# the float32 contract: every mode, odd shapes, thin z, per-axis sigma, integer outputs ----------

LINEAR = {
    "gaussian": (
        {"sigma": (1.2, 2.0, 0.7)},
        lambda a, m, c: ndimage.gaussian_filter(a, (1.2, 2.0, 0.7), mode=m, cval=c),
    ),
    "gaussian_gradient_magnitude": (
        {"sigma": (0.8, 1.5, 1.0)},
        lambda a, m, c: ndimage.gaussian_gradient_magnitude(a, (0.8, 1.5, 1.0), mode=m, cval=c),
    ),
    "laplace": ({}, lambda a, m, c: ndimage.laplace(a, mode=m, cval=c)),
    "uniform": (
        {"size": (2, 5, 4)},
        lambda a, m, c: ndimage.uniform_filter(a, (2, 5, 4), mode=m, cval=c),
    ),
    "sobel": (
        {"per_plane": False},
        lambda a, m, c: functools.reduce(
            np.hypot, [ndimage.sobel(a, axis=i, mode=m, cval=c) for i in range(3)]
        ),
    ),
    "prewitt": (
        {},
        lambda a, m, c: np.stack(
            [
                np.hypot(
                    ndimage.prewitt(p, 0, mode=m, cval=c), ndimage.prewitt(p, 1, mode=m, cval=c)
                )
                for p in a
            ]
        ),
    ),
}


@pytest.mark.parametrize("shape", [(2, 23, 19), (5, 9, 31)])  # z thinner than the kernel radius
@pytest.mark.parametrize(
    ("mode", "cval"),
    [("reflect", 0), ("nearest", 0), ("mirror", 0), ("constant", 0), ("constant", 37.5)],
)
@pytest.mark.parametrize("name", list(LINEAR))
def test_float32_filters_agree_with_scipy_in_float64(name, mode, cval, shape):
    params, ref = LINEAR[name]
    extra = {"cval": cval} if mode == "constant" else {}
    for dtype in (np.uint8, np.uint16, np.float32):
        a = blobs(shape, dtype, seed=11)
        stack = Stack(da.from_array(a, chunks=(shape[0], 7, 10)))  # borders inside the image
        out = zfilter(stack, name, mode=mode, **params, **extra)
        expected = ref(a.astype(np.float64), mode, cval)
        assert_float32_close(out.data.compute(), expected, a)
        if dtype != np.float32:  # cast back to the input type
            cast = zfilter(stack, name, mode=mode, dtype=dtype, **params, **extra)
            if name == "uniform":
                # a mean of integers is often exactly halfway between two (3% of voxels
                # here), where scipy's float64 running mean lands an ulp either side: its
                # rounding is noise (scipy's own float32 result agrees in 99.4%). The oracle
                # is the exact mean, rounded half to even.
                window = np.ones(params["size"])
                exact = ndimage.correlate(a.astype(np.float64), window, mode=mode, cval=cval)
                expected = exact / window.size
            assert_rounded_close(cast.data.compute(), expected)


def test_constant_cval_keeps_scipys_order_of_passes():
    """With cval != 0 the order of the 1-D passes matters; it is scipy's (derivative first)."""
    a = blobs((4, 15, 17), np.uint16, seed=2)
    stack = Stack(da.from_array(a, chunks=(4, 8, 9)))
    got = zfilter(stack, "sobel", per_plane=False, mode="constant", cval=1000).data.compute()
    a64 = a.astype(np.float64)
    ref = functools.reduce(
        np.hypot, [ndimage.sobel(a64, axis=i, mode="constant", cval=1000) for i in range(3)]
    )
    assert_float32_close(got, ref, a)
    # the same passes in z, y, x order give other values near the borders: this can fail
    d_x = ndimage.correlate1d(a64, [1, 2, 1], 0, mode="constant", cval=1000)
    d_x = ndimage.correlate1d(d_x, [1, 2, 1], 1, mode="constant", cval=1000)
    d_x = ndimage.correlate1d(d_x, [-1, 0, 1], 2, mode="constant", cval=1000)
    assert not np.allclose(d_x, ndimage.sobel(a64, 2, mode="constant", cval=1000), atol=1)


class _PlanesOnly:
    """A reader that can only stream planes: proves the separable path never reads a block."""

    streams = True

    def __init__(self, array):
        self.array = array
        self.opened = 0

    def planes(self, region):
        self.opened += 1
        block = self.array[region]
        yield from block.reshape(-1, *block.shape[-2:])

    def read(self, region):
        msg = "a separable filter read a whole block"
        raise AssertionError(msg)


@pytest.mark.parametrize(
    ("name", "params"), [("gaussian", {"sigma": 2}), ("sobel", {}), ("laplace", {})]
)
def test_region_tasks_stream_planes(name, params):
    from zchunk.ops._filter_spec import Spec as _Spec
    from zchunk.ops._filter_stream import filter_region as _filter_region
    from zchunk.ops._filter_stream import separable

    a = blobs((2, 6, 30, 33), np.uint16, seed=3)
    reader = _PlanesOnly(a)
    # the same task the graph of a freshly opened file runs, on its second band
    region = (slice(1, 2), slice(0, 6), slice(4, 30), slice(0, 33))
    trim = (slice(0, 1), slice(0, 6), slice(8, 20), slice(0, 33))
    axes = (2, 3) if name == "sobel" else (1, 2, 3)
    sigma = (0.0, 2.0, 2.0, 2.0) if name == "gaussian" else (0.0,) * 4
    s = _Spec(name, axes, sigma, (1,) * 4, "reflect", 0.0, 4.0, np.dtype(np.float32), None)
    assert separable(s) is not None
    got = _filter_region(reader, region, trim, s, a.dtype)
    assert reader.opened == 1
    whole = zfilter(Stack(da.from_array(a[1:2])), name, **params).data.compute()
    np.testing.assert_array_equal(got, whole[:, :, 12:24])


@pytest.mark.parametrize(
    ("name", "params"),
    [("gaussian", {"sigma": 1.5}), ("sobel", {}), ("gaussian", {"sigma": 1, "dtype": "uint16"})],
)
def test_projection_of_a_filtered_file_streams_filtered_planes(tmp_path, name, params):
    """`project --gaussian`: the filtered planes go straight into the running max."""
    import tifffile

    data = blobs((2, 9, 45, 61), "uint16", seed=7)
    tifffile.imwrite(tmp_path / "s.tif", data, imagej=True, metadata={"axes": "TZYX"})
    s = zchunk.open(str(tmp_path / "s.tif"), memory_limit="40KB")
    filtered = zchunk.filter(s, name, **params)
    assert filtered.source is not None
    assert filtered.source.streams
    many = zchunk.project_many(filtered, ["max", "min"])
    layers = list(many["max"].data.__dask_graph__().layers)
    assert not any(layer.startswith(f"zchunk-{name}") for layer in layers)  # no filtered chunks
    assert any(layer.startswith("zchunk-stream") for layer in layers)
    volume = filtered.data.compute()
    np.testing.assert_array_equal(many["max"].data.compute(), volume.max(axis=1))
    np.testing.assert_array_equal(many["min"].data.compute(), volume.min(axis=1))
    median = zchunk.project(filtered, "median").data.compute()  # whole columns: banded
    np.testing.assert_array_equal(median, np.median(volume, axis=1))
    region = (slice(1, 2), slice(2, 5), slice(10, 20), slice(3, 61))  # a halo along z too
    np.testing.assert_array_equal(filtered.source.read(region), volume[region])
    along_t = zchunk.project(filtered, "max", axis="t")  # reopened with whole t, filtered again
    np.testing.assert_array_equal(along_t.data.compute(), volume.max(axis=0))


@pytest.mark.parametrize("name", ["minimum", "maximum"])
@pytest.mark.parametrize(
    ("dtype", "cval"), [(np.uint8, 0), (np.int16, -5), (np.int32, 7), (np.uint8, 0.5)]
)
def test_min_max_stream_bit_exact_from_a_file(tmp_path, name, dtype, cval):
    """Minimum and maximum stream a file's planes too (cval 0.5 on uint8: scipy's own path)."""
    import tifffile

    from zchunk.ops._filter_stream import streamer

    a = blobs((2, 7, 45, 61), "uint16", seed=3).astype(dtype)
    tifffile.imwrite(tmp_path / "s.tif", a, metadata={"axes": "TZYX"})
    s = zchunk.open(str(tmp_path / "s.tif"), axes="tzyx", memory_limit="40KB")
    assert s.data.numblocks[2] > 2
    out = zfilter(s, name, size=(3, 5, 4), mode="constant", cval=cval)
    ref = np.stack(
        [getattr(ndimage, f"{name}_filter")(v, (3, 5, 4), mode="constant", cval=cval) for v in a]
    )
    np.testing.assert_array_equal(out.data.compute(), ref)
    assert out.data.dtype == dtype
    assert (out.source is not None and out.source.streams) == (cval != 0.5)
    spec = out.source.spec
    assert (streamer(spec) is None) == (cval == 0.5)
    np.testing.assert_array_equal(zchunk.project(out, "max").data.compute(), ref.max(axis=1))


def test_a_kernel_over_the_memory_budget_is_refused_up_front(tmp_path, capsys):
    # issue 13: a kernel whose smallest task cannot fit the budget is refused before any
    # allocation (it used to run into a MemoryError and leave a partial output)
    import tifffile

    from zchunk.cli import main
    from zchunk.errors import OptionError

    a = np.zeros((20, 200, 200), np.uint16)
    stack = zchunk.open(a, memory_limit="2MiB")
    with pytest.raises(OptionError, match=r"^gaussian sigma=30: each of \d+ worker\(s\) needs at "):
        zfilter(stack, "gaussian", sigma=30)  # a ring of 20 planes of 200 x 200 float32
    with pytest.raises(OptionError, match=r"memory budget of 2.00 MiB allows: use a smaller size"):
        zfilter(stack, "minimum", size=(19, 199, 199))
    assert zfilter(stack, "gaussian", sigma=(0, 30, 30)).data.shape == a.shape  # one plane
    assert zfilter(zchunk.open(a, memory_limit="64MiB"), "gaussian", sigma=30).data.shape
    tifffile.imwrite(tmp_path / "in.tif", a)
    out = tmp_path / "out.zarr"
    argv = ["filter", str(tmp_path / "in.tif"), "gaussian", "--sigma", "30", "-o", str(out)]
    assert main([*argv, "--memory-limit", "2MiB", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "memory budget of 2.00 MiB" in err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.zarr*"))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("sobel", {}),
        ("prewitt", {}),
        ("sobel", {"per_plane": False}),
        ("gaussian_gradient_magnitude", {"sigma": (0.8, 1.5, 1.0)}),
    ],
)
@pytest.mark.parametrize("out", [np.uint8, np.uint16])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_magnitudes_cast_to_integers_keep_the_contract(name, params, out, dtype, rng):
    # magnitudes rounded to 8/16-bit are computed in float32 (float64 near a half-integer):
    # values over the whole 16-bit range make magnitudes where float32 alone would misround
    shape = (5, 37, 29)
    top = np.iinfo(dtype).max if dtype != np.float32 else 65535.0
    a = (rng.random(shape) ** 3 * top).astype(dtype)  # odd shape, mostly dark, some bright
    stack = Stack(da.from_array(a, chunks=(5, 12, 10)))  # borders inside the image
    got = zfilter(stack, name, dtype=out, **params).data.compute()
    a64 = a.astype(np.float64)
    if name == "gaussian_gradient_magnitude":
        ref = ndimage.gaussian_gradient_magnitude(a64, params["sigma"])
    elif params:
        ref = np.sqrt(sum(ndimage.sobel(a64, axis=i) ** 2 for i in range(3)))
    else:
        ref = _sobel_planes(a64, func=getattr(ndimage, name))
    assert got.dtype == out
    assert_rounded_close(got, ref)
    if dtype != np.float32 and name != "gaussian_gradient_magnitude":
        # integer data: the terms are exact, and so is the rounded float64 magnitude
        info = np.iinfo(out)
        np.testing.assert_array_equal(got, np.clip(np.rint(ref), info.min, info.max))


@pytest.mark.parametrize(
    ("name", "params", "streamed"),
    [
        ("gaussian", {"sigma": 2.0}, True),  # separable: streamed from the file
        ("minimum", {"size": 5}, True),  # running minimum over a ring
        ("median", {"size": 5}, False),  # 125-pixel window: the whole halo'd chunk in memory
    ],
)
def test_a_filter_streaming_from_the_file_plans_larger_chunks(tmp_path, name, params, streamed):
    """A streamed filter holds its output chunk and a ring, not the chunk it reads."""
    import tifffile

    from zchunk.chunking import STREAMED_FILTER_MEMORY_FACTOR

    data = blobs((6, 300, 200), "uint16", seed=3)
    path = str(tmp_path / "s.tif")
    tifffile.imwrite(path, data)
    stack = zchunk.open(path, memory_limit="2MB")
    out = zfilter(stack, name, **params)
    factor = STREAMED_FILTER_MEMORY_FACTOR if streamed else FILTER_MEMORY_FACTOR
    assert out.plan.purpose.streamed is streamed
    assert out.plan.budget == stack.plan.budget // factor
    assert out.data.numblocks[1] > 1
    expected = getattr(ndimage, f"{name}_filter")(data.astype(np.float64), **params)
    if name == "gaussian":
        assert_float32_close(out.data.compute(), expected, data)
    else:
        np.testing.assert_array_equal(out.data.compute(), expected)
