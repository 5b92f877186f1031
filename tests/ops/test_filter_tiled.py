"""Filtering a tiled TIFF straight from the file, split along x: halos on both y and x."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage

import zchunk
from zchunk.testing import blobs


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize(("name", "params", "oracle"), [
    ("gaussian", {"sigma": 1.5}, lambda a: ndimage.gaussian_filter(a, 1.5)),
    ("median", {"size": 3}, lambda a: ndimage.median_filter(a, 3)),
])  # fmt: skip
def test_tiled_tiff_split_in_x_filters_like_scipy(tmp_path, compression, name, params, oracle):
    data = blobs((4, 96, 128), "uint16", seed=13)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, photometric="minisblack", tile=(16, 16), compression=compression)
    stack = zchunk.open(path, memory_limit="48KB")
    result = zchunk.filter(stack, name, **params)
    assert result.data.numblocks[2] > 1  # x is split: x halos are needed
    assert result.data.numblocks[1] > 1
    keys = {str(k[0] if isinstance(k, tuple) else k) for k in dict(result.data.__dask_graph__())}
    assert any(k.startswith(f"zchunk-{name}-") for k in keys)  # each task reads from the file
    assert not any("overlap" in k or "from-array" in k or "rechunk" in k for k in keys)
    got = result.data.compute()
    work = data if name == "median" else data.astype(np.float32)
    want = oracle(work)
    if name == "median":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-2)
