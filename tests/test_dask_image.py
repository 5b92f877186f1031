"""dask-image is a companion: its functions run on ``zchunk.open(...).data``, zchunk saves them."""

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

import zchunk
from zchunk.testing import blobs

dask_image = pytest.importorskip("dask_image", reason="dask-image is in the bench extra")


def test_dask_image_functions_run_on_zchunk_stacks(tmp_path):
    from dask_image import ndfilters, ndmeasure

    data = blobs((6, 60, 50), "uint16", seed=5)
    tifffile.imwrite(tmp_path / "cells.tif", data)
    stack = zchunk.open(tmp_path / "cells.tif", memory_limit="200KB")
    assert stack.data.npartitions > 1

    smooth = ndfilters.gaussian_filter(stack.data.astype(np.float32), sigma=1)
    labels, count = ndmeasure.label(smooth > float(np.percentile(data, 90)))
    out = zchunk.save(stack.replace(data=labels), tmp_path / "labels.zarr")

    expected, n = ndimage.label(
        ndimage.gaussian_filter(data.astype(np.float32), 1) > np.percentile(data, 90)
    )
    assert int(count.compute()) == n
    got = zarr.open_array(out)[:]
    np.testing.assert_array_equal(got > 0, expected > 0)
    assert zarr.open_array(out).attrs["zchunk"]["axes"] == "zyx"
