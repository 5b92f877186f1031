"""zchunk convert: any input to any output, pixels, axes, calibration and channels kept."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import zchunk
from zchunk.cli import main

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
INPUTS = {
    "bfconvert-multi-file": CORPUS / "bfconvert_t" / "t1head_T1.ome.tif",
    "imagej-hyperstack": CORPUS / "imagej" / "hyperstack_tzcyx.tif",
    "imagemagick-sequence": CORPUS / "imagemagick_seq",
    "tiffcp-jpeg": CORPUS / "tiffcp" / "jpeg_uint8.tif",
}
OUTPUTS = ["out.tif", "out.ome.tif", "out.zarr", "out.ome.zarr"]


def facts(stack):
    """Axes, calibration and channels by axis letter (independent of the axis order)."""
    return (
        sorted(stack.axes),
        {a: (s, u) for a, s, u in zip(stack.axes, stack.scale, stack.units, strict=True)},
        tuple(stack.attrs.get("channel_names") or ()),
    )


@pytest.mark.parametrize("out_name", OUTPUTS)
@pytest.mark.parametrize("kind", list(INPUTS))
def test_convert_keeps_everything(tmp_path, kind, out_name):
    src = zchunk.open(INPUTS[kind])
    out = tmp_path / out_name
    assert main(["convert", str(INPUTS[kind]), str(out), "--quiet"]) == 0
    back = zchunk.open(out)
    assert back.dtype == src.dtype
    perm = [back.axes.index(a) for a in src.axes]
    np.testing.assert_array_equal(back.data.compute().transpose(perm), src.data.compute())
    axes, cal, names = facts(back)
    want_axes, want_cal, want_names = facts(src)
    assert axes == want_axes
    assert names == want_names
    for a, (size, unit) in want_cal.items():
        if size is not None:  # an unknown size may become NGFF's required 1.0
            assert cal[a][0] == pytest.approx(size), a
            assert cal[a][1] == unit, a


def test_convert_pyramid_and_resume(tmp_path, capsys):
    src = INPUTS["imagej-hyperstack"]
    out = tmp_path / "p.ome.zarr"
    args = ["convert", str(src), str(out), "--pyramid", "2", "--ngff-version", "0.4", "--quiet"]
    assert main(args) == 0
    group = zarr.open_group(out, mode="r")
    assert sorted(group.array_keys()) == ["0", "1", "2"]
    assert group["2"].shape[-2:] == (8, 8)
    assert main([*args, "--resume"]) == 0  # finished already: nothing to do
    assert main(args) == 2  # exists: refused without --overwrite
    assert "exists" in capsys.readouterr().err


def test_convert_refuses_its_input_as_output(tmp_path, capsys):
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    assert main(["convert", str(src), str(src), "--overwrite", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("zchunk: error:")
