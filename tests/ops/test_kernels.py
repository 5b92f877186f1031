"""Exactness of the median / percentile / order-statistics kernels against NumPy."""

from __future__ import annotations

import threading

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zchunk.ops import _select_kernels
from zchunk.ops._kernels import median, order_statistics, percentile

INTS = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]
FLOATS = [np.float16, np.float32, np.float64]
DTYPES = INTS + FLOATS
ZS = [1, 2, 3, 4, 31, 100]
QS = [0, 0.1, 12.5, 37.3, 50, 66.6, 99.9, 100]


def random_block(rng, shape, dtype, *, half_range=False):
    """Values over the dtype's whole range (or half of it: no overflow in numpy's b - a)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.standard_normal(shape) * 1000
        a[rng.random(shape) < 0.1] = 0.0  # some ties
        return a.astype(dt)
    info = np.iinfo(dt)
    lo, hi = (info.min // 2, info.max // 2) if half_range else (info.min, info.max)
    return rng.integers(lo, hi, size=shape, dtype=dt, endpoint=True)


def oracle_percentile(a, q, axis=0):
    """np.percentile, with signed ints cast to int64 / Python ints: b - a never wraps."""
    if a.dtype.kind == "i" and a.dtype.itemsize < 8:
        return np.percentile(a.astype(np.int64), q, axis=axis)
    if a.dtype.kind == "i":
        return np.percentile(a.astype(object), q, axis=axis).astype(np.float64)
    with np.errstate(all="ignore"):
        return np.percentile(a, q, axis=axis)


def assert_same(actual, expected, *, signed_zeros=True):
    """Same dtype, shape and bits; NaN equals NaN. Zeros' signs are compared if `signed_zeros`."""
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)  # NaN == NaN, -0.0 == 0.0
    if actual.dtype.kind == "f":
        keep = ~np.isnan(expected)
        if not signed_zeros:
            keep &= expected != 0
        bits = np.dtype(f"u{actual.dtype.itemsize}")
        np.testing.assert_array_equal(actual[keep].view(bits), expected[keep].view(bits))


# --------------------------------------------------------------------------------------------
# median
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("z", ZS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_median_matches_numpy(rng, dtype, z):
    a = random_block(rng, (z, 7, 13), dtype)
    assert_same(median(a), np.median(a, axis=0))


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (np.uint8, (31, 3, 1500)),  # several tiles and a partial one
        (np.uint8, (301, 211)),  # more than 255 rows: the uint8 counters roll over
        (np.uint16, (100, 5000)),
        (np.int16, (9, 4097)),
        (np.float32, (64, 3001)),
        (np.float64, (5, 2, 3, 4)),  # more than one trailing axis
    ],
)
def test_median_many_tiles(rng, dtype, shape):
    a = random_block(rng, shape, dtype)
    assert_same(median(a), np.median(a, axis=0))
    assert_same(percentile(a, 71.3), oracle_percentile(a, 71.3), signed_zeros=False)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("z", [31, 100])
def test_median_blobs(dtype, z):
    from zchunk.testing import blobs

    a = blobs((z, 40, 70), dtype, seed=3)
    assert_same(median(a), np.median(a, axis=0))


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize("z", [1, 2, 5, 6, 31])
def test_int_extremes_and_ties(rng, dtype, z):
    info = np.iinfo(dtype)
    choices = np.array(
        sorted({info.min, info.min + 1, -1 if info.min else 0, 0, 1, info.max - 1, info.max}),
        dtype=dtype,
    )
    a = rng.choice(choices, size=(z, 257))
    a[:, 0] = info.max
    a[:, 1] = info.min
    assert_same(median(a), np.median(a, axis=0))
    for q in QS:
        assert_same(percentile(a, q), oracle_percentile(a, q))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("z", [1, 2, 3, 4, 5, 31])
def test_float_specials(rng, dtype, z):
    fi = np.finfo(dtype)
    specials = [
        np.nan,
        np.inf,
        -np.inf,
        -0.0,
        0.0,
        1.5,
        -2.5,
        fi.max,
        -fi.max,
        fi.smallest_subnormal,
    ]
    a = rng.choice(np.array(specials, dtype=dtype), size=(z, 500))
    with np.errstate(all="ignore"):
        expected = np.median(a, axis=0)
    assert_same(median(a), expected)
    for q in QS:
        assert_same(percentile(a, q), oracle_percentile(a, q), signed_zeros=False)


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_column_gives_nan(dtype):
    a = np.arange(12, dtype=dtype).reshape(4, 3)
    a[2, 1] = np.nan
    a[0, 2] = -np.nan
    m = median(a)
    assert m.dtype == dtype
    np.testing.assert_array_equal(np.isnan(m), [False, True, True])
    np.testing.assert_array_equal(np.isnan(percentile(a, 0)), [False, True, True])
    # order statistics sort NaN last, like np.sort
    assert_same(order_statistics(a, (0, 1, 2, 3)), np.sort(a, axis=0))


def test_float32_mean_is_float32():
    big = np.finfo(np.float32).max
    a = np.array([[big, 1.0, 16777216.0], [big, 2.0, 1.0]], dtype=np.float32)
    with np.errstate(over="ignore"):
        expected = np.median(a, axis=0)
    assert_same(median(a), expected)  # inf, 1.5, 8388608.0 (16777217 not representable)
    assert np.isinf(median(a)[0])


@pytest.mark.parametrize("dtype", [np.uint64, np.int64])
def test_64bit_median_rounds_like_numpy(dtype):
    info = np.iinfo(dtype)
    a = np.array([[info.max, info.min, 2**53 + 1], [info.max - 1, info.min + 1, 2**53]], dtype)
    assert_same(median(a), np.median(a, axis=0))


@pytest.mark.parametrize("z", [1, 2, 3, 4])
def test_zero_signs(rng, z):
    a = rng.choice(np.array([-0.0, 0.0], dtype=np.float32), size=(z, 64))
    a[:, 0] = -0.0
    m = median(a)
    assert_same(m, np.median(a, axis=0))  # numpy's mean starts from +0.0: never -0.0
    assert not np.signbit(m).any()


# --------------------------------------------------------------------------------------------
# percentile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("z", ZS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_percentile_matches_numpy(rng, dtype, z):
    a = random_block(rng, (z, 5, 11), dtype, half_range=True)
    for q in QS:
        # half the range: numpy's own b - a does not wrap, so compare with numpy directly
        assert_same(percentile(a, q), np.percentile(a, q, axis=0), signed_zeros=False)


def test_percentile_signed_difference_does_not_wrap():
    a = np.array([[-100], [100]], dtype=np.int8)
    with np.errstate(over="ignore"):
        wrapped = np.percentile(a, 25, axis=0)  # numpy computes 100 - (-100) in int8
    assert wrapped[0] != -50.0
    assert_same(percentile(a, 25), np.array([-50.0]))
    b = np.array([[np.iinfo(np.int64).min], [np.iinfo(np.int64).max]], dtype=np.int64)
    assert_same(percentile(b, 50), np.array([0.0]))  # 2**63-1 - (2**64-1) * 0.5 in float64


@pytest.mark.parametrize("q", [np.float64(12.5), np.float32(12.5), 12, np.int64(12)])
def test_percentile_q_types(q):
    a = np.arange(40, dtype=np.float32).reshape(8, 5)
    assert_same(percentile(a, q), np.percentile(a, float(q), axis=0))


# --------------------------------------------------------------------------------------------
# axes and layouts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_axes(rng, dtype, axis):
    a = random_block(rng, (6, 5, 7), dtype, half_range=True)
    assert_same(median(a, axis=axis), np.median(a, axis=axis))
    assert_same(percentile(a, 30, axis=axis), np.percentile(a, 30, axis=axis), signed_zeros=False)
    ks = (0, 2, -1)
    expected = np.moveaxis(np.take(np.sort(a, axis=axis), ks, axis=axis), axis, 0)
    assert_same(order_statistics(a, ks, axis=axis), expected, signed_zeros=False)


def test_layouts(rng):
    base = random_block(rng, (9, 12, 10), np.uint16)
    for a in (base[:, ::2, 1:], np.asfortranarray(base), base[::-1], base[::2]):
        assert_same(median(a), np.median(a, axis=0))
    ro = base.copy()
    ro.flags.writeable = False
    assert_same(median(ro), np.median(base, axis=0))
    big_endian = base.astype(">u2")
    assert_same(median(big_endian), np.median(base, axis=0))


def test_one_dimensional_and_empty_pixels():
    a = np.array([5, 1, 4, 2], dtype=np.int32)
    m = median(a)
    assert m.shape == ()
    assert m == np.median(a)
    assert percentile(a, 50).shape == ()
    empty = np.zeros((3, 0, 4), dtype=np.uint8)
    assert median(empty).shape == (0, 4)
    assert percentile(empty, 5).shape == (0, 4)


def test_z_equal_one(rng):
    a = random_block(rng, (1, 4, 4), np.float32)
    assert_same(median(a), a[0])
    assert_same(percentile(a, 33), a[0])
    b = rng.integers(0, 255, size=(1, 4, 4), dtype=np.uint8)
    assert_same(median(b), b[0].astype(np.float64))


# --------------------------------------------------------------------------------------------
# order statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_order_statistics(rng, dtype):
    a = random_block(rng, (17, 3, 29), dtype)
    ks = (16, 0, 8, 9, 9, -1, 3, 4, 5)
    expected = np.sort(a, axis=0)[list(ks)]
    assert_same(order_statistics(a, ks), expected, signed_zeros=False)
    assert order_statistics(a, ()).shape == (0, 3, 29)


def test_order_statistics_bad_rank():
    a = np.zeros((4, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"ks=\(0, 4\).*out of range.*length 4"):
        order_statistics(a, (0, 4))
    with pytest.raises(ValueError, match="out of range"):
        order_statistics(a, (-5,))
    with pytest.raises(TypeError):
        order_statistics(a, (1.5,))


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [-0.001, 100.5, np.nan, np.inf, -np.inf])
def test_bad_q(q):
    with pytest.raises(ValueError, match=r"q must be in \[0, 100\], got q="):
        percentile(np.zeros((3, 2)), q)


@pytest.mark.parametrize("q", ["50", None, True, [50]])
def test_q_not_a_number(q):
    with pytest.raises(TypeError, match="q must be a real number"):
        percentile(np.zeros((3, 2)), q)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [(np.bool_, "bool"), (np.complex64, "complex64"), (np.complex128, "complex128"), ("U3", "<U3")],
)
@pytest.mark.parametrize(
    "func", [median, lambda a: percentile(a, 5), lambda a: order_statistics(a, (0,))]
)
def test_bad_dtype(func, dtype, name):
    with pytest.raises(TypeError, match=f"unsupported dtype {name}"):
        func(np.zeros((3, 2), dtype=dtype))


@pytest.mark.parametrize(
    "func", [median, lambda a: percentile(a, 5), lambda a: order_statistics(a, ())]
)
def test_empty_axis(func):
    with pytest.raises(ValueError, match=r"empty axis.*shape\[0\] == 0"):
        func(np.zeros((0, 3), dtype=np.uint16))


def test_bad_axis():
    with pytest.raises(np.exceptions.AxisError):
        median(np.zeros((3, 2)), axis=2)


# --------------------------------------------------------------------------------------------
# hypothesis: small arrays of every dtype against numpy, exactly
# --------------------------------------------------------------------------------------------


@st.composite
def blocks(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.tuples(st.integers(1, 9), st.integers(1, 6)))
    elements = None
    if np.dtype(dtype).kind == "f":
        elements = st.floats(width=8 * np.dtype(dtype).itemsize, allow_nan=True)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=300, deadline=None)
@given(a=blocks(), q=st.floats(0, 100))
def test_property_matches_numpy(a, q):
    with np.errstate(all="ignore"):
        expected_median = np.median(a, axis=0)
    assert_same(median(a), expected_median)
    assert_same(percentile(a, q), oracle_percentile(a, q), signed_zeros=False)
    k = a.shape[0] // 3
    assert_same(order_statistics(a, (k,))[0], np.sort(a, axis=0)[k], signed_zeros=False)


# --------------------------------------------------------------------------------------------
# numba build: serial, GIL released, cached
# --------------------------------------------------------------------------------------------

KERNELS = ["_select_kernel", "_load_tile", "_count_le", "_next_key", "_bisect"]


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_release_the_gil_and_are_serial(name):
    dispatcher = getattr(_select_kernels, name)
    assert dispatcher.targetoptions["nogil"] is True
    assert not dispatcher.targetoptions.get("parallel", False)
    assert dispatcher.targetoptions.get("fastmath", False) is False
    assert type(dispatcher._cache).__name__ == "FunctionCache"  # cache=True: on-disk cache


def test_threads_give_the_same_results(rng):
    a = random_block(rng, (31, 64, 64), np.uint16)
    expected = np.median(a, axis=0)
    results: list[np.ndarray] = [np.empty(0)] * 4

    def work(i):
        results[i] = median(a)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert_same(r, expected)
