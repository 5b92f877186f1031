"""What the command line says when an input or an option is wrong (issue 12's small defects)."""

import numpy as np
import pytest
import tifffile

from zchunk.cli import main
from zchunk.testing import blobs


def damaged_tiff(path):
    """A zlib TIFF whose third page does not decode (found when computing, not when opening)."""
    a = blobs((4, 32, 32), np.uint8, seed=1)
    tifffile.imwrite(path, a, compression="zlib", rowsperstrip=32, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\x07" * count
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("out", ["results", "results/max.tif", "deep/er/max.ome.zarr"])
def test_no_empty_output_folder_after_a_decode_error(tmp_path, capsys, out):
    bad = damaged_tiff(tmp_path / "bad.tif")
    methods = ["-m", "max", "-m", "median"] if out == "results" else ["-m", "max"]
    assert main(["project", str(bad), *methods, "-o", str(tmp_path / out), "--quiet"]) == 2
    assert "cannot decode" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]


def test_missing_axis_names_the_file_and_the_flags(tmp_path, capsys):
    path = tmp_path / "tyx.tif"
    tifffile.imwrite(
        path,
        blobs((3, 16, 16), np.uint8, seed=2),
        metadata={"axes": "TYX"},
        photometric="minisblack",
    )
    assert main(["project", str(path), "-o", str(tmp_path / "m.tif")]) == 2
    err = capsys.readouterr().err
    assert "axis 'z' is not in" in err
    assert "tyx.tif" in err
    assert "--axis t" in err
    assert "--axes" in err


def test_cli_errors_speak_cli(tmp_path, capsys):
    path = tmp_path / "i32.tif"
    tifffile.imwrite(path, blobs((3, 16, 16), np.int32, seed=2), photometric="minisblack")
    assert main(["project", str(path), "--like", "imagej", "-o", str(tmp_path / "m.tif")]) == 2
    err = capsys.readouterr().err
    assert "--like imagej" in err
    assert "--like numpy" in err
    assert "like=" not in err


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("command", ["project", "filter"])
def test_ngff_version_and_pyramid_from_the_cli(tmp_path, version, command):
    import zarr

    src = tmp_path / "s.tif"
    tifffile.imwrite(src, blobs((3, 16, 16), np.uint16, seed=2), photometric="minisblack")
    out = tmp_path / "o.ome.zarr"
    args = (
        ["project", str(src), "-m", "max"]
        if command == "project"
        else ["filter", str(src), "gaussian", "--sigma", "1"]
    )
    assert (
        main([*args, "-o", str(out), "--ngff-version", version, "--pyramid", "1", "--quiet"]) == 0
    )
    group = zarr.open_group(out, mode="r")
    assert group.metadata.zarr_format == (2 if version == "0.4" else 3)
    assert sorted(group.array_keys()) == ["0", "1"]


def test_ngff_version_of_a_tiff_output_is_refused(tmp_path, capsys):
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, blobs((3, 16, 16), np.uint16, seed=2), photometric="minisblack")
    assert main(["project", str(src), "-o", str(tmp_path / "m.tif"), "--ngff-version", "0.4"]) == 2
    assert "--ngff-version 0.4 applies to OME-Zarr outputs only" in capsys.readouterr().err


def test_save_ngff_version(tmp_path):
    import zarr

    import zchunk

    s = zchunk.open(blobs((3, 16, 16), np.uint16, seed=2))
    out = zchunk.save(s, tmp_path / "a.ome.zarr", ngff_version="0.4")
    assert zarr.open_group(out, mode="r").metadata.zarr_format == 2
    with pytest.raises(zchunk.errors.OptionError, match=r"ngff_version='0\.4' applies"):
        zchunk.save(s, tmp_path / "a.zarr", ngff_version="0.4")
