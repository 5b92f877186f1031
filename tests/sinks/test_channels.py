"""Channels in outputs: names and colours in ImageJ TIFF, OME-TIFF and OME-Zarr (omero)."""

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

import zchunk
from zchunk.sinks import to_ome_zarr
from zchunk.stack import Stack

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
HYPER = CORPUS / "imagej" / "hyperstack_tzcyx.tif"  # ImageJ composite: GFP green, RFP magenta


def max_projection():
    return zchunk.project(zchunk.open(HYPER), "max")


def test_imagej_output_is_a_composite_with_the_input_luts(tmp_path):
    out = zchunk.save(max_projection(), tmp_path / "max.tif")
    with tifffile.TiffFile(HYPER) as tif:
        luts = tif.imagej_metadata["LUTs"]
    with tifffile.TiffFile(out) as tif:
        ij = tif.imagej_metadata
        assert tif.series[0].axes == "TCYX"
    assert ij["mode"] == "composite"
    assert ij["Labels"][:2] == ["GFP", "RFP"]
    for got, want in zip(ij["LUTs"], luts, strict=True):
        np.testing.assert_array_equal(got, want)


def test_ome_tiff_output_has_channel_names_and_colors(tmp_path):
    back = zchunk.open(zchunk.save(max_projection(), tmp_path / "max.ome.tif"))
    assert back.attrs["channel_names"] == ("GFP", "RFP")
    assert back.attrs["channel_colors"] == ("00FF00", "FF00FF")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_output_has_valid_omero_channels(tmp_path, version):
    from ome_zarr_models.v04.image import Image as Image04
    from ome_zarr_models.v05.image import Image as Image05

    mip = max_projection()
    out = zchunk.save(mip, tmp_path / "max.ome.zarr", ngff_version=version)
    group = zarr.open_group(out, mode="r")
    if version == "0.4":
        omero = Image04.from_zarr(group).attributes.omero.model_dump()
    else:
        Image05.from_zarr(group)
        omero = dict(group.attrs)["ome"]["omero"]
    channels = omero["channels"]
    assert [c["label"] for c in channels] == ["GFP", "RFP"]
    assert [c["color"] for c in channels] == ["00FF00", "FF00FF"]
    data = mip.data.compute()  # t, c, y, x
    for i, c in enumerate(channels):
        assert c["window"]["start"] == data[:, i].min()
        assert c["window"]["end"] == data[:, i].max()
    back = zchunk.open(out)
    assert back.attrs["channel_names"] == ("GFP", "RFP")
    assert back.attrs["channel_colors"] == ("00FF00", "FF00FF")


def test_channels_without_colors_get_imagej_defaults_in_ome_zarr(tmp_path):
    s = zchunk.open(CORPUS / "tzcyx_source.ome.tif")  # names, no colours
    assert s.attrs["channel_colors"] == ()
    out = zchunk.save(zchunk.project(s, "max"), tmp_path / "m.ome.zarr")
    omero = dict(zarr.open_group(out, mode="r").attrs)["ome"]["omero"]
    assert [c["color"] for c in omero["channels"]] == ["FF0000", "00FF00"]
    assert [c["label"] for c in omero["channels"]] == ["GFP", "RFP"]
    with tifffile.TiffFile(zchunk.save(zchunk.project(s, "max"), tmp_path / "m.tif")) as tif:
        assert tif.imagej_metadata["mode"] == "composite"
        assert "LUTs" not in tif.imagej_metadata  # ImageJ's own defaults


def test_single_channel_outputs_have_no_omero(tmp_path):
    s = zchunk.open(CORPUS / "imagej" / "stack_uint16.tif")
    out = zchunk.save(zchunk.project(s, "max"), tmp_path / "m.ome.zarr")
    assert "omero" not in dict(zarr.open_group(out, mode="r").attrs)["ome"]


@pytest.mark.parametrize("interrupted", [False, True])
def test_omero_windows_are_gathered_while_writing_not_read_back(tmp_path, monkeypatch, interrupted):
    # the same windows as reading level 0 back after writing it (NaN ignored), with no such
    # pass; a resumed run reads back only the blocks an earlier run wrote
    rng = np.random.default_rng(5)
    data = rng.normal(size=(3, 4, 24, 16)).astype(np.float32)
    data[1, :, :5, :5] = np.nan
    data[2] += 100
    stack = Stack(da.from_array(data, chunks=(1, 4, 8, 16)), axes="czyx")
    out = tmp_path / "a.ome.zarr"
    limit = [4 if interrupted else 99]

    def cut(block):
        limit[0] -= 1
        if limit[0] < 0:
            raise KeyboardInterrupt
        return block

    stack = stack.replace(data=stack.data.map_blocks(cut, dtype=stack.dtype))
    if interrupted:
        with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
            to_ome_zarr(stack, out)
        limit[0] = 99  # the same graph, no longer interrupted

    def no_read_back(*args, **kwargs):
        msg = "level 0 read back"
        raise AssertionError(msg)

    monkeypatch.setattr(da, "from_zarr", no_read_back)
    to_ome_zarr(stack, out, resume=interrupted)
    group = zarr.open_group(out, mode="r")
    level0 = group["0"][:]
    channels = dict(group.attrs)["ome"]["omero"]["channels"]
    got = [(c["window"]["start"], c["window"]["end"]) for c in channels]
    assert got == [(float(np.nanmin(level0[i])), float(np.nanmax(level0[i]))) for i in range(3)]
