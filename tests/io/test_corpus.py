"""Files written by other tools (tests/data/corpus, made by tests/data/make_corpus.py).

The oracle is tifffile reading the same pixels (or the file the tool was given), and ImageJ's
own Z Project results.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from tifffile import natural_sorted

import zchunk
from zchunk.errors import SourceNotFoundError, StackFormatError

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"


def source_tzcyx():
    """The pixels bfconvert was given (tifffile's single-file OME-TIFF)."""
    return tifffile.imread(CORPUS / "tzcyx_source.ome.tif")


MULTI_FILE = {
    "bfconvert %t": ("bfconvert_t", ["t1head_T0.ome.tif", "t1head_T1.ome.tif"]),
    "bfconvert %z": ("bfconvert_z", [f"zsplit_Z{z}.ome.tif" for z in range(8)]),
    "micro-manager names": (
        "mmstack",
        ["mm_MMStack_Pos0.ome.tif", "mm_MMStack_Pos0_1.ome.tif"],
    ),
}


@pytest.mark.parametrize("dataset", MULTI_FILE)
def test_multi_file_ome_tiff_reads_every_plane_from_its_file(dataset):
    folder, names = MULTI_FILE[dataset]
    expected = source_tzcyx()
    for name in (names[0], names[-1]):  # opened from any of its files
        s = zchunk.open(CORPUS / folder / name)
        assert s.axes == "tzcyx"
        np.testing.assert_array_equal(s.data.compute(), expected)
        files = zchunk.info(s)["layout"]["file_names"]
        assert sorted(files) == sorted(names)
    # the folder holding exactly the dataset's files is the dataset too
    np.testing.assert_array_equal(zchunk.open(CORPUS / folder).data.compute(), expected)


@pytest.mark.parametrize("method", ["max", "median"])
def test_multi_file_ome_tiff_projects_per_t_and_c_as_numpy(method):
    s = zchunk.open(CORPUS / "bfconvert_t" / "t1head_T0.ome.tif")
    got = zchunk.project(s, method).data.compute()
    expected = getattr(np, method)(source_tzcyx(), axis=1)
    np.testing.assert_array_equal(got, expected)
    got_t = zchunk.project(s, method, axis="t").data.compute()
    np.testing.assert_array_equal(got_t, getattr(np, method)(source_tzcyx(), axis=0))


def test_multi_file_ome_tiff_with_a_missing_file_is_refused(tmp_path):
    shutil.copy(CORPUS / "bfconvert_t" / "t1head_T0.ome.tif", tmp_path)
    with pytest.raises(SourceNotFoundError, match=r"t1head_T1\.ome\.tif does not exist.*OME-XML"):
        zchunk.open(tmp_path / "t1head_T0.ome.tif")


def test_imagemagick_split_stack_is_a_sequence_not_damage():
    # convert stack.tif img_%d.tif copies "images=31" into every single-page file
    s = zchunk.open(CORPUS / "imagemagick_seq")
    files = natural_sorted(os.listdir(CORPUS / "imagemagick_seq"))
    expected = np.stack([tifffile.imread(CORPUS / "imagemagick_seq" / f) for f in files])
    assert s.shape == (31, 16, 16)
    np.testing.assert_array_equal(s.data.compute(), expected)
    np.testing.assert_array_equal(expected, tifffile.imread(CORPUS / "imagej" / "seq31.tif"))


def test_one_file_of_a_split_stack_alone_says_why_it_is_refused():
    with pytest.raises(StackFormatError, match=r"declares 31 planes.*open the folder"):
        zchunk.open(CORPUS / "imagemagick_seq" / "img_3.tif")


def test_tiffcp_jpeg_grayscale_decodes_as_tifffile():
    path = CORPUS / "tiffcp" / "jpeg_uint8.tif"
    s = zchunk.open(path)
    np.testing.assert_array_equal(s.data.compute(), tifffile.imread(path))
    # and the lossy result is near what was compressed
    original = tifffile.imread(CORPUS / "imagej" / "stack_uint8.tif")
    assert np.abs(s.data.compute().astype(int) - original).mean() < 40


def test_two_sample_file_is_not_called_rgb():
    with pytest.raises(StackFormatError, match="2 samples per pixel") as info:
        zchunk.open(CORPUS / "imagemagick" / "grey_alpha.tif")
    assert "RGB" not in str(info.value)


IJ_METHODS = ["max", "min", "mean", "sum", "std", "median"]


@pytest.mark.parametrize("method", IJ_METHODS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_like_imagej_equals_imagej_z_project(dtype, method):
    # ImageJ 1.53t's own results; its 32-bit Average drops the last slice (fixed in 1.54)
    s = zchunk.open(CORPUS / "imagej" / f"stack_{dtype}.tif")
    stack = s.data.compute()
    got = zchunk.project(s, method, like="imagej").data.compute()
    ref = tifffile.imread(CORPUS / "imagej" / f"zproject_{method}_{dtype}.tif")
    if dtype == "float32" and method == "mean":
        ref = imagej_154_float_average(stack)
        with np.errstate(invalid="ignore"):  # 1.53t: the same, without the last slice
            assert not np.array_equal(ref, imagej_154_float_average(stack[:-1]), equal_nan=True)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def imagej_154_float_average(a):
    """ZProjector.doAverageFloatProjection of ImageJ 1.54: sum and count the non-NaN values."""
    total = np.zeros(a.shape[1:], np.float64)
    count = np.zeros(a.shape[1:], np.int64)
    for plane in a:
        for (y, x), v in np.ndenumerate(plane):
            if not np.isnan(v):
                total[y, x] += float(v)
                count[y, x] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(np.float32)


def test_imagej_float_stack_has_nan_in_most_columns():
    a = tifffile.imread(CORPUS / "imagej" / "stack_float32.tif")
    assert np.isnan(a).any(axis=0).mean() > 0.2
    assert np.isnan(a).all(axis=0).any()


def test_imagej_voxel_depth_1_is_kept():
    # ImageJ writes no "spacing=" when the voxel depth is 1; it reads such a file as 1 micron
    s = zchunk.open(CORPUS / "imagej" / "hyperstack_depth1.tif")
    assert dict(zip(s.axes, s.scale, strict=True)) == {
        "t": 3.0,
        "z": 1.0,
        "c": None,
        "y": 0.5,
        "x": 0.5,
    }
    assert s.units[s.axes.index("z")] == "micrometer"
    calibrated = zchunk.open(CORPUS / "imagej" / "hyperstack_tzcyx.tif")
    assert calibrated.scale[calibrated.axes.index("z")] == 2.0
