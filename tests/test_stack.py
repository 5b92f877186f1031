import json
import pickle

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

import zchunk
from zchunk.errors import StackFormatError
from zchunk.stack import Stack
from zchunk.testing import blobs


def _tiff(tmp_path, data):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data)
    return str(path)


def _ome_tiff(tmp_path, data):
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZYX"})
    return str(path)


def _folder(tmp_path, data):
    for i, plane in enumerate(data):
        tifffile.imwrite(tmp_path / f"z{i}.tif", plane)
    return str(tmp_path)


def _zarr(tmp_path, data):
    path = str(tmp_path / "a.zarr")
    arr = zarr.create_array(path, shape=data.shape, dtype=data.dtype, chunks=(2, 16, 16))
    arr[...] = data
    return path


def _ome_zarr(tmp_path, data):
    path = tmp_path / "a.ome.zarr"
    zchunk.save(zchunk.open(data), path)
    return str(path)


def _array(tmp_path, data):
    return data


READERS = [_tiff, _ome_tiff, _folder, _zarr, _ome_zarr, _array]


@pytest.mark.parametrize("make", READERS, ids=lambda f: f.__name__.strip("_"))
def test_every_reader_keeps_only_json_metadata_in_attrs(tmp_path, make):
    data = blobs((5, 40, 30), "uint16", seed=1)
    stack = zchunk.open(make(tmp_path, data))
    json.dumps(dict(stack.attrs))  # no callable, reader or plan object
    assert stack.plan is not None
    assert stack.source is not None
    assert stack.source.name == stack.data.name
    np.testing.assert_array_equal(
        stack.source.read((slice(0, 5), slice(5, 9), slice(0, 30))), data[:, 5:9]
    )
    if stack.source.reads_regions:
        pickle.loads(pickle.dumps(stack.source))  # tasks carry it


def test_source_belongs_to_the_array_it_opened(tmp_path):
    data = blobs((5, 20, 20), "uint16", seed=2)
    stack = zchunk.open(_tiff(tmp_path, data))
    assert stack.replace(name="other").source is stack.source
    assert stack.replace(data=stack.data + 1).source is None
    assert Stack(stack.data[:, :10], axes="zyx", source=stack.source).source is None
    assert zchunk.project(stack, "max").source is None
    filtered = zchunk.filter(stack, "gaussian", sigma=1)  # its own source: filtered planes
    assert filtered.source is not None
    assert filtered.source.name == filtered.data.name
    assert filtered.replace(data=filtered.data + 1).source is None


def test_source_and_plan_stay_out_of_repr_and_equality(tmp_path):
    data = blobs((5, 20, 20), "uint16", seed=3)
    stack = zchunk.open(_tiff(tmp_path, data))
    assert "source=" not in repr(stack)
    assert "plan=" not in repr(stack)
    assert "OpenedSource" not in repr(stack)
    bare = stack.replace(source=None, plan=None)
    assert bare.source is None
    assert stack == bare  # same data object and fields: source and plan are not compared


def test_stack_reports_bad_scale_as_a_stack_format_error():
    with pytest.raises(StackFormatError, match="scale has 2 entries"):
        Stack(da.zeros((2, 3, 4)), scale=(1.0, 2.0))
    with pytest.raises(StackFormatError, match="positive finite"):
        Stack(da.zeros((2, 3, 4)), scale=(1.0, -2.0, 1.0))


def test_in_order_moves_data_and_calibration_together():
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).astype("uint16")
    s = Stack(data, axes="zcyx", scale=(2.0, None, 0.5, 0.25), units=("um", None, "um", "nm"))
    t = s.in_order("tczyx")
    assert (t.axes, t.scale, t.units) == ("czyx", (None, 2.0, 0.5, 0.25), (None, "um", "um", "nm"))
    np.testing.assert_array_equal(t.data.compute(), data.transpose(1, 0, 2, 3))
    assert s.in_order("tzcyx") is s  # already in order: the same stack, no transpose
