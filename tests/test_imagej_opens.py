"""Every TIFF zchunk writes opens in ImageJ (run headless when it is installed here).

ImageJ opens 8-, 16- and 32-bit TIFFs only: NumPy's float64 results (mean, median, std,
percentile) and uint64 sums are written as float32 by the command line.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

import zchunk
from zchunk.cli import main

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
METHODS = ["max", "min", "sum", "mean", "std", "median", "percentile"]

needs_imagej = pytest.mark.skipif(
    shutil.which("imagej") is None or shutil.which("xvfb-run") is None,
    reason="ImageJ (Debian's imagej) and xvfb-run are not installed",
)


def project_all(source, out, *extra):
    args = ["project", str(source), "-o", str(out), "--q", "90", "--quiet", *extra]
    for m in METHODS:
        args += ["-m", m]
    assert main(args) == 0
    return sorted(p for p in out.iterdir() if not p.name.startswith("."))  # not the records


def outputs(tmp_path):
    """(file, the stack zchunk reads back from it) for every output kind."""
    files = []
    for dtype in ("uint8", "uint16", "float32"):
        files += project_all(CORPUS / "imagej" / f"stack_{dtype}.tif", tmp_path / dtype)
    hyper = CORPUS / "imagej" / "hyperstack_tzcyx.tif"
    files += project_all(hyper, tmp_path / "hyper")
    files += project_all(hyper, tmp_path / "hyper-ome", "--format", "ome.tif")
    out = tmp_path / "gauss.tif"
    assert main(["filter", str(hyper), "gaussian", "--sigma", "1", "-o", str(out), "--quiet"]) == 0
    return [*files, out]


def test_no_tiff_output_is_64_bit(tmp_path):
    for path in outputs(tmp_path):
        with tifffile.TiffFile(path) as tif:
            assert tif.series[0].dtype.itemsize <= 4, path


def test_explicit_float64_is_kept(tmp_path):
    out = tmp_path / "mean.tif"
    args = ["project", str(CORPUS / "imagej" / "stack_uint16.tif"), "-m", "mean", "-o", str(out)]
    assert main([*args, "--dtype", "float64", "--quiet"]) == 0
    assert zchunk.open(out).dtype == np.float64


def test_float32_note_only_when_values_change(tmp_path, capsys):
    stack = CORPUS / "imagej" / "stack_uint16.tif"
    assert (
        main(["project", str(stack), "-m", "median", "-m", "mean", "-o", str(tmp_path / "r")]) == 0
    )
    err = capsys.readouterr().err
    assert "mean.tif: float64 values written as float32" in err
    assert "median.tif" not in err
    median = zchunk.open(tmp_path / "r" / "median.tif").data.compute()
    assert median.dtype == np.float32
    exact = np.median(tifffile.imread(stack), axis=0)
    np.testing.assert_array_equal(median.astype(np.float64), exact)


@needs_imagej
def test_imagej_opens_every_tiff_output(tmp_path):
    files = outputs(tmp_path)
    lines = []
    for i, path in enumerate(files):
        lines.append(
            f'open("{path}"); getDimensions(w, h, c, z, t); '
            f'print("OK {i} " + bitDepth() + " " + c + " " + z + " " + t + " " + is("composite")); '
            "close();"
        )
    macro = tmp_path / "open_all.ijm"
    macro.write_text("\n".join(lines) + '\nprint("MACRO-DONE");\n')
    # a file ImageJ cannot open stops the macro (and would open a dialog without -b)
    run = subprocess.run(
        ["timeout", "120", "xvfb-run", "-a", "imagej", "-b", str(macro)],
        capture_output=True,
        text=True,
        check=False,
    )
    opened = {
        int(line.split()[1]): line.split()[2:]
        for line in run.stdout.splitlines()
        if line.startswith("OK ")
    }
    missing = [str(files[i]) for i in range(len(files)) if i not in opened]
    assert not missing, f"ImageJ did not open {missing[:1]}: {run.stdout[-500:]}"
    for i, path in enumerate(files):
        s = zchunk.open(path)
        bits, c, z, t = (int(v) for v in opened[i][:4])
        composite = opened[i][4] == "1"
        assert bits == {1: 8, 2: 16, 4: 32}[s.dtype.itemsize]
        if not path.name.endswith(".ome.tif"):  # ImageJ reads its own hyperstack dimensions
            assert (c, z, t) == (s.sizes.get("c", 1), s.sizes.get("z", 1), s.sizes.get("t", 1))
            assert composite == (c > 1)  # channels open as a composite, not grey planes
