import numpy as np
import pytest
import zarr

import zchunk
from zchunk.errors import CorruptDataError, StackFormatError
from zchunk.testing import blobs


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array(tmp_path, zarr_format):
    data = blobs((7, 50, 40), "uint16", seed=8)
    path = str(tmp_path / "a.zarr")
    arr = zarr.create_array(
        path, shape=data.shape, dtype=data.dtype, chunks=(3, 16, 16), zarr_format=zarr_format
    )
    arr[...] = data
    s = zchunk.open(path, memory_limit="60KB")
    assert s.axes == "zyx"
    assert s.data.numblocks[0] == 1
    assert all(c % 16 == 0 for c in s.data.chunks[1][:-1])  # bands aligned to zarr chunks
    np.testing.assert_array_equal(s.data.compute(), data)


def test_zarr_dimension_names(tmp_path):
    data = blobs((2, 4, 20, 20), "uint8")
    path = str(tmp_path / "a.zarr")
    arr = zarr.create_array(
        path, shape=data.shape, dtype=data.dtype, chunks=(1, 4, 20, 20), dimension_names="czyx"
    )
    arr[...] = data
    s = zchunk.open(path)
    assert s.axes == "czyx"
    np.testing.assert_array_equal(s.data.compute(), data)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_level0(tmp_path, version):
    data = blobs((5, 32, 24), "uint16")
    path = str(tmp_path / "img.ome.zarr")
    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(path, mode="w", zarr_format=fmt)
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(5, 16, 16))[...] = data
    half = data[:, ::2, ::2]
    group.create_array("1", shape=half.shape, dtype=half.dtype, chunks=(5, 16, 12))[...] = half
    axes = [
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    ms = {
        "axes": axes,
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2, 0.5, 0.5]}]},
            {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2, 1, 1]}]},
        ],
    }
    if version == "0.4":
        ms["version"] = "0.4"
        group.attrs["multiscales"] = [ms]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    s = zchunk.open(path)
    assert s.axes == "zyx"
    assert s.scale == (2.0, 0.5, 0.5)
    assert s.units == ("micrometer",) * 3
    assert s.attrs["layout"]["ngff_version"] == version
    np.testing.assert_array_equal(s.data.compute(), data)


def test_zarr_group_without_multiscales(tmp_path):
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(StackFormatError, match="without OME-Zarr multiscales"):
        zchunk.open(str(tmp_path / "g.zarr"))


def _ome_group(path, version, axes, scale, omero=None):
    data = blobs((2, 3, 8, 8), "uint16", seed=3)
    group = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(2, 1, 8, 8))[...] = data
    ms = {
        "axes": axes,
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        ],
    }
    meta = {"multiscales": [{**ms, "version": "0.4"}]} if version == "0.4" else {}
    if version == "0.5":
        meta = {"ome": {"version": "0.5", "multiscales": [ms]}}
    if omero is not None:
        (meta if version == "0.4" else meta["ome"])["omero"] = omero
    group.attrs.update(meta)
    return data


CZYX = [
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space", "unit": "micrometer"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_omero_channel_names_and_colours(tmp_path, version):
    window = {"min": 0, "max": 65535, "start": 0, "end": 4000}
    omero = {
        "channels": [
            {"label": "GFP", "color": "00FF00", "window": window},
            {"label": "RFP", "color": "FF0000", "window": window},
        ]
    }
    path = str(tmp_path / "c.ome.zarr")
    data = _ome_group(path, version, CZYX, [1, 2.0, 0.5, 0.5], omero)
    s = zchunk.open(path)
    assert s.axes == "czyx"
    assert s.attrs["channel_names"] == ("GFP", "RFP")
    assert s.scale[s.axes.index("z")] == 2.0
    np.testing.assert_array_equal(s.data.compute(), data)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_invalid_ngff_metadata_is_refused(tmp_path, version):
    path = str(tmp_path / "bad.ome.zarr")
    _ome_group(path, version, CZYX, [1, 2.0, 0.5])  # 3 scales for 4 axes
    with pytest.raises(CorruptDataError, match=r"damaged OME-Zarr: its NGFF 0\.[45] metadata"):
        zchunk.open(path)
