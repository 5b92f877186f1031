import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from zchunk.cli import main
from zchunk.testing import blobs


@pytest.fixture
def stack_path(tmp_path):
    path = tmp_path / "embryo.tif"
    tifffile.imwrite(
        path,
        blobs((2, 5, 30, 40), "uint16"),
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"axes": "TZYX", "spacing": 1.0, "unit": "um"},
    )
    return str(path)


def test_info_text(stack_path, capsys):
    assert main(["info", stack_path]) == 0
    out = capsys.readouterr().out
    assert "10 images of 40 x 30 pixels" in out
    assert "x: 0.2 micrometer" in out
    assert "chunks" in out


def test_info_json(stack_path, capsys):
    assert main(["info", stack_path, "--json", "--memory-limit", "64MiB"]) == 0
    d = json.loads(capsys.readouterr().out)
    keys = "shape axes dtype planes size_x size_y size_z size_t size_c scale units layout"
    for key in [*keys.split(), "chunks", "memory_estimate_bytes"]:
        assert key in d
    assert (d["planes"], d["size_x"], d["size_y"], d["size_z"], d["size_t"]) == (10, 40, 30, 5, 2)
    assert d["axes"] == "tzyx"
    assert d["chunks"][1] == 5
    assert d["layout"]["kind"] == "imagej"
    assert d["memory_limit_bytes"] == 64 * 1024**2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "/nonexistent/x.tif"], "does not exist"),
        (["info", "{tmp}/fake.tif"], "not a readable TIFF"),
        (["info", "{tmp}/a.tif", "--memory-limit", "lots"], "memory limit"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "fake.tif").write_text("hello")
    tifffile.imwrite(tmp_path / "a.tif", blobs((10, 10), "uint8"))
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info"])
    assert exc.value.code == 2


# project / compare / demo ----------------------------------------------------------------------


@pytest.fixture
def zstack(tmp_path):
    data = blobs((7, 40, 36), "uint16", seed=9)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path, data, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX", "unit": "um"}
    )
    return str(path), data


def test_project_single_file(zstack, tmp_path, capsys):
    path, data = zstack
    out = tmp_path / "MaxZ.tif"
    assert main(["project", path, "-m", "max", "-o", str(out), "--no-progress"]) == 0
    with tifffile.TiffFile(out) as tif:
        np.testing.assert_array_equal(tif.asarray(), data.max(axis=0))
        assert tif.pages[0].tags["XResolution"].value == (2, 1)
    assert "max:" in capsys.readouterr().out


def test_project_many_to_folder_json(zstack, tmp_path, capsys):
    path, data = zstack
    out = tmp_path / "proj"
    argv = ["project", path, "-m", "max", "-m", "median", "-m", "percentile", "--q", "90"]
    assert main([*argv, "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    names = ["max.tif", "median.tif", "percentile90.tif"]
    assert sorted(os.listdir(out)) == [f".{n}.zchunk-done" for n in names] + names
    assert summary["methods"] == ["max", "median", "percentile"]
    assert summary["peak_rss_mb"] > 0
    np.testing.assert_array_equal(tifffile.imread(out / "median.tif"), np.median(data, axis=0))
    # a TIFF holds float32 (ImageJ opens no float64): the median of 16-bit data exactly,
    # the percentile rounded, with a note
    np.testing.assert_array_equal(
        tifffile.imread(out / "percentile90.tif"),
        np.percentile(data, 90, axis=0).astype(np.float32),
    )
    assert summary["output_dtypes"]["median"] == "float32"
    assert [n.split(":")[0] for n in summary["notes"]] == ["percentile90.tif"]


def test_project_imagej_zarr_format(zstack, tmp_path):
    import zarr

    path = zstack[0]
    out = tmp_path / "proj"
    argv = ["project", path, "-m", "mean", "-m", "median", "--like", "imagej", "--format", "zarr"]
    assert main([*argv, "-o", str(out)]) == 0
    data = zstack[1]
    mean = zarr.open_array(str(out / "mean.zarr"), mode="r")[...]
    acc = np.zeros(data.shape[1:], np.float32)  # ImageJ: a float32 running sum / n,
    for plane in data:  # rounded half up to the input type
        acc = acc + plane.astype(np.float32)
    want = np.floor((acc / np.float32(len(data))).astype(np.float64) + 0.5).astype(np.uint16)
    np.testing.assert_array_equal(mean, want)
    assert mean.dtype == np.uint16
    median = zarr.open_array(str(out / "median.zarr"), mode="r")[...]
    assert median.dtype == np.float32
    np.testing.assert_array_equal(median, np.median(data, axis=0).astype(np.float32))


def test_project_existing_output_needs_overwrite(zstack, tmp_path, capsys):
    path, _ = zstack
    out = tmp_path / "max.tif"
    out.write_bytes(b"keep me")
    assert main(["project", path, "-o", str(out)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["project", path, "-o", str(out), "--overwrite", "--quiet"]) == 0
    assert tifffile.imread(out).shape == (40, 36)


@pytest.mark.parametrize("name", ["out.zarr", "x.tif"])
def test_one_method_writes_to_out_even_where_a_folder_is(zstack, tmp_path, capsys, name):
    # one -m: OUT is the output, never a folder to write <method>.tif into
    import zarr

    path, data = zstack
    out = tmp_path / name
    if name.endswith(".zarr"):
        assert main(["project", path, "-m", "max", "-o", str(out), "--quiet"]) == 0
    else:
        out.mkdir()
        (out / "notes.txt").write_text("old")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["project", path, "-m", "min", "-o", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert main(["project", path, "-m", "min", "-o", str(out), "--overwrite"]) == 0
    assert f"min: {out}\n" in capsys.readouterr().out
    got = zarr.open_array(str(out), mode="r")[:] if name.endswith(".zarr") else tifffile.imread(out)
    np.testing.assert_array_equal(got, data.min(axis=0))
    assert sorted(os.listdir(tmp_path)) == sorted([f".{name}.zchunk-done", name, "stack.tif"])


def test_project_never_writes_over_input(zstack, capsys):
    path, _ = zstack
    before = Path(path).read_bytes()
    assert main(["project", path, "-o", path, "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err
    assert Path(path).read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-m", "percentile"], "needs q"),
        (["-m", "max", "--axis", "t"], "axes are 'zyx'"),
        (["-m", "max", "-m", "min"], "need a folder"),
    ],
)
def test_project_user_errors(zstack, tmp_path, capsys, extra, message):
    path = zstack[0]
    code = main(["project", path, *extra, "-o", str(tmp_path / "o.tif")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.tif").exists()


def test_compare_exit_codes(zstack, tmp_path, capsys):
    path, data = zstack
    a = tmp_path / "a.tif"
    b = tmp_path / "b.tif"
    tifffile.imwrite(a, data.max(axis=0))
    changed = data.max(axis=0).astype(np.float32)
    changed[3, 4] += 2.5
    tifffile.imwrite(b, changed)
    assert main(["compare", str(a), str(a)]) == 0
    assert "EQUAL" in capsys.readouterr().out
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "max abs difference 2.5" in out
    assert "by more than 0: 1" in out
    assert main(["compare", str(a), str(b), "--atol", "3"]) == 0
    assert main(["compare", str(a), path]) == 1  # shapes differ
    assert "different shapes" in capsys.readouterr().out
    assert main(["compare", str(a), str(tmp_path / "missing.tif")]) == 2


def test_demo_runs(tmp_path, capsys, monkeypatch):
    from zchunk import demo

    monkeypatch.setitem(demo.SIZES, "small", (12, 64, 48))
    assert main(["demo", str(tmp_path / "d"), "--size", "small", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "12 images of 48 x 64 pixels" in out
    assert "file and folder give identical projections" in out
    assert (tmp_path / "d" / "projections-folder" / "median.tif").exists()
    assert (tmp_path / "d" / "preview.png").read_bytes()[:4] == b"\x89PNG"
    assert len(os.listdir(tmp_path / "d" / "embryo-planes")) == 12


def test_progress_bar_when_forced(zstack, tmp_path, capsys):
    path = zstack[0]
    assert main(["project", path, "-o", str(tmp_path / "m.tif"), "--progress"]) == 0
    err = capsys.readouterr().err
    assert "max of stack.tif" in err
    done = re.findall(r"(\d+)/(\d+)(?! ?MB)", err)  # tasks done / total (not "MB/s")
    assert done, err
    assert done[-1][0] == done[-1][1] != "0"  # the bar ends full


def test_filter_to_zarr_and_tiff(zstack, tmp_path, capsys):
    import zarr
    from scipy import ndimage

    path, data = zstack
    out = tmp_path / "g.zarr"
    assert main(["filter", path, "gaussian", "--sigma", "1.5", "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output_dtype"] == "float32"
    expected = ndimage.gaussian_filter(data.astype(np.float32), 1.5)
    np.testing.assert_allclose(zarr.open_array(str(out), mode="r")[...], expected, rtol=1e-6)
    tif = tmp_path / "edges.tif"
    argv = ["filter", path, "sobel", "-o", str(tif), "--dtype", "uint16", "--compression", "zlib"]
    assert main(argv) == 0
    edges = tifffile.imread(tif)
    assert edges.dtype == np.uint16
    f = data.astype(np.float64)  # edge magnitude per plane, rounded and clipped to uint16
    mag = np.stack([np.hypot(ndimage.sobel(p, axis=0), ndimage.sobel(p, axis=1)) for p in f])
    want = np.clip(np.rint(mag), 0, 65535)
    np.testing.assert_allclose(edges, want, atol=1)  # float32 arithmetic: off by one at .5
    assert np.mean(edges == want) > 0.99


def test_project_with_gaussian_prefilter(zstack, tmp_path):
    from scipy import ndimage

    path, data = zstack
    out = tmp_path / "gmax.tif"
    assert main(["project", path, "-m", "max", "--gaussian", "1", "-o", str(out)]) == 0
    expected = ndimage.gaussian_filter(data.astype(np.float32), 1).max(axis=0)
    np.testing.assert_allclose(tifffile.imread(out), expected, rtol=1e-6)


def test_filter_user_errors(zstack, tmp_path, capsys):
    path = zstack[0]
    assert main(["filter", path, "gaussian", "-o", str(tmp_path / "g.tif")]) == 2
    assert "sigma" in capsys.readouterr().err
    assert main(["filter", path, "median", "--size", "0", "-o", str(tmp_path / "m.tif")]) == 2
    assert "size" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.tif"]  # nothing written


def test_preview_command(zstack, tmp_path, capsys):
    from PIL import Image

    path = zstack[0]
    mip = tmp_path / "max.tif"
    assert main(["project", path, "-o", str(mip), "--quiet"]) == 0
    png = tmp_path / "p.png"
    assert main(["preview", str(mip), path, "-o", str(png), "--planes", "2"]) == 0
    assert "preview:" in capsys.readouterr().out
    img = np.asarray(Image.open(png))
    assert img.shape[1] >= 3 * 36  # the projection and two planes side by side
    assert main(["preview", str(mip), "-o", str(png)]) == 2  # exists, no --overwrite


def test_scale_for_uncalibrated_folder(tmp_path, capsys):
    from zchunk.testing import write_tiff_sequence

    write_tiff_sequence(str(tmp_path / "seq"), (4, 20, 24), "uint16")
    assert main(["info", str(tmp_path / "seq"), "--json", "--scale", "2,0.5,0.5"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["scale"] == {"z": 2.0, "y": 0.5, "x": 0.5}
    assert d["units"]["x"] == "micrometer"
    out = tmp_path / "m.tif"
    assert main(["project", str(tmp_path / "seq"), "-o", str(out), "--scale", "2,0.5,0.5"]) == 0
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].tags["XResolution"].value == (2, 1)
    assert main(["info", str(tmp_path / "seq"), "--scale", "a,b"]) == 2
    assert "--scale" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "params"), [("gaussian", {"sigma": 2.0}), ("median", {"size": 5})]
)
def test_python_filter_plans_the_chunks_the_cli_plans(tmp_path, name, params):
    import tifffile

    import zchunk
    from zchunk.pipeline import RunOptions, _Run

    data = blobs((6, 300, 200), "uint16", seed=3)
    path = str(tmp_path / "s.tif")
    tifffile.imwrite(path, data)
    python = zchunk.filter(zchunk.open(path, memory_limit="2MB"), name, **params)
    with _Run(RunOptions(memory_limit="2MB")) as run:  # as the CLI's filter opens it
        _, cli = run.open(path, (name, params), whole="z")
    assert python.data.chunks == cli.data.chunks
    assert python.data.numblocks[1] > 1
    assert python.plan == cli.plan


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import zchunk.describe

    path = str(tmp_path / "s.tif")
    tifffile.imwrite(path, blobs((5, 20, 20), "uint16"))

    # a ValueError raised in a zchunk module (the CLI once took those for user errors)
    namespace = {"__name__": "zchunk.describe"}
    exec("def broken(d):\n    raise ValueError('a bug')", namespace)  # noqa: S102
    monkeypatch.setattr(zchunk.describe, "format_info", namespace["broken"])
    with pytest.raises(ValueError, match="a bug"):
        main(["info", path])


def test_user_errors_are_zchunk_errors(tmp_path):
    from zchunk.errors import OptionError
    from zchunk.pipeline import compute_context, output_paths
    from zchunk.preview import preview
    from zchunk.sinks._atomic import prepare_output
    from zchunk.stack import Stack

    with pytest.raises(OptionError, match="is not one of"):
        compute_context("procesess").__enter__()
    with pytest.raises(OptionError, match="workers=0"):
        compute_context("threads", workers=0).__enter__()
    with pytest.raises(OptionError, match="format 'png'"):
        output_paths(str(tmp_path), ["max"], "png")
    with pytest.raises(OptionError, match="need a folder"):
        output_paths(str(tmp_path / "a.tif"), ["max", "min"], None)
    with pytest.raises(OptionError, match="planes=0"):
        preview(Stack(np.zeros((2, 20, 20), "uint8")), tmp_path / "p.png", planes=0)
    with pytest.raises(OptionError, match="does not name a file"):
        prepare_output("/", {}, overwrite=False)
