"""Deep stacks filtered from the file in chunks split along z, each read with a halo of planes.

A band through the whole z of a deep stack leaves the budget only a few rows per chunk (and
x split), so a streamed filter reads and filters as many halo rows as rows it keeps; the
planner then splits z instead (issue 15). Results must not change by a bit, a projection of
the filtered stack must still see the whole z, and every output and --resume must hold.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

import zchunk
from zchunk.budget import Budget
from zchunk.chunking import PROJECTION, Purpose, plan
from zchunk.testing import KILL_AFTER_MARKERS, blobs

SHAPE = (120, 96, 192)  # 4 MiB of uint16: at a budget of 4 MiB a band through z is 7 rows
BUDGET = "4MiB"

CASES = {
    "gaussian": ({"sigma": 0.5}, lambda a: ndimage.gaussian_filter(a, 0.5)),
    "gaussian_gradient_magnitude": (
        {"sigma": (0.6, 0.5, 0.5)},
        lambda a: ndimage.gaussian_gradient_magnitude(a, (0.6, 0.5, 0.5)),
    ),
    "laplace": ({"per_plane": True}, lambda a: np.stack([ndimage.laplace(p) for p in a])),
    "sobel": (
        {},
        lambda a: np.stack([np.hypot(ndimage.sobel(p, 0), ndimage.sobel(p, 1)) for p in a]),
    ),
    "minimum": ({"size": 3}, lambda a: ndimage.minimum_filter(a, 3)),
    "median": ({"size": 3}, lambda a: ndimage.median_filter(a, 3)),
}


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    data = blobs(SHAPE, "uint16", seed=15)
    path = tmp_path_factory.mktemp("deep") / "deep.tif"
    tifffile.imwrite(path, data)
    return str(path), data


def _split(stack):
    return stack.data.numblocks[0] > 1 and stack.data.chunks[-1] == (SHAPE[-1],)


@pytest.mark.parametrize("name", list(CASES))
def test_a_deep_stack_is_split_along_z_and_filters_as_scipy(deep, name):
    path, data = deep
    params, ref = CASES[name]
    out = zchunk.filter(zchunk.open(path, memory_limit=BUDGET), name, **params)
    assert _split(out), out.data.chunks  # runs of planes, full rows
    assert out.plan.whole == ""
    assert "z is split" in out.plan.note
    # bit for bit what the same filter gives with the whole z in every chunk
    whole = zchunk.filter(zchunk.open(path, memory_limit="1GiB"), name, **params)
    assert whole.data.numblocks[0] == 1
    got = out.data.compute()
    np.testing.assert_array_equal(got, whole.data.compute())
    expected = ref(data.astype(np.float64))
    if name in ("minimum", "median"):
        np.testing.assert_array_equal(got, expected)
    else:
        span = float(data.max()) - float(data.min())
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * span)


def test_a_projection_of_a_split_filter_sees_the_whole_z(deep):
    path, data = deep
    filtered = zchunk.filter(zchunk.open(path, memory_limit=BUDGET), "gaussian", sigma=0.5)
    assert _split(filtered)
    for method, reduce in (("median", np.median), ("max", np.max)):
        got = zchunk.project(filtered, method).data.compute()
        expected = reduce(ndimage.gaussian_filter(data.astype(np.float64), 0.5), axis=0)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(data.max()))


def test_a_filter_of_a_split_filter_is_exact(deep):
    path, data = deep
    once = zchunk.filter(zchunk.open(path, memory_limit=BUDGET), "gaussian", sigma=0.5)
    twice = zchunk.filter(once, "minimum", size=3)
    expected = ndimage.minimum_filter(ndimage.gaussian_filter(data.astype(np.float64), 0.5), 3)
    np.testing.assert_allclose(twice.data.compute(), expected, rtol=0, atol=1e-5 * 65535)


def _cli(*args, env=None):
    cmd = [sys.executable, "-m", "zchunk.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


@pytest.mark.parametrize(
    ("out", "extra"),
    [
        ("f.zarr", []),
        ("f.ome.zarr", ["--pyramid", "1"]),
        ("f.tif", []),
        ("f.tif", ["--compression", "zlib"]),
    ],
)
def test_the_cli_writes_a_split_filter_whole(deep, tmp_path, out, extra):
    path, _ = deep
    target = tmp_path / out
    args = ["filter", path, "gaussian", "--sigma", "0.5", "--dtype", "uint16"]
    run = _cli(*args, "-o", str(target), "--memory-limit", BUDGET, "--quiet", *extra)
    assert run.returncode == 0, run.stderr
    expected = zchunk.filter(zchunk.open(path), "gaussian", sigma=0.5, dtype="uint16")
    got = zchunk.open(str(target)).data.compute()
    np.testing.assert_array_equal(got, expected.data.compute())
    if out == "f.zarr":
        assert zarr.open_array(str(target), mode="r").shards[0] < SHAPE[0]  # a shard per run


def test_resume_of_a_split_filter_finishes_it_exactly(deep, tmp_path):
    path, _ = deep
    target = tmp_path / "f.zarr"
    args = ["filter", path, "gaussian", "--sigma", "0.5", "--dtype", "uint16", "-o", str(target)]
    args += ["--memory-limit", BUDGET, "--workers", "1", "--quiet"]
    env = {**os.environ, "ZCHUNK_TEST_KILL_AFTER": "3"}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_MARKERS, *args], env=env, capture_output=True, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists()
    run = _cli(*args, "--resume")
    assert run.returncode == 0, run.stderr
    expected = zchunk.filter(zchunk.open(path), "gaussian", sigma=0.5, dtype="uint16")
    np.testing.assert_array_equal(zarr.open_array(str(target))[:], expected.data.compute())


U16 = np.dtype("uint16")
GIB = Budget(2**30, 2)


def test_only_a_streamed_filter_that_may_split_z_splits_it():
    deep = (954, 4096, 4096)
    streamed = Purpose.filter(8, streamed=True, z_halo=8)
    assert plan(deep, "zyx", U16, GIB, purpose=streamed).chunks[0] < 954
    per_plane = Purpose.filter(1, streamed=True, z_halo=0)
    assert plan(deep, "zyx", U16, GIB, purpose=per_plane).chunks[0] < 954
    for keeps_z in (
        PROJECTION,
        Purpose.filter(8),  # holds its chunk: no halo of planes is read
        Purpose.filter(8, streamed=True),  # z_halo None: z whole (for a projection)
        Purpose.filter(8, z_halo=8),  # not streamed: z_halo is dropped
    ):
        assert plan(deep, "zyx", U16, GIB, purpose=keeps_z).chunks[0] == 954
    # t and c are never whole; z whole only where it costs little
    lapse = plan((3, 2, 954, 4096, 4096), "tczyx", U16, GIB, purpose=streamed)
    assert lapse.chunks[:2] == (1, 1)
    assert lapse.chunks[2] < 954
    assert lapse.chunks[-1] == 4096
    shallow = plan((100, 1024, 1024), "zyx", U16, GIB, purpose=streamed)
    assert shallow.chunks[0] == 100
    assert shallow.whole == "z"


def test_compressed_strips_over_budget_through_z_are_split_within_it():
    """Strips of 64 compressed rows cannot be split along x: a band through z would not fit."""
    streamed = Purpose.filter(8, streamed=True, z_halo=8)
    kept = plan((954, 4096, 4096), "zyx", U16, GIB, purpose=PROJECTION, y_align=64, x_align=None)
    assert kept.chunks[-1] == 4096
    assert not kept.fits  # over budget, z whole
    p = plan((954, 4096, 4096), "zyx", U16, GIB, purpose=streamed, y_align=64, x_align=None)
    planes, rows, cols = p.chunks
    assert p.fits
    assert (rows % 64, cols) == (0, 4096)
    assert planes < 954
    assert planes * rows * cols * 2 * 2 * 3 <= p.budget  # chunk x workers x copies
