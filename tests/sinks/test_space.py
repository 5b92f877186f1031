"""Free space is checked once for the whole run, on a real small file system (tmpfs)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import tifffile

from zchunk.cli import main
from zchunk.testing import blobs


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs, when this user may mount one (root in a container), else skip."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_several_outputs_that_do_not_fit_together_are_refused_before_writing(
    tmp_path, small_disk, capsys
):
    src = tmp_path / "src.tif"
    data = blobs((5, 256, 256), "uint16", seed=6)
    tifffile.imwrite(src, data, photometric="minisblack")
    # each result fits alone (128 KiB + 3 x 256 KiB of float32, and its scratch), not all together
    argv = ["project", str(src), "-m", "max", "-m", "median", "-m", "std", "-m", "mean", "--quiet"]
    assert main([*argv, "-o", str(small_disk / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not enough free disk space" in err
    assert list(small_disk.iterdir()) == []  # exit 2: nothing written
    assert main(["project", str(src), "-m", "max", "-m", "min", "-o", str(small_disk / "o")]) == 0
    np.testing.assert_array_equal(tifffile.imread(small_disk / "o" / "min.tif"), data.min(axis=0))
