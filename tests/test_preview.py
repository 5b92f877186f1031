import numpy as np
import pytest
from PIL import Image

from zchunk.errors import OutputExistsError
from zchunk.preview import nice_length, preview, to_uint8
from zchunk.stack import Stack
from zchunk.testing import blobs


def _stack(calibrated, shape=(64, 96)):
    data = blobs(shape, "uint16", seed=4)
    if calibrated:
        return Stack(data, scale=(0.25,) * len(shape), units=("micrometer",) * len(shape), name="m")
    return Stack(data, name="m")


def _bar_pixels(png):
    img = np.asarray(Image.open(png))
    # the bar is drawn in pure white near the bottom-right corner of the panel
    corner = img[-12:-6, img.shape[1] // 2 :]
    return int((corner == 255).sum())


def test_png_written_with_content(tmp_path):
    out = preview([_stack(True), _stack(True, (5, 64, 96))], tmp_path / "p.png")
    img = np.asarray(Image.open(out))
    assert img.dtype == np.uint8
    assert img.shape[0] >= 64
    assert img.shape[1] >= 3 * 96
    assert img.std() > 10  # not a constant image


def test_scale_bar_only_when_calibrated(tmp_path):
    with_bar = _bar_pixels(preview(_stack(True), tmp_path / "a.png"))
    without = _bar_pixels(preview(_stack(False), tmp_path / "b.png"))
    assert with_bar > 4 * 8  # a bar at least 8 pixels long and 4 high
    assert with_bar > without


def test_big_images_are_strided(tmp_path):
    out = preview(_stack(False, (1100, 300)), tmp_path / "s.png", max_px=256)
    assert np.asarray(Image.open(out)).shape[0] <= 256 + 18


def test_overwrite_rules(tmp_path):
    out = tmp_path / "p.png"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="overwrite"):
        preview(_stack(False), out)
    preview(_stack(False), out, overwrite=True)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_helpers():
    assert nice_length(1.0, 1000) == 200.0
    assert nice_length(0.13, 512) == 10.0
    a = to_uint8(np.array([[np.nan, 0.0], [5.0, 10.0]]), clip=(0, 100))
    assert a.tolist() == [[0, 0], [128, 255]]
    assert to_uint8(np.full((2, 2), 7.0)).max() == 0
