"""Calibration (pixel sizes, time interval, units, channel names) from every input to every output.

Each input kind is opened, saved to each output kind with :func:`zchunk.save`, and opened again.
"""

import dask.array as da
import numpy as np
import pytest
import tifffile

import zchunk
from zchunk.sinks import to_ome_zarr
from zchunk.stack import Stack
from zchunk.testing import blobs

UM = "micrometer"
SCALE = {"t": 2.0, "z": 1.5, "y": 0.25, "x": 0.125}
UNITS = {"t": "second", "z": UM, "y": UM, "x": UM}
CHANNELS = ("GFP", "DAPI")
SHAPE = (2, 3, 2, 16, 12)  # t, z, c, y, x


def hyperstack():
    return blobs(SHAPE, np.uint16, seed=11)


def calibrated_stack(a, axes="tzcyx", names=CHANNELS):
    return Stack(
        da.from_array(a),
        axes=axes,
        scale=tuple(SCALE.get(x) for x in axes),
        units=tuple(UNITS.get(x) for x in axes),
        attrs={"channel_names": list(names)} if "c" in axes else {},
    )


def write_imagej(path):
    labels = [CHANNELS[c] for _t in range(2) for _z in range(3) for c in range(2)]
    tifffile.imwrite(
        path / "in.tif",
        hyperstack(),
        imagej=True,
        resolution=(1 / SCALE["x"], 1 / SCALE["y"]),
        metadata={
            "axes": "TZCYX",
            "spacing": SCALE["z"],
            "unit": "um",
            "finterval": SCALE["t"],
            "Labels": labels,
        },
    )
    return path / "in.tif"


def write_ome_tiff(path):
    tifffile.imwrite(
        path / "in.ome.tif",
        hyperstack(),
        ome=True,
        metadata={
            "axes": "TZCYX",
            "PhysicalSizeX": SCALE["x"],
            "PhysicalSizeY": SCALE["y"],
            "PhysicalSizeZ": SCALE["z"],
            "TimeIncrement": SCALE["t"],
            "TimeIncrementUnit": "s",
            "Channel": {"Name": list(CHANNELS)},
        },
    )
    return path / "in.ome.tif"


def write_ome_zarr(version):
    def write(path):
        return to_ome_zarr(
            calibrated_stack(hyperstack()), path / "in.ome.zarr", ngff_version=version
        )

    return write


def write_folder(path):
    folder = path / "planes"
    folder.mkdir()
    for i, plane in enumerate(blobs((3, 16, 12), np.uint16, seed=11)):
        tifffile.imwrite(folder / f"z{i}.tif", plane)
    return folder


INPUTS = {
    "imagej-tiff": write_imagej,
    "ome-tiff": write_ome_tiff,
    "ome-zarr-0.5": write_ome_zarr("0.5"),
    "ome-zarr-0.4": write_ome_zarr("0.4"),
    "tiff-folder": write_folder,
}
OUTPUTS = ["out.tif", "out.ome.tif", "out.zarr", "out.ome.zarr"]


def open_input(kind, path):
    stack = zchunk.open(INPUTS[kind](path))
    if kind == "tiff-folder":
        # zchunk.open has no scale= parameter (nor the CLI --scale z,y,x for folders): calibrate
        assert stack.axes == "zyx"
        assert stack.scale == (None, None, None)
        stack = stack.replace(
            scale=tuple(SCALE[a] for a in "zyx"), units=tuple(UNITS[a] for a in "zyx")
        )
    return stack


def calibration(stack):
    return {
        a: (pytest.approx(s, rel=1e-6) if s is not None else None, u)
        for a, s, u in zip(stack.axes, stack.scale, stack.units, strict=True)
    }


def expected(axes):
    return {a: (SCALE.get(a), UNITS.get(a)) for a in axes}


def out_axes(axes, out_name):
    """Axes of an output: OME-Zarr stores NGFF's t, c, z, y, x order, TIFF ImageJ's (and OME's)
    t, z, c, y, x order; plain zarr keeps the stack's order."""
    for suffix, order in ((".ome.zarr", "tczyx"), (".tif", "tzcyx")):
        if out_name.endswith(suffix):
            return "".join(a for a in order if a in axes)
    return axes


def assert_same_pixels(back, stack):
    perm = [back.axes.index(a) for a in stack.axes]
    np.testing.assert_array_equal(back.data.compute().transpose(perm), stack.data.compute())


@pytest.mark.parametrize("out_name", OUTPUTS)
@pytest.mark.parametrize("kind", list(INPUTS))
def test_calibration_survives(tmp_path, kind, out_name):
    stack = open_input(kind, tmp_path)
    axes = {"tiff-folder": "zyx", "ome-zarr-0.5": "tczyx", "ome-zarr-0.4": "tczyx"}.get(
        kind, "tzcyx"
    )
    assert stack.axes == axes
    assert calibration(stack) == expected(axes)
    if "c" in axes:
        assert tuple(stack.attrs["channel_names"]) == CHANNELS

    back = zchunk.open(zchunk.save(stack, tmp_path / out_name))
    assert back.axes == out_axes(axes, out_name)
    assert calibration(back) == expected(back.axes)
    if "c" in axes:
        assert tuple(back.attrs["channel_names"]) == CHANNELS
    assert_same_pixels(back, stack)


@pytest.mark.parametrize("out_name", OUTPUTS)
@pytest.mark.parametrize("kind", list(INPUTS))
def test_projection_drops_the_reduced_axis(tmp_path, kind, out_name):
    stack = open_input(kind, tmp_path)
    mip = zchunk.project(stack, "max")
    back = zchunk.open(zchunk.save(mip, tmp_path / out_name))
    axes = stack.axes.replace("z", "")
    assert mip.axes == axes
    assert back.axes == out_axes(axes, out_name)
    assert calibration(back) == expected(back.axes)
    if "c" in axes:
        assert tuple(back.attrs["channel_names"]) == CHANNELS
    assert_same_pixels(back, mip)


@pytest.mark.parametrize("out_name", OUTPUTS)
def test_unknown_calibration_stays_unknown(tmp_path, out_name):
    stack = Stack(da.from_array(blobs((3, 16, 12), np.uint8, seed=2)), axes="zyx")
    back = zchunk.open(zchunk.save(stack, tmp_path / out_name))
    assert back.axes == "zyx"
    assert back.units == (None, None, None)
    if out_name.endswith(".ome.zarr"):
        # NGFF requires a number for every scale: an unknown pixel size is written as 1.0
        assert back.scale == (1.0, 1.0, 1.0)
    else:
        assert back.scale == (None, None, None)


@pytest.mark.parametrize("out_name", OUTPUTS)
def test_partly_known_calibration(tmp_path, out_name):
    # pixel size known in y/x only (e.g. a single plane's resolution), no unit for z
    stack = Stack(
        da.from_array(blobs((3, 16, 12), np.uint8, seed=2)),
        axes="zyx",
        scale=(None, 0.5, 0.5),
        units=(None, UM, UM),
    )
    back = zchunk.open(zchunk.save(stack, tmp_path / out_name))
    z = (1.0, None) if out_name.endswith(".ome.zarr") else (None, None)
    if out_name == "out.tif":
        # an ImageJ file with a unit and no spacing has a voxel depth of 1 unit, for ImageJ
        # too: the format cannot say "unknown" once x and y are calibrated
        z = (1.0, UM)
    assert calibration(back) == {"z": z, "y": (0.5, UM), "x": (0.5, UM)}


TO_BASE = {"nanometer": 1e-3, "micrometer": 1.0, "millisecond": 1e-3, "second": 1.0}


@pytest.mark.parametrize("out_name", OUTPUTS)
def test_other_units_keep_the_physical_size(tmp_path, out_name):
    # nm in y/x but um in z (ImageJ: "unit" plus "zunit"), a frame interval in ms
    stack = Stack(
        da.from_array(blobs((2, 3, 16, 12), np.uint16, seed=1)),
        axes="tzyx",
        scale=(250.0, 0.3, 40.0, 40.0),
        units=("millisecond", UM, "nanometer", "nanometer"),
    )
    back = zchunk.open(zchunk.save(stack, tmp_path / out_name))
    assert back.axes == "tzyx"
    physical = [s * TO_BASE[u] for s, u in zip(back.scale, back.units, strict=True)]
    assert physical == pytest.approx([0.25, 0.3, 0.04, 0.04], rel=1e-6)
    if out_name == "out.tif":
        assert back.units[0] == "second"  # ImageJ's frame interval is in seconds
    else:
        assert back.units == stack.units


DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


@pytest.mark.parametrize("axes", ["zyx", "cyx", "tyx", "czyx", "tcyx", "tzyx", "tzcyx"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_name", OUTPUTS)
def test_every_output_reopens_with_its_axes(tmp_path, out_name, dtype, axes):
    # a plain shaped TIFF (float64, int32...) carries {"axes": "TCYX"} like ImageJ and OME do
    shape = {"t": 2, "c": 3, "z": 4, "y": 6, "x": 5}
    a = np.arange(np.prod([shape[x] for x in axes])).reshape([shape[x] for x in axes])
    stack = Stack(da.from_array(a.astype(dtype)), axes=axes)
    back = zchunk.open(zchunk.save(stack, tmp_path / out_name))
    assert back.axes == out_axes(axes, out_name)
    assert_same_pixels(back, stack)


@pytest.mark.parametrize("axes", ["CZYX", "TCYX", "ZCYX"])
def test_tifffile_shaped_axes_are_read(tmp_path, axes):
    a = blobs((2, 3, 16, 12), np.uint16, seed=4)
    tifffile.imwrite(tmp_path / "s.tif", a, metadata={"axes": axes}, photometric="minisblack")
    assert zchunk.open(tmp_path / "s.tif").axes == axes.lower()


def test_median_of_a_hyperstack_is_not_projected_across_channels(tmp_path):
    # the issue's reproduction: median.tif (float64, a shaped TIFF) reopened as tzyx
    stack = zchunk.open(write_imagej(tmp_path))
    out = zchunk.save(zchunk.project(stack, "median"), tmp_path / "median.tif")
    back = zchunk.open(out)
    assert back.axes == "tcyx"
    with pytest.raises(zchunk.errors.StackFormatError, match="axis 'z'"):
        zchunk.project(back, "max")
