"""Folders whose file names carry the axes (t, c, z, position) open as tczyx stacks."""

import json

import numpy as np
import pytest
import tifffile

import zchunk
from zchunk.cli import main
from zchunk.errors import OptionError, SourceNotFoundError, StackFormatError
from zchunk.io._sequence import arrange
from zchunk.testing import blobs

SHAPE = (3, 2, 4, 20, 18)  # t, c, z, y, x


def tczyx():
    return blobs(SHAPE, np.uint16, seed=9)


def write_planes(folder, name, skip=()):
    """One file per plane, named by `name` (a format string with t, c, z), 1-based z."""
    folder.mkdir()
    a = tczyx()
    for t, c, z in np.ndindex(*SHAPE[:3]):
        if (t, c, z) not in skip:
            path = folder / name.format(t=t, c=c + 1, z=z + 1)
            tifffile.imwrite(path, a[t, c, z], photometric="minisblack")
    return folder


@pytest.mark.parametrize(
    "name", ["t{t:04d}_c{c}_z{z:03d}.tif", "img-Z{z}-T{t}-CH{c}.tif", "TP{t}_Ch{c}_z{z}.tiff"]
)
def test_planes_named_by_t_c_z(tmp_path, name):
    s = zchunk.open(write_planes(tmp_path / "f", name))
    assert s.axes == "tczyx"
    np.testing.assert_array_equal(s.data.compute(), tczyx())


@pytest.mark.parametrize("method", ["max", "median", "mean"])
@pytest.mark.parametrize("axis", ["z", "t"])
def test_projects_per_t_and_c_as_numpy(tmp_path, method, axis):
    s = zchunk.open(write_planes(tmp_path / "f", "t{t}_c{c}_z{z}.tif"), whole=axis)
    got = zchunk.project(s, method, axis=axis).data.compute()
    expected = getattr(np, method)(tczyx(), axis="tczyx".index(axis))
    np.testing.assert_array_equal(got, expected)


def test_files_holding_z_stacks_named_by_t_and_channel(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    a = tczyx()
    for t, c in np.ndindex(*SHAPE[:2]):
        tifffile.imwrite(folder / f"embryo_TP{t:04d}_Ch{c}.tif", a[t, c], photometric="minisblack")
    s = zchunk.open(folder)
    assert s.axes == "tczyx"
    np.testing.assert_array_equal(s.data.compute(), a)


def test_a_missing_combination_names_the_first_gap(tmp_path):
    folder = write_planes(tmp_path / "f", "t{t}_c{c}_z{z}.tif", skip={(1, 1, 2), (2, 0, 0)})
    with pytest.raises(SourceNotFoundError, match=r"no file for t=1, c=2, z=3.*first missing"):
        zchunk.open(folder)


def test_a_gap_along_one_axis_everywhere_is_found(tmp_path):
    skip = {(t, c, 1) for t in range(3) for c in range(2)}  # no z2 file at all
    folder = write_planes(tmp_path / "f", "t{t}_c{c}_z{z}.tif", skip=skip)
    with pytest.raises(SourceNotFoundError, match="no file for t=0, c=1, z=2"):
        zchunk.open(folder)


def test_several_positions_are_refused(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for p in range(2):
        for z in range(2):
            tifffile.imwrite(folder / f"s_Pos{p}_z{z}.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(StackFormatError, match="2 stage positions"):
        zchunk.open(folder)
    one = zchunk.open(str(folder / "s_Pos1_*.tif"))  # one position: a glob
    assert one.axes == "zyx"
    assert one.shape == (2, 4, 4)


def test_custom_pattern_from_the_cli(tmp_path, capsys):
    folder = write_planes(tmp_path / "f", "scan{t}x{c}y{z}.tif")  # no default tokens
    assert zchunk.open(folder).shape == (24, 20, 18)  # natural order, one axis
    pattern = r"scan(?P<t>\d+)x(?P<c>\d+)y(?P<z>\d+)"
    assert main(["info", str(folder), "--pattern", pattern, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["axes"] == "tczyx"
    assert info["shape"] == list(SHAPE)
    pairs = r"(t)(\d+)_(c)(\d+)_(z)(\d+)"  # tifffile-style (name, index) pairs
    s = zchunk.open(write_planes(tmp_path / "g", "t{t}_c{c}_z{z}.tif"), pattern=pairs)
    np.testing.assert_array_equal(s.data.compute(), tczyx())


def test_bad_patterns(tmp_path):
    folder = write_planes(tmp_path / "f", "t{t}_c{c}_z{z}.tif")
    with pytest.raises(OptionError, match="not a regular expression"):
        zchunk.open(folder, pattern="t(")
    with pytest.raises(OptionError, match="axis '_c'"):
        zchunk.open(folder, pattern=r"(_c)(\d+)")
    with pytest.raises(StackFormatError, match="does not match"):
        zchunk.open(folder, pattern=r"nothing(\d+)")


def test_arrange_keeps_names_without_tokens():
    assert arrange(["img_0.tif", "img_1.tif"]) is None
    assert arrange(["plane_0001.tif"]) is None
    a = arrange(["z10.tif", "z9.tif", "z8.tif"])
    assert (a.axes, a.shape, a.paths) == ("z", (3,), ("z8.tif", "z9.tif", "z10.tif"))
