import numpy as np
import pytest
from scipy import ndimage

from zchunk.ops import _combine_kernels as C
from zchunk.ops import _filter_kernels as K
from zchunk.ops import _round_kernels as R
from zchunk.ops._separable import Pass, PlaneFilter, Separable, gaussian_weights
from zchunk.ops.projection import cast_rounded

MODES = ["reflect", "mirror", "nearest", "constant"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 2, 3, 7])  # lines shorter than the kernel: periodic extension
@pytest.mark.parametrize("taps", [1, 2, 4, 17])
def test_passes_are_scipys_correlate1d(mode, n, taps, rng):
    w = rng.normal(size=taps).astype(np.float32)
    a = rng.normal(size=(n, 9)).astype(np.float32)
    w64 = w.astype(np.float64)
    code = K.MODE_CODES[mode]
    out = np.empty_like(a)
    K.correlate_y(a, w, taps // 2, code, 1.5, out)
    ref = ndimage.correlate1d(a.astype(np.float64), w64, axis=0, mode=mode, cval=1.5)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    t = np.ascontiguousarray(a.T)
    out = np.empty_like(t)
    K.correlate_x(t, w, taps // 2, code, 1.5, out)
    ref = ndimage.correlate1d(t.astype(np.float64), w64, axis=1, mode=mode, cval=1.5)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_yx_pass_is_y_then_x(rng):
    a = rng.normal(size=(13, 21)).astype(np.float32)
    wy, wx = np.float32([1, -2, 1]), np.float32(gaussian_weights(1.5, 0, 4))
    out = np.empty_like(a)
    K.correlate_yx(a, wy, 1, wx, len(wx) // 2, K.MODE_CODES["mirror"], 0.0, out)
    ref = ndimage.correlate1d(
        ndimage.correlate1d(a.astype(float), wy, 0, mode="mirror"), wx, 1, mode="mirror"
    )
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize(("sigma", "order"), [(0.7, 0), (2.0, 0), (1.5, 1), (3.0, 2)])
def test_gaussian_weights_are_scipys(sigma, order):
    impulse = np.zeros(41)
    impulse[20] = 1
    ref = ndimage.gaussian_filter1d(impulse, sigma, order=order, mode="constant")
    w = np.array(gaussian_weights(sigma, order, 4.0))
    r = len(w) // 2
    # correlating an impulse gives the weights reversed
    np.testing.assert_allclose(ref[20 - r : 21 + r][::-1], w, atol=1e-15)


def test_store_rounded_is_cast_rounded():
    a = np.concatenate([np.arange(-10, 10, 0.25), [np.nan, np.inf, -np.inf, 1e9, -1e9]])
    a = np.concatenate([a, [65535.5, 65534.5, 255.5, 2.5, 3.5, -0.5]]).astype(np.float32)
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        out = np.empty((1, a.size), dtype)
        R.store_rounded(a[None], 0, 0, out)
        np.testing.assert_array_equal(out[0], cast_rounded(a, dtype))


def test_store_rounded_of_float64_is_cast_rounded_up_to_32_bits():
    # float64 gradient magnitudes are rounded by the compiled pass too, 32-bit targets exactly
    a = np.concatenate([np.arange(-10, 10, 0.25), [np.nan, np.inf, -np.inf, 1e12, -1e12]])
    a = np.concatenate([a, [4294967294.5, 2147483646.5, 2**31 + 0.5, 16777217.5, 65535.5]])
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        out = np.empty((2, a.size - 1), dtype)
        R.store_rounded(np.stack([a, a[::-1]]), 0, 1, out)
        np.testing.assert_array_equal(out[0], cast_rounded(a[1:], dtype))
        np.testing.assert_array_equal(out[1], cast_rounded(a[::-1][1:], dtype))


def test_one_engine_per_region_for_per_plane_filters(monkeypatch):
    # a per-plane filter runs one engine over every plane of its region: its rings and work
    # planes are allocated (first touched) once, not once per plane
    import dask.array as da

    import zchunk
    from zchunk.ops import _filter_stream

    made = []

    class Counted(PlaneFilter):
        def __init__(self, *args, **kwargs):
            made.append(args[1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(_filter_stream, "PlaneFilter", Counted)
    a = np.arange(6 * 9 * 11, dtype=np.uint16).reshape(6, 9, 11) % 97
    got = zchunk.filter(zchunk.Stack(da.from_array(a, chunks=a.shape)), "sobel")
    got = got.data.compute(scheduler="synchronous")
    assert made == [1]
    ref = [np.hypot(ndimage.sobel(p, 0), ndimage.sobel(p, 1)) for p in a.astype(np.float64)]
    np.testing.assert_allclose(got, np.stack(ref), rtol=1e-6)


@pytest.mark.parametrize("nz", [1, 2, 5, 6, 11, 23])  # group edges, z thinner than the kernel
@pytest.mark.parametrize("mode", MODES)
def test_ring_along_z_is_a_correlation_along_z(nz, mode, rng):
    a = rng.integers(0, 1000, (nz, 6, 5)).astype(np.uint16)
    w = gaussian_weights(2.0, 1, 4.0)  # a derivative: odd weights, a zero in the middle
    sep = Separable(((Pass("z", w), Pass("y", (1.0, 2.0, 1.0))),), "sum", mode, 7.0)
    got = np.empty(a.shape, np.float32)
    order = []
    for k, plane in PlaneFilter(sep, nz, (6, 5), a.dtype).run(iter(a)):
        got[k] = plane
        order.append(k)
    assert order == list(range(nz))
    ref = ndimage.correlate1d(a.astype(float), w, 0, mode=mode, cval=7.0)
    ref = ndimage.correlate1d(ref, [1, 2, 1], 1, mode=mode, cval=7.0)
    np.testing.assert_allclose(got, ref, atol=1e-5 * 1000)


def test_plane_filter_emits_plane_k_once_plane_k_plus_r_arrived(rng):
    a = rng.integers(0, 10, (12, 3, 4)).astype(np.uint8)
    sep = Separable(((Pass("z", gaussian_weights(1.0, 0, 2.0)),),), "sum", "reflect", 0.0)
    arrived = []

    def planes():
        for i, p in enumerate(a):
            arrived.append(i)
            yield p

    for k, _ in PlaneFilter(sep, 12, (3, 4), a.dtype).run(planes()):
        assert arrived[-1] <= min(k + 2 + 3, 11)  # radius 2, groups of 4
        assert arrived[-1] >= min(k + 2, 11)


def test_plane_filter_refuses_a_short_stream():
    sep = Separable(((Pass("y", (1.0, 2.0, 1.0)),),), "sum", "reflect", 0.0)
    with pytest.raises(ValueError, match="expected 3 planes, got 2"):
        list(PlaneFilter(sep, 3, (2, 2), np.dtype(np.uint8)).run(iter(np.zeros((2, 2, 2)))))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("sizes", [(1, 3, 3), (3, 3, 3), (2, 4, 11), (5, 1, 70), (7, 2, 1)])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("is_max", [False, True])
def test_running_min_max_is_scipys_bit_for_bit(dtype, sizes, mode, is_max, rng):
    from zchunk.ops._rank_kernels import MinMaxFilter

    for shape in [(1, 5, 7), (3, 12, 9), (8, 17, 80)]:  # x wider and narrower than the window
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
        a = rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dtype)
        func = ndimage.maximum_filter if is_max else ndimage.minimum_filter
        ref = func(a, size=sizes, mode=mode, cval=7)
        engine = MinMaxFilter(sizes, mode, 7, is_max, shape[0], shape[1:], a.dtype)
        got = np.empty_like(a)
        for k, plane in engine.run(iter(a)):
            got[k] = plane
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32])
@pytest.mark.parametrize(
    "sizes", [(1, 3, 3), (3, 3, 3), (3, 1, 3), (1, 5, 5), (1, 1, 3), (1, 3, 9)]
)
@pytest.mark.parametrize("mode", MODES)
def test_median_network_is_scipys_bit_for_bit(dtype, sizes, mode, rng):
    from zchunk.ops._median_kernels import MedianFilter

    info = np.iinfo(dtype)
    # one plane, z thinner than the window, x narrower than the window, a row wider than a tile
    for shape in [(1, 4, 2), (2, 5, 7), (4, 12, 9), (3, 6, 700)]:
        a = rng.integers(max(info.min, -900), min(info.max, 900), shape).astype(dtype)
        for values in (a, a // 64):  # distinct values and many ties
            ref = ndimage.median_filter(values, size=sizes, mode=mode, cval=7)
            engine = MedianFilter(sizes, mode, 7, shape[0], shape[1:], values.dtype)
            got = np.empty_like(values)
            for k, plane in engine.run(iter(values)):
                got[k] = plane
            np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(
    ("dtype", "size", "mode", "streams"),
    [
        (np.uint16, 3, "reflect", True),
        (np.uint8, 3, "constant", True),
        (np.int32, (1, 5, 5), "mirror", True),
        (np.uint16, 5, "reflect", False),  # 125 pixels: scipy
        (np.uint16, 4, "nearest", False),  # even: scipy
        (np.float32, 3, "reflect", False),  # NaN has no order: scipy
        (np.int64, 3, "reflect", False),  # scipy compares int64 in float64
    ],
)
def test_median_streams_small_odd_integer_windows(dtype, size, mode, streams, rng):
    import dask.array as da

    import zchunk
    from zchunk.ops._filter_spec import Spec as _Spec
    from zchunk.ops._filter_stream import streamer

    a = rng.integers(0, 200, (5, 13, 17)).astype(dtype)
    sizes = (size,) * 3 if isinstance(size, int) else size
    spec = _Spec("median", (0, 1, 2), (0.0,) * 3, sizes, mode, 0.0, 4.0, np.dtype(dtype), None)
    assert (streamer(spec) is not None) == streams
    stack = zchunk.Stack(da.from_array(a, chunks=(5, 7, 9)))
    got = zchunk.filter(stack, "median", size=size, mode=mode).data.compute()
    np.testing.assert_array_equal(got, ndimage.median_filter(a, size=sizes, mode=mode))


def test_min_max_with_a_cval_outside_the_dtype_use_scipy(rng):
    import dask.array as da

    import zchunk

    a = rng.integers(0, 200, (3, 9, 11)).astype(np.uint8)
    stack = zchunk.Stack(da.from_array(a, chunks=(3, 5, 11)))
    for name, func in (("minimum", ndimage.minimum_filter), ("median", ndimage.median_filter)):
        got = zchunk.filter(stack, name, size=3, mode="constant", cval=-1).data.compute()
        np.testing.assert_array_equal(got, func(a, size=3, mode="constant", cval=-1))


def test_compile_all_compiles_what_the_filters_run():
    # make install compiles the filters' kernels ahead: a user's first filter of a
    # precompiled type must find every signature it runs already compiled
    import dask.array as da
    from numba.core.registry import CPUDispatcher

    import zchunk
    from zchunk.ops import _filter_stream, _median_kernels, _rank_kernels, _round_kernels

    _filter_stream.compile_all()
    modules = (K, C, _round_kernels, _rank_kernels, _median_kernels)
    dispatchers = [d for m in modules for d in vars(m).values() if isinstance(d, CPUDispatcher)]
    before = {d: set(d.signatures) for d in dispatchers}
    calls = [
        ("gaussian", {"sigma": 1}),
        ("sobel", {}),
        ("gaussian_gradient_magnitude", {"sigma": 1}),
    ]
    calls += [("laplace", {}), ("uniform", {"size": 3}), ("median", {"size": 3})]
    calls += [("minimum", {"size": 3}), ("maximum", {"size": (1, 3, 3)})]
    for dtype in _filter_stream.PRECOMPILED:
        a = np.arange(4 * 10 * 12).reshape(4, 10, 12).astype(dtype)
        stack = zchunk.Stack(da.from_array(a, chunks=(4, 5, 12)))
        for name, params in calls:
            for out in (None, dtype):
                zchunk.filter(stack, name, dtype=out, **params).data.compute()
    assert {d: set(d.signatures) for d in dispatchers} == before


@pytest.mark.parametrize(
    ("name", "axes", "param"),
    [
        ("gaussian", (0, 1, 2), 1.5),
        ("gaussian", (1, 2), 1.5),
        ("gaussian_gradient_magnitude", (0, 1, 2), 1.0),
        ("sobel", (1, 2), None),
        ("sobel", (0, 1, 2), None),
        ("laplace", (0, 1, 2), None),
        ("uniform", (0, 1, 2), 3),
    ],
)
@pytest.mark.parametrize("out", ["uint16", "uint8", "float32"])
@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_store_writes_the_kept_planes_as_run_then_cast_does(name, axes, param, out, mode, rng):
    # store() rounds the last pass's rows straight into the block (no float plane of the
    # result): the same values as run() followed by store_plane on the trimmed part
    from zchunk.ops._engine import store_plane
    from zchunk.ops._filter_spec import Spec
    from zchunk.ops._filter_stream import separable

    sigma = tuple(param if a in axes and name.startswith("gauss") else 0.0 for a in range(3))
    size = tuple(param if a in axes and name == "uniform" else 1 for a in range(3))
    spec = Spec(name, axes, sigma, size, mode, 9.0, 4.0, np.dtype(np.float32), np.dtype(out))
    sep = separable(spec)
    a = rng.integers(0, 4000, (9, 23, 31)).astype(np.uint16)
    nz = 9 if len(axes) == 3 else 1
    trim = (slice(3, 19), slice(2, 30))
    k0, kept = (2, 5) if nz > 1 else (0, 1)
    dtype = np.dtype(out)
    for planes in [a[i : i + 1] for i in range(9)] if nz == 1 else [a]:
        float64 = dtype.kind in "iu"
        ref = np.empty((kept, 16, 28), dtype)
        for k, plane in PlaneFilter(sep, nz, (23, 31), a.dtype, float64=float64).run(planes):
            if k0 <= k < k0 + kept:
                store_plane(plane, trim, ref[k - k0], dtype)
        got = np.empty_like(ref)
        engine = PlaneFilter(sep, nz, (23, 31), a.dtype, float64=float64)
        engine.store(iter(planes), k0, got, trim)
        np.testing.assert_array_equal(got, ref)
        assert engine._out is None  # no float plane of the result was made


@pytest.mark.parametrize("nterms", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_magnitude_rounded_in_float32_is_the_float64_magnitude_rounded(nterms, dtype, rng):
    # the float32 magnitude (integer outputs of <= 16 bits) is recomputed in float64 near a
    # half-integer: large magnitudes, where float32 is too coarse, still round as float64's
    info = np.iinfo(dtype)
    shape = (5, 37, 203)  # rows of more than three blocks of pixels, and a partial one
    terms = [rng.integers(-60000, 60000, shape).astype(np.float32) for _ in range(nterms)]
    terms[0][0, 0, :4] = [np.nan, np.inf, -np.inf, 1e30]
    terms[1][1] *= 1e-3  # small magnitudes, not whole numbers
    terms[1][2] = rng.normal(size=shape[1:]).astype(np.float32) * 3e4
    exact = np.sqrt(sum(t.astype(np.float64) ** 2 for t in terms))
    out = np.empty((3, 30, 190), dtype)
    bounds = np.array([info.min, info.max], np.float64)
    C.combine_store(tuple(t[1] for t in terms), True, 1.0, 2, 5, bounds, True, out[0])
    np.testing.assert_array_equal(out[0], cast_rounded(exact[1, 2:32, 5:195], dtype))
    for z in (0, 2):
        C.combine_store(tuple(t[z] for t in terms), True, 1.0, 7, 13, bounds, True, out[1])
        np.testing.assert_array_equal(out[1], cast_rounded(exact[z, 7:37, 13:203], dtype))


def test_every_compiled_kernel_releases_the_gil():
    # dask's threads filter bands in parallel only if every compiled kernel drops the GIL
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import zchunk.ops

    found = {}
    for info in pkgutil.iter_modules(zchunk.ops.__path__):
        module = importlib.import_module(f"zchunk.ops.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher):
                found[f"{info.name}.{name}"] = obj.targetoptions.get("nogil", False)
    assert "_filter_kernels.correlate_yx_store" in found
    assert "_combine_kernels.combine_store" in found
    assert [name for name, nogil in found.items() if not nogil] == []
