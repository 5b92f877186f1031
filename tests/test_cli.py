import json

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
